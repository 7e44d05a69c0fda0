"""``CTXRELAY_*`` settings, end to end: each variable changes what really happens.

Every variable is also given garbage: ONE warning naming the variable and its allowed
values, and the application carries on with the default.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from attrs import define, field
from griptape.events import BaseEvent, EventBus, EventListener
from opentelemetry import trace

import ctxrelay
from ctxrelay import attributes, config, spans, table
from ctxrelay.config import ConfigWarning
from helpers import baseline, parent_of, spans_named

user_var: contextvars.ContextVar[str] = contextvars.ContextVar("ctxrelay_cfg_user", default="EMPTY")
secret: contextvars.ContextVar[str] = contextvars.ContextVar("ctxrelay_cfg_secret", default="EMPTY")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch):
    """No CTXRELAY_* from the outer environment; each test may warn afresh."""
    for key in list(os.environ):
        if key.startswith(config.PREFIX):
            monkeypatch.delenv(key)
    config._warned.clear()
    yield
    config._warned.clear()


def _set(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for key, value in variables.items():
        monkeypatch.setenv(config.PREFIX + key, value)


# --- what the work sees, in each runner ----------------------------------------------
def _seen(tracer: trace.Tracer) -> dict[str, str]:
    with tracer.start_as_current_span(f"job {threading.current_thread().name}"):
        return {"user": user_var.get(), "secret": secret.get()}


def via_thread(fn: Callable[[], Any]) -> Any:
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()), name="cfg-thread")
    thread.start()
    thread.join(10)
    return box[0]


def via_pool(fn: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(1, thread_name_prefix="cfg-pool") as pool:
        return pool.submit(fn).result(10)


def via_executor(fn: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    return asyncio.run(main())


RUNNERS = {"thread": via_thread, "pool": via_pool, "executor": via_executor}

#: What ``user_var`` reads in a runner that ctxrelay does not carry (3.14 with the flag
#: on: ``start()`` copies, and each pool here is fresh, its worker started by the submit).
NOT_CARRIED = baseline("EMPTY", "alice")


def _run_all(tracer: trace.Tracer) -> dict[str, dict[str, str]]:
    """Under a ``request`` span, with both variables set, hand work to each runner."""

    def scenario() -> dict[str, dict[str, str]]:
        user_var.set("alice")
        secret.set("db-session")
        with tracer.start_as_current_span("request"):
            return {name: run(lambda: _seen(tracer)) for name, run in RUNNERS.items()}

    return contextvars.copy_context().run(scenario)


def _hops(exporter) -> list:
    return [
        s for s in exporter.get_finished_spans() if attributes.ATTR_RUNNER in (s.attributes or {})
    ]


def _jobs_under_request(exporter) -> dict[str, bool]:
    """For each job span: is it in the request's trace?"""
    (request,) = spans_named(exporter, "request")
    return {
        s.name: s.context.trace_id == request.context.trace_id
        for s in spans_named(exporter, "job ")
    }


# --- on / off -----------------------------------------------------------------------
APP = """
import contextvars, sys, threading
var = contextvars.ContextVar("v", default="EMPTY")
var.set("main")
box = []
t = threading.Thread(target=lambda: box.append(var.get()))
t.start(); t.join()
import ctxrelay
print(box[0], ctxrelay.is_instrumented())
"""
#: What APP's thread reads uninstrumented (the subprocess inherits
#: PYTHON_THREAD_INHERIT_CONTEXT from this one's environment).
APP_LOST = baseline("EMPTY", "main")


def _python(
    tmp_path: Path, env_extra: dict[str, str], *flags: str
) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))
    env = {k: v for k, v in os.environ.items() if not k.startswith((config.PREFIX, "OTEL_"))}
    env.update(OTEL_SDK_DISABLED="true", **env_extra)
    return subprocess.run(
        [sys.executable, *flags, str(app)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, f"{APP_LOST} False"),
        ("0", f"{APP_LOST} False"),
        ("off", f"{APP_LOST} False"),
        ("1", "main True"),
        ("true", "main True"),
        ("ON", "main True"),
    ],
)
def test_enabled_switches_start_up_activation(
    tmp_path: Path, value: str | None, expected: str
) -> None:
    extra = {} if value is None else {"CTXRELAY_ENABLED": value}
    done = _python(tmp_path, extra)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
    assert "Warning" not in done.stderr


