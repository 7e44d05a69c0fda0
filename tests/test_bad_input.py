"""Bad input: garbage settings and misused threading/pool APIs.

Two rules, each checked against the real library:

* a ``CTXRELAY_*`` variable with garbage gives ONE warning naming the variable and what
  it accepts, and the application runs (in-process through ``instrument()``, and at
  start-up through the ``CTXRELAY_ENABLED`` bootstrap, even under ``-W error``);
* misusing ``submit``/``Thread``/``run_in_executor`` behaves exactly as without
  ctxrelay: the same exception type and message (each case is run uninstrumented,
  then instrumented, and the outcomes compared).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import Context, ContextVar, copy_context
from pathlib import Path
from typing import Any

import pytest

import ctxrelay
from ctxrelay import config

VAR: ContextVar[str] = ContextVar("bad_input_var", default="EMPTY")
SRC = Path(__file__).resolve().parent.parent / "src" / "ctxrelay"


def _garbage() -> str:
    # Unique per run: the same (variable, value) pair warns only once per process.
    return f"garbage-{uuid.uuid4().hex[:8]}"


#: variable -> what its warning must contain, or None when any text is a valid value
#: (free-form lists), where the rule is only "no crash, app runs".
VALIDATED: dict[str, tuple[str, ...] | None] = {
    "CTXRELAY_ENABLED": ("allowed values", "true"),
    "CTXRELAY_HOP_SPANS": ("allowed values", "true"),
    "CTXRELAY_LISTENER_SPANS": ("allowed values", "true"),
    "CTXRELAY_RECORD_PAYLOADS": ("allowed values", "true"),
    "CTXRELAY_INCLUDE": ("allowed values", "threading"),
    "CTXRELAY_EXCLUDE": ("allowed values", "threading"),
    "CTXRELAY_SKIP_VARS": None,  # ContextVar names: any text is one
    "CTXRELAY_DETACH": None,  # glob patterns: any text is one (an on/off value warns, below)
    "CTXRELAY_DROP_HOPS": None,  # glob patterns (an on/off value warns: test_config)
    "CTXRELAY_TREE_FILE": None,  # read by the tree exporter: tested below
    "CTXRELAY_TREE_MAX_PER_SECOND": None,  # read by the tree exporter: test_exporter_tree
    "CTXRELAY_RUN": None,  # internal marker set by `ctxrelay run`, not a setting
    "CTXRELAY_DOCTOR": ("allowed values", ".json"),
    "CTXRELAY_PROCESS_VARS": ("allowed values", "module:attribute"),
    "CTXRELAY_DOCTOR_LATE": ("allowed values", "seconds"),
    "CTXRELAY_DOCTOR_PINNED": ("allowed values", "seconds"),
}


def test_every_variable_in_the_source_is_covered_here() -> None:
    used = {
        name
        for path in SRC.rglob("*.py")
        for name in re.findall(r"CTXRELAY_[A-Z_]+[A-Z]", path.read_text(encoding="utf-8"))
    }
    assert used <= set(VALIDATED), f"add a garbage case for {sorted(used - set(VALIDATED))}"


def _carried() -> str:
    VAR.set("carried")
    with ThreadPoolExecutor(1) as pool:
        # The worker starts here, in an empty context: started by the submit below, it
        # would copy this one on 3.14 with thread_inherit_context=1 (CPython, not ctxrelay).
        Context().run(pool.submit, int).result()
        return pool.submit(VAR.get).result()


@pytest.mark.parametrize("variable", sorted(VALIDATED))
def test_garbage_in_each_variable_warns_once_and_the_app_runs(variable: str, monkeypatch) -> None:
    monkeypatch.setenv(variable, _garbage())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctxrelay.instrument()
        ctxrelay.uninstrument()
        ctxrelay.instrument()  # read again: still one warning for the same bad value
    ours = [w for w in caught if issubclass(w.category, config.ConfigWarning)]
    expected = VALIDATED[variable]
    if expected is None:
        assert ours == []
    else:
        assert len(ours) == 1, [str(w.message) for w in ours]
        message = str(ours[0].message)
        assert variable in message
        for part in expected:
            assert part in message
    assert copy_context().run(_carried) == "carried"


def test_detach_given_an_on_off_value_warns() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config.from_env({"CTXRELAY_DETACH": "yes"}, known=["threading"])
    (warning,) = [w for w in caught if issubclass(w.category, config.ConfigWarning)]
    assert "CTXRELAY_DETACH" in str(warning.message)
    assert "allowed values" in str(warning.message)


def test_tree_file_that_cannot_be_opened_warns_and_writes_to_stderr(tmp_path: Path, capsys) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from ctxrelay.exporters.tree import TreeSpanExporter

    target = str(tmp_path / "no-such-dir" / "tree.txt")
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(TreeSpanExporter(env={"CTXRELAY_TREE_FILE": target}))
    )
    span = provider.get_tracer("t").start_span("tree-root")
    with pytest.warns(config.ConfigWarning, match="CTXRELAY_TREE_FILE.*allowed values"):
        span.end()  # a finished root span: its tree is written now
    provider.shutdown()
    assert "tree-root" in capsys.readouterr().err


# A pool whose worker started in an empty context: only ctxrelay carries the value to
# its task, on every interpreter (a new thread would inherit it on 3.14 with
# thread_inherit_context=1, and so would a worker started by the submit itself).
APP = """
import contextvars
from concurrent.futures import ThreadPoolExecutor
var = contextvars.ContextVar("v", default="EMPTY")
var.set("carried")
with ThreadPoolExecutor(1) as pool:
    contextvars.Context().run(pool.submit, int).result()
    print("app ran:", pool.submit(var.get).result())
