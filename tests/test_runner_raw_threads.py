"""``_thread.start_new_thread`` called directly: without ctxrelay the thread starts with an
empty context; with it, it runs in a copy of the caller's, as an ordinary hop.

Real OS threads started through ``_thread``; a real ``sys.unraisablehook`` for the
exception case (``_thread`` reports a raising function through it).
"""

from __future__ import annotations

import _thread
import contextvars
import re
import subprocess
import sys
import threading
import traceback
from typing import Any

import pytest

import ctxrelay
from helpers import parent_of, spans_named

user: contextvars.ContextVar[str] = contextvars.ContextVar("test_raw_user", default="<unset>")

TIMEOUT = 10


def _start_raw(fn, *args, **kwargs) -> None:
    done = threading.Event()

    def body() -> None:
        try:
            fn(*args, **kwargs)
        finally:
            done.set()

    _thread.start_new_thread(body, ())
    assert done.wait(TIMEOUT)


def test_raw_thread_without_then_with_ctxrelay(exporter, tracer) -> None:
    seen: list[tuple[str, int, int]] = []

    def work(a: int, b: int = 0) -> None:
        seen.append((user.get(), a, b))

    user.set("alice")
    with tracer.start_as_current_span("request"):
        _start_raw(work, 1, b=2)
    ctxrelay.instrument()
    with tracer.start_as_current_span("request"):
        _start_raw(work, 1, b=2)

    assert seen == [("<unset>", 1, 2), ("alice", 1, 2)]
    (hop,) = spans_named(exporter, "_thread.start_new_thread")
    assert hop.name == "_thread.start_new_thread body"
    assert parent_of(hop, exporter).name == "request"
    assert hop.attributes["thread.name"].startswith("thread-")


def test_raw_thread_gets_no_dummy_thread_object() -> None:
    """ctxrelay's run side never calls current_thread() (it would register a dummy)."""
    ctxrelay.instrument()
    idents: list[int] = []
    _start_raw(lambda: idents.append(_thread.get_ident()))
    assert idents and idents[0] not in threading._active


def _unraisable_report(task: Any) -> dict[str, Any]:
    """Start ``task`` (which raises) as a raw thread; what ``sys.unraisablehook`` got."""
    got: list[Any] = []
    arrived = threading.Event()
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        got.append(unraisable)
        arrived.set()

    sys.unraisablehook = hook
    try:
        _thread.start_new_thread(task, ())
        assert arrived.wait(TIMEOUT), "no report"
    finally:
        sys.unraisablehook = previous
    (unraisable,) = got
    return {
        "object": unraisable.object,
        "err_msg": unraisable.err_msg,
        "exc_type": unraisable.exc_type,
        "exc_value": unraisable.exc_value,
        "exc_traceback is exc_value.__traceback__": (
            unraisable.exc_traceback is unraisable.exc_value.__traceback__
        ),
        "frames": [
            frame.f_code.co_name for frame, _ in traceback.walk_tb(unraisable.exc_traceback)
        ],
        "__context__": unraisable.exc_value.__context__,
        "type": type(unraisable),
    }


@pytest.mark.parametrize("span", [False, True], ids=["no span", "sampled span"])
def test_raising_function_is_reported_to_the_hook_exactly_as_without_ctxrelay(
    span: bool, tracer: Any
) -> None:
    """Same object (the user's function itself on 3.10-3.12, None on 3.13+), same
    err_msg, the very exception raised, a traceback that starts at the function."""
    raised: list[BaseException] = []

    def task() -> None:
        error = ValueError("boom")
        raised.append(error)
        raise error

    def report() -> dict[str, Any]:
        if not span:
            return _unraisable_report(task)
        with tracer.start_as_current_span("request"):
            return _unraisable_report(task)

    bare = report()
    assert bare["exc_value"] is raised[0]
    ctxrelay.instrument()
    instrumented = report()
    assert instrumented["exc_value"] is raised[1]
    bare["exc_value"] = instrumented["exc_value"] = "the exception task raised"
    assert instrumented == bare
    if sys.version_info < (3, 13):
        assert bare["object"] is task
    else:
        assert bare["object"] is None and repr(task) in bare["err_msg"]


REPORT_SCRIPT = """
import _thread, sys, threading, time
if sys.argv[1] == "on":
    import ctxrelay
    ctxrelay.instrument()
done = threading.Event()
def failing_hook(unraisable):
    done.set()
    raise RuntimeError("the hook fails")
def audit(event, args):
    if event == "sys.unraisablehook":
        done.set()
        if sys.argv[2] == "audit hook fails":
            raise RuntimeError("the audit hook fails")
sys.addaudithook(audit)
if sys.argv[2] == "hook fails":
    sys.unraisablehook = failing_hook
elif sys.argv[2] == "hook is None":
    sys.unraisablehook = None
elif sys.argv[2] == "hook deleted":
    del sys.unraisablehook
def task():
    raise ValueError("boom")
_thread.start_new_thread(task, ())
if sys.argv[2] == "hook deleted":  # no audit event then
    time.sleep(0.5)
else:
    done.wait(10)
    time.sleep(0.2)  # the default hook writes after the event
"""


@pytest.mark.parametrize(
    "case", ["default hook", "hook fails", "audit hook fails", "hook is None", "hook deleted"]
)
def test_raising_function_prints_what_it_prints_without_ctxrelay(case: str) -> None:
    """What reaches stderr (the default hook, or its report of a failing hook or audit
    hook) is the same text, in a fresh interpreter each way."""

    def stderr(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", REPORT_SCRIPT, mode, case],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return re.sub(r"0x[0-9a-f]+", "0x…", done.stderr)

    bare = stderr("off")
    assert "Exception ignored in" in bare
    assert stderr("on") == bare


def test_threading_threads_are_left_to_the_thread_patch(exporter, tracer) -> None:
    ctxrelay.instrument()
    with tracer.start_as_current_span("request"):
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join(TIMEOUT)
    assert not spans_named(exporter, "_thread.start_new_thread")
    assert len(spans_named(exporter, "Thread")) == 1


def test_excluding_the_runner_gives_the_old_behaviour() -> None:
    ctxrelay.instrument(exclude=["_thread"])
    seen: list[str] = []
    user.set("bob")
    _start_raw(lambda: seen.append(user.get()))
    assert seen == ["<unset>"]


class _Touchy:
    """A callable whose attribute lookups raise something other than AttributeError."""

    def __init__(self, done: threading.Event) -> None:
        object.__setattr__(self, "done", done)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} here")

    def __call__(self) -> None:
        object.__getattribute__(self, "done").set()


def test_a_callable_whose_getattr_raises_starts_as_without_ctxrelay(tracer: Any) -> None:
    outcomes = []
    for on in (False, True):
        if on:
            ctxrelay.instrument()
        done = threading.Event()
        with tracer.start_as_current_span("request"):
            _thread.start_new_thread(_Touchy(done), ())
        outcomes.append(done.wait(TIMEOUT))
    assert outcomes == [True, True]