def test_enabled_garbage_warns_once_and_stays_off(tmp_path: Path) -> None:
    done = _python(tmp_path, {"CTXRELAY_ENABLED": "maybe"}, "-W", "always")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{APP_LOST} False"
    assert done.stderr.count("ConfigWarning") == 1, done.stderr
    assert "CTXRELAY_ENABLED='maybe'" in done.stderr and "allowed values: 1, true" in done.stderr


def test_every_garbage_value_at_start_up_gives_one_warning_each(tmp_path: Path) -> None:
    """The bootstrap and instrument() both read the settings: still one warning each."""
    garbage = {
        "HOP_SPANS": "sometimes",
        "LISTENER_SPANS": "2",
        "RECORD_PAYLOADS": "all",
        "INCLUDE": "threads",
        "EXCLUDE": "nope",
        "DETACH": "yes",
        "DROP_HOPS": "off",
    }
    env = {config.PREFIX + k: v for k, v in garbage.items()}
    env["CTXRELAY_ENABLED"] = "1"
    done = _python(tmp_path, env, "-W", "always")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "main True", "defaults: every runner on"
    assert done.stderr.count("ConfigWarning") == len(garbage), done.stderr
    for key, value in garbage.items():
        assert done.stderr.count(f"{config.PREFIX}{key}={value!r}") == 1, done.stderr


# --- hop spans and listener spans, separately -----------------------------------------
def test_hop_spans_off_keeps_propagation_and_the_trace(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, HOP_SPANS="false")
    ctxrelay.instrument()
    seen = _run_all(tracer)

    assert all(s["user"] == "alice" for s in seen.values()), seen
    assert _hops(exporter) == []
    # The user's spans in the workers are still children of the request, directly.
    (request,) = spans_named(exporter, "request")
    for job in spans_named(exporter, "job "):
        assert parent_of(job, exporter) is request
    assert spans.settings.listeners is True, "listener spans are a separate switch"


def test_hop_spans_on_by_default(exporter, tracer) -> None:
    ctxrelay.instrument()
    _run_all(tracer)
    assert {s.attributes[attributes.ATTR_RUNNER] for s in _hops(exporter)} == {
        "Thread",
        "ThreadPoolExecutor",
        "run_in_executor",
    }
    assert spans.settings.listeners is True


def test_listener_spans_off_leaves_hop_spans_on(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, LISTENER_SPANS="no")
    ctxrelay.instrument()
    _run_all(tracer)
    assert len(_hops(exporter)) == 3
    assert spans.settings.listeners is False and spans.settings.hops is True


def test_instrument_arguments_win_over_the_environment(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, HOP_SPANS="false", EXCLUDE="threading")
    ctxrelay.instrument(spans=True, exclude=())
    seen = _run_all(tracer)
    assert seen["thread"]["user"] == "alice"
    assert len(_hops(exporter)) == 3


# --- listener spans, with a real griptape EventBus ---------------------------------------
@define
class Ping(BaseEvent):
    text: str = field(default="payload-marker-42", kw_only=True)


def _publish_in_pool(tracer: trace.Tracer) -> list[str]:
    """A listener added in the caller; the event published from a pool task."""
    got: list[str] = []
    listener = EventListener(on_event=lambda event: got.append(threading.current_thread().name))

    def scenario() -> None:
        EventBus.add_event_listeners([listener])  # inside a copy: gone after the test
        with tracer.start_as_current_span("request"):
            via_pool(lambda: EventBus.publish_event(Ping()))

    contextvars.copy_context().run(scenario)
    return got


def _dispatches(exporter) -> list:
    return spans_named(exporter, "griptape dispatch")


def test_listener_spans_off_keeps_hops_and_delivery(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, LISTENER_SPANS="off")
    ctxrelay.instrument()
    assert _publish_in_pool(tracer) == ["cfg-pool_0"]
    assert _dispatches(exporter) == [] and spans_named(exporter, "griptape listener") == []
    assert len(_hops(exporter)) == 1