"""


@pytest.mark.parametrize("strict", [False, True], ids=["default", "-W error"])
def test_start_up_with_garbage_everywhere_warns_per_variable_and_runs(strict: bool) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CTXRELAY_")}
    env["CTXRELAY_ENABLED"] = "1"
    bad = [
        v for v, expected in VALIDATED.items() if expected is not None and v != "CTXRELAY_ENABLED"
    ]
    for variable in bad:
        env[variable] = _garbage()
    env["OTEL_TRACES_EXPORTER"] = "none"
    env["OTEL_METRICS_EXPORTER"] = env["OTEL_LOGS_EXPORTER"] = "none"
    args = [sys.executable, *(["-W", "error"] if strict else []), "-c", APP]
    done = subprocess.run(args, env=env, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "app ran: carried"
    if not strict:
        for variable in bad:
            assert done.stderr.count(variable + "=") == 1, done.stderr


def test_start_up_with_garbage_enabled_warns_and_runs_uninstrumented() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CTXRELAY_")}
    env["CTXRELAY_ENABLED"] = "perhaps"
    done = subprocess.run(
        [sys.executable, "-c", APP],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "app ran: EMPTY"
    assert done.stderr.count("CTXRELAY_ENABLED='perhaps'") == 1
    assert "allowed values" in done.stderr


def test_instrument_with_unknown_names_is_a_clear_error_and_changes_nothing() -> None:
    with pytest.raises(ValueError, match="allowed values"):
        ctxrelay.instrument(include=["no-such-runner"])
    assert not ctxrelay.is_instrumented()
    assert copy_context().run(_carried) == "EMPTY"


# --- misused APIs: exactly the same outcome with and without ctxrelay --------------------


def outcome(action: Callable[[], Any]) -> tuple[str, str]:
    """``("ok", repr(result))`` or ``(exception type, message)``; also for thread errors."""
    errors: list[BaseException] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        result = ("ok", repr(action()))
    except Exception as exc:  # the outcome is what is compared
        result = (type(exc).__name__, str(exc))
    finally:
        threading.excepthook = old_hook
    if errors:  # an exception in the started thread, as threading.excepthook saw it
        result = (f"thread:{type(errors[0]).__name__}", str(errors[0]))
    return result


def _future_outcome(future: Any) -> Any:
    exc = future.exception(timeout=30)
    return ("future", type(exc).__name__, str(exc)) if exc else future.result()


def submit_non_callable() -> Any:
    with ThreadPoolExecutor(1) as pool:
        return _future_outcome(pool.submit(42))


def submit_none() -> Any:
    with ThreadPoolExecutor(1) as pool:
        return _future_outcome(pool.submit(None))


def submit_fn_keyword() -> Any:
    with ThreadPoolExecutor(1) as pool:
        return _future_outcome(pool.submit(fn=VAR.get))


def submit_after_shutdown() -> Any:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    return pool.submit(VAR.get)


def map_non_callable() -> Any:
    with ThreadPoolExecutor(1) as pool:
        return list(pool.map(42, [1, 2]))


def map_bad_iterable() -> Any:
    with ThreadPoolExecutor(1) as pool:
        return list(pool.map(VAR.get, 42))


def run_in_executor_non_callable() -> Any:
    async def main() -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, 42)

    return asyncio.run(main())


def run_in_executor_closed_loop() -> Any:
    loop = asyncio.new_event_loop()
    loop.close()
    return loop.run_in_executor(None, VAR.get)


def to_thread_non_callable() -> Any:
    return asyncio.run(asyncio.to_thread(42))  # type: ignore[arg-type]


def thread_started_twice() -> Any:
    thread = threading.Thread(target=VAR.get)
    thread.start()
    thread.join()
    thread.start()


def thread_target_not_callable() -> Any:
    thread = threading.Thread(target=42)  # type: ignore[arg-type]
    thread.start()
    thread.join()


def thread_args_not_a_tuple() -> Any:
    thread = threading.Thread(target=VAR.get, args=5)  # type: ignore[arg-type]
    thread.start()
    thread.join()


def run_without_start() -> Any:
    box: list[str] = []
    thread = threading.Thread(target=lambda: box.append(VAR.get()))
    thread.run()  # in the calling thread, as plain Python does
    return box, thread.is_alive(), thread.ident


def join_without_start() -> Any:
    threading.Thread(target=VAR.get).join()


class NoInit(threading.Thread):
    def __init__(self) -> None:  # never calls Thread.__init__
        self.ran = False

    def run(self) -> None:
        self.ran = True


def subclass_without_init_start() -> Any:
    NoInit().start()


def subclass_without_init_run() -> Any:
    thread = NoInit()
    thread.run()
    return thread.ran


def subclass_without_init_repr() -> Any:
    return repr(NoInit())


def timer_cancelled_before_start() -> Any:
    ran: list[bool] = []
    timer = threading.Timer(0, lambda: ran.append(True))
    timer.cancel()
    timer.start()
    timer.join()
    return ran


def daemon_set_after_start() -> Any:
    thread = threading.Thread(target=VAR.get)
    thread.start()
    thread.join()
    thread.daemon = True


def bind_non_callable() -> Any:
    return ctxrelay.bind(42)()  # type: ignore[arg-type]


MISUSES = [
    submit_non_callable,
    submit_none,
    submit_fn_keyword,
    submit_after_shutdown,
    map_non_callable,
    map_bad_iterable,
    run_in_executor_non_callable,
    run_in_executor_closed_loop,
    to_thread_non_callable,
    thread_started_twice,
    thread_target_not_callable,
    thread_args_not_a_tuple,
    run_without_start,
    join_without_start,
    subclass_without_init_start,
    subclass_without_init_run,
    subclass_without_init_repr,
    timer_cancelled_before_start,
    daemon_set_after_start,
]


def _scenario(action: Callable[[], Any]) -> tuple[str, str]:
    VAR.set("origin")
    return outcome(action)


@pytest.mark.parametrize("spans", [False, True], ids=["propagation", "with-spans"])
@pytest.mark.parametrize("action", MISUSES, ids=[f.__name__ for f in MISUSES])
def test_misuse_behaves_exactly_as_without_ctxrelay(
    action: Callable[[], Any], spans: bool, tracer
) -> None:
    without = copy_context().run(_scenario, action)
    ctxrelay.instrument(spans=spans)
    with tracer.start_as_current_span("misuse"):
        with_ctxrelay = copy_context().run(_scenario, action)
    # The repr of a non-started thread's state contains no ids; compare everything.
    assert with_ctxrelay == without


def test_bind_non_callable_fails_like_calling_it() -> None:
    not_callable: Any = 42
    assert outcome(bind_non_callable) == outcome(lambda: not_callable())
