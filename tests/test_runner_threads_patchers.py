"""Code that wraps the thread-start global itself, under ctxrelay's wrapper.

ctxrelay hands the real thread start its own callable in place of ``thread._bootstrap``;
what such code reads on the function it is given must read as without ctxrelay:
eventlet (3.10-3.12) releases a Thread's ``_tstate_lock`` itself only when the function
reads as a ``threading`` bound method (``__module__ == "threading"`` and ``__self__``),
else ``join()`` never returns.  Each test runs the scenario bare first.
"""

from __future__ import annotations

import contextvars
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

import ctxrelay
from ctxrelay.runners import threads
from helpers import baseline

var: contextvars.ContextVar[Any] = contextvars.ContextVar("ctxrelay_patchers_var", default="EMPTY")

#: What a start-up tool reads on the function it is handed (pydevd, eventlet, profilers).
_READ = ("__self__", "__func__", "__module__", "__name__", "__qualname__")


def _introspect(function: Any) -> dict[str, Any]:
    return {name: getattr(function, name, "<missing>") for name in _READ}


@pytest.mark.parametrize("spans", [False, True])
def test_the_function_handed_to_the_thread_start_reads_as_the_bootstrap(spans: bool) -> None:
    """A wrapper installed on the thread-start global before ``instrument()`` (so that
    ctxrelay's wrapper calls it) reads the same ``__self__``, ``__func__``, ``__module__``,
    ``__name__`` and ``__qualname__`` as bare, and the thread still runs carried."""
    seen: list[dict[str, Any]] = []
    original = getattr(threading, threads._START)

    def looking(function: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(_introspect(function))
        return original(function, *args, **kwargs)

    ran: list[Any] = []
    started: list[threading.Thread] = []

    def scenario() -> None:
        var.set("carried")
        thread = threading.Thread(target=lambda: ran.append(var.get()))
        started.append(thread)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()

    setattr(threading, threads._START, looking)
    try:
        contextvars.copy_context().run(scenario)
        ctxrelay.instrument(spans=spans)
        contextvars.copy_context().run(scenario)
        ctxrelay.uninstrument()
    finally:
        setattr(threading, threads._START, original)
    for thread, read in zip(started, seen, strict=True):
        assert read.pop("__self__") is thread, "__self__ is the Thread started"
    bare, instrumented = seen
    assert bare["__module__"] == "threading" and bare["__name__"] == "_bootstrap"
    assert instrumented == bare
    assert ran == [baseline("EMPTY", "carried"), "carried"]


_EVENTLET_APP = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    import eventlet
    eventlet.monkey_patch()
    import contextvars, threading
    import ctxrelay
    if sys.argv[1] == "on":
        ctxrelay.instrument(spans=False)
    var = contextvars.ContextVar("v", default="EMPTY")
    var.set("carried")
    got = []
    thread = threading.Thread(target=lambda: got.append(var.get()))
    thread.start()
    thread.join(20)  # a hang guard, not a timing: a finished green thread joins at once
    print("joined" if not thread.is_alive() else "still alive", got)
    """
)


def test_eventlet_threads_join_as_bare() -> None:
    """eventlet monkey-patched, then ``instrument()``: a started thread's ``join()``
    returns, as bare (eventlet recognises ``thread._bootstrap`` by its ``__module__``
    and ``__self__``), and the thread ran in the starter's context."""
    pytest.importorskip("eventlet")

    def run(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _EVENTLET_APP, mode],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run("off") == "joined ['EMPTY']"
    assert run("on") == "joined ['carried']"