def test_hop_spans_off_records_dispatches_only(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, HOP_SPANS="off")
    ctxrelay.instrument()
    assert _publish_in_pool(tracer) == ["cfg-pool_0"]
    assert _hops(exporter) == []
    (dispatch,) = _dispatches(exporter)
    assert parent_of(dispatch, exporter) is spans_named(exporter, "request")[0]
    assert dispatch.attributes[attributes.ATTR_LISTENERS] == 1


def test_record_payloads_is_off_by_default_and_opt_in(monkeypatch, exporter, tracer) -> None:
    ctxrelay.instrument()
    _publish_in_pool(tracer)
    (dispatch,) = _dispatches(exporter)
    assert attributes.ATTR_PAYLOAD not in dispatch.attributes
    recorded = [repr(dict(s.attributes or {})) for s in exporter.get_finished_spans()]
    assert not any("payload-marker-42" in text for text in recorded)

    exporter.clear()
    _set(monkeypatch, RECORD_PAYLOADS="yes")
    ctxrelay.instrument()
    _publish_in_pool(tracer)
    (dispatch,) = _dispatches(exporter)
    assert "payload-marker-42" in dispatch.attributes[attributes.ATTR_PAYLOAD]


def test_exclude_a_bus(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, EXCLUDE="griptape")
    ctxrelay.instrument()
    assert _publish_in_pool(tracer) == ["cfg-pool_0"], "propagation is the runners' job"
    assert _dispatches(exporter) == []


# --- include / exclude ----------------------------------------------------------------
def test_include_patches_only_the_named_runners(monkeypatch, exporter, tracer) -> None:
    assert _run_all(tracer)["pool"]["user"] == NOT_CARRIED, "the loss, without ctxrelay"
    _set(monkeypatch, INCLUDE="FUTURES")  # names are case-insensitive
    ctxrelay.instrument()
    seen = _run_all(tracer)
    assert seen["pool"]["user"] == "alice"
    assert seen["executor"]["user"] == "alice", "run_in_executor queues on a ThreadPoolExecutor"
    assert seen["thread"]["user"] == NOT_CARRIED, "threading was not included"


def test_exclude_leaves_the_named_runners_alone(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, EXCLUDE="threading, asyncio")
    ctxrelay.instrument()
    seen = _run_all(tracer)
    assert seen["thread"]["user"] == NOT_CARRIED
    assert seen["pool"]["user"] == "alice"
    assert "run_in_executor" not in {s.attributes[attributes.ATTR_RUNNER] for s in _hops(exporter)}


@pytest.mark.parametrize("key", ["INCLUDE", "EXCLUDE"])
def test_unknown_runner_names_warn_once_and_fall_back(monkeypatch, tracer, key: str) -> None:
    _set(monkeypatch, **{key: "threads,  futurez"})  # typos of threading, futures
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctxrelay.instrument()
        ctxrelay.instrument()  # read again: no second warning
    (warning,) = [w for w in caught if w.category is ConfigWarning]
    message = str(warning.message)
    assert f"CTXRELAY_{key}='threads,  futurez'" in message
    assert "threads, futurez" in message
    assert all(name in message for name in table.names()), "lists the allowed values"
    seen = _run_all(tracer)
    assert seen["thread"]["user"] == seen["pool"]["user"] == "alice", "default: everything"


def test_a_partly_valid_list_keeps_the_valid_names(monkeypatch, tracer) -> None:
    _set(monkeypatch, INCLUDE="futures,bogus")
    with pytest.warns(ConfigWarning, match="Ignoring the unknown names"):
        ctxrelay.instrument()
    seen = _run_all(tracer)
    assert seen["pool"]["user"] == "alice" and seen["thread"]["user"] == NOT_CARRIED


def test_instrument_rejects_unknown_names_in_code() -> None:
    """In code a typo is a programming error: it fails loudly, at the call."""
    with pytest.raises(ValueError, match="allowed values"):
        ctxrelay.instrument(include=["bogus"])
    assert not ctxrelay.is_instrumented()


# --- ContextVar names never propagated -------------------------------------------------
def test_skip_vars_are_never_carried(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, SKIP_VARS="ctxrelay_cfg_secret, some_other_name")
    ctxrelay.instrument()
    seen = _run_all(tracer)
    for runner, values in seen.items():
        assert values == {"user": "alice", "secret": "EMPTY"}, runner
    # ... and the trace still holds together (the OpenTelemetry context was carried).
    assert all(_jobs_under_request(exporter).values())


def test_skip_vars_has_no_invalid_value_only_names(monkeypatch, tracer) -> None:
    """Any string can be a ContextVar name: separators alone skip nothing, silently."""
    _set(monkeypatch, SKIP_VARS=" , ,, ")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        ctxrelay.instrument()
    assert all(v == {"user": "alice", "secret": "db-session"} for v in _run_all(tracer).values())


# --- detach ---------------------------------------------------------------------------
def _assert_detached(exporter, runner: str) -> None:
    (request,) = spans_named(exporter, "request")
    (hop,) = [s for s in _hops(exporter) if s.attributes[attributes.ATTR_RUNNER] == runner]
    assert hop.attributes[attributes.ATTR_DETACHED] is True
    assert hop.context.trace_id != request.context.trace_id, "a new trace"
    assert hop.parent is None
    (link,) = hop.links
    assert link.context.trace_id == request.context.trace_id
    assert link.context.span_id == request.context.span_id, "the link points at the origin"
    # The user's spans inside the detached work are in the new trace, under the hop.
    (job,) = [s for s in spans_named(exporter, "job ") if parent_of(s, exporter) is hop]
    assert job.context.trace_id == hop.context.trace_id


def test_detach_by_runner_starts_a_linked_trace(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, DETACH="Thread")
    ctxrelay.instrument()
    seen = _run_all(tracer)
    assert seen["thread"]["user"] == "alice", "detached work still gets the context"
    _assert_detached(exporter, "Thread")
    under = _jobs_under_request(exporter)
    assert sorted(under.values()) == [False, True, True], "only the Thread job left the trace"


def test_detach_by_function_pattern(monkeypatch, exporter, tracer) -> None:
    def nightly_report() -> str:
        with tracer.start_as_current_span("job report"):
            return user_var.get()

    _set(monkeypatch, DETACH=f"{__name__}.*nightly_*")
    ctxrelay.instrument()

    def scenario() -> str:
        user_var.set("alice")
        with tracer.start_as_current_span("request"):
            via_thread(lambda: _seen(tracer))  # a lambda: not matched, stays in the trace
            return via_pool(nightly_report)

    assert contextvars.copy_context().run(scenario) == "alice"
    _assert_detached(exporter, "ThreadPoolExecutor")
    (request,) = spans_named(exporter, "request")
    (thread_hop,) = [s for s in _hops(exporter) if s.attributes[attributes.ATTR_RUNNER] == "Thread"]
    assert parent_of(thread_hop, exporter) is request


def test_detach_works_with_hop_spans_off(monkeypatch, exporter, tracer) -> None:
    """The detached hop span carries the link, so it is recorded; no other hop is."""
    _set(monkeypatch, DETACH="ThreadPoolExecutor", HOP_SPANS="0")
    ctxrelay.instrument()
    _run_all(tracer)
    assert [s.attributes[attributes.ATTR_RUNNER] for s in _hops(exporter)] == ["ThreadPoolExecutor"]
    _assert_detached(exporter, "ThreadPoolExecutor")
    assert sorted(_jobs_under_request(exporter).values()) == [False, True, True]


def test_detach_given_a_boolean_warns_once_and_is_ignored(monkeypatch, exporter, tracer) -> None:
    _set(monkeypatch, DETACH="true")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctxrelay.instrument()
        ctxrelay.instrument()
    (warning,) = [w for w in caught if w.category is ConfigWarning]
    assert "CTXRELAY_DETACH='true'" in str(warning.message)
    assert "allowed values: a comma-separated list of runner names" in str(warning.message)
    _run_all(tracer)
    assert all(_jobs_under_request(exporter).values())


# --- booleans with garbage --------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "attribute", "default"),
    [
        ("HOP_SPANS", "hops", True),
        ("LISTENER_SPANS", "listeners", True),
        ("RECORD_PAYLOADS", "record_payloads", False),
    ],
)
def test_boolean_garbage_warns_once_and_uses_the_default(
    monkeypatch, key, attribute, default
) -> None:
    _set(monkeypatch, **{key: "maybe"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctxrelay.instrument()
        ctxrelay.instrument()
    (warning,) = [w for w in caught if w.category is ConfigWarning]
    message = str(warning.message)
    assert f"CTXRELAY_{key}='maybe'" in message
    assert "allowed values: 1, true, yes, on, 0, false, no, off" in message
    assert f"Using the default ({str(default).lower()})" in message
    assert getattr(spans.settings, attribute) is default
    assert ctxrelay.is_instrumented()


@pytest.mark.parametrize("key", ["HOP_SPANS", "LISTENER_SPANS", "RECORD_PAYLOADS"])
def test_boolean_switches_reach_the_span_settings(monkeypatch, key) -> None:
    attribute = {
        "HOP_SPANS": "hops",
        "LISTENER_SPANS": "listeners",
        "RECORD_PAYLOADS": "record_payloads",
    }[key]
    for raw, expected in (("1", True), ("off", False), ("", key != "RECORD_PAYLOADS")):
        _set(monkeypatch, **{key: raw})
        ctxrelay.instrument()
        assert getattr(spans.settings, attribute) is expected, (raw, expected)


def test_a_warning_turned_into_an_error_still_does_not_stop_the_app(monkeypatch, tracer) -> None:
    _set(monkeypatch, HOP_SPANS="maybe")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctxrelay.instrument()
    assert _run_all(tracer)["thread"]["user"] == "alice"


# --- hops dropped by what they run (CTXRELAY_DROP_HOPS) --------------------------------
def poll_inbox() -> str:
    return user_var.get()


def _pool_hops(tracer: trace.Tracer) -> list[str]:
    """Submit the user's poll_inbox and os.getcwd (a C function) under a request."""

    def scenario() -> list[str]:
        user_var.set("alice")
        with tracer.start_as_current_span("request"), ThreadPoolExecutor(1) as pool:
            return [
                pool.submit(poll_inbox).result(),
                os.path.basename(pool.submit(os.getcwd).result()),
            ]

    return contextvars.copy_context().run(scenario)


def _hop_functions(exporter: Any) -> list[str]:
    return sorted(s.attributes[attributes.CODE_FUNCTION_NAME] for s in _hops(exporter))


def test_drop_hops_by_pattern_the_default_list_and_none(monkeypatch, exporter, tracer) -> None:
    cwd = os.path.basename(os.getcwd())
    # Default: C functions of os (posix.*) are framework internals, the user's are kept.
    ctxrelay.instrument()
    assert _pool_hops(tracer) == ["alice", cwd]
    assert _hop_functions(exporter) == [f"{__name__}.poll_inbox"]

    # A pattern of the user's own drops its hop too; the work still gets the context.
    exporter.clear()
    _set(monkeypatch, DROP_HOPS="framework,*.poll_*")
    ctxrelay.instrument()
    assert _pool_hops(tracer) == ["alice", cwd]
    assert _hop_functions(exporter) == []

    # "none" brings the built-in list back.
    exporter.clear()
    _set(monkeypatch, DROP_HOPS="none")
    ctxrelay.instrument()
    assert _pool_hops(tracer) == ["alice", cwd]
    assert _hop_functions(exporter) == sorted([f"{__name__}.poll_inbox", "posix.getcwd"])


def test_drop_hops_given_a_boolean_warns_once_and_keeps_the_default(
    monkeypatch, exporter, tracer
) -> None:
    _set(monkeypatch, DROP_HOPS="0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctxrelay.instrument()
        ctxrelay.instrument()
    (warning,) = [w for w in caught if w.category is ConfigWarning]
    assert "CTXRELAY_DROP_HOPS='0'" in str(warning.message)
    assert "allowed values: a comma-separated list of 'framework'" in str(warning.message)
    _pool_hops(tracer)
    assert _hop_functions(exporter) == [f"{__name__}.poll_inbox"]
