"""Flush spans when SIGTERM ends the process, then end it exactly as it would have ended.

CPython's default SIGTERM action kills the process at once: ``atexit`` never runs, so the
SDK's shutdown (which drains the batch processor and prints the trace trees) never runs
either, and ``docker stop``, systemd and Kubernetes lose every buffered span (and the
doctor's report, which is written at exit).

At start-up activation (and when the doctor starts), and only while SIGTERM still has
its default action, ctxrelay installs :func:`_on_sigterm`.  When it is the installed
handler and SIGTERM arrives, it runs what was registered with :func:`before_death` (the
doctor's report), flushes the global tracer provider (bounded by
:data:`FLUSH_TIMEOUT`), puts the default action back and raises SIGTERM again: the
process dies of SIGTERM, as without ctxrelay (same wait status, no ``atexit``, no
``finally`` blocks run).

The application's choice wins:

* a handler the application (uvicorn, gunicorn, ...) installs later replaces this one;
  it runs exactly once and decides what happens.  ``signal.signal`` returns this handler
  as the previous one, and a server that restores it and re-raises the signal once it has
  shut down gracefully (uvicorn does) gets the flush and then the default death;
* called by another handler that chains to its predecessor, this one only flushes and
  returns: the handler actually installed decides whether the process ends (and if it
  exits, ``atexit`` writes the doctor's report).

Signals are delivered to Python handlers between bytecodes of the main thread; a main
thread stuck for long inside one C call delays the flush, and the death, by that long.
"""

from __future__ import annotations

import _thread
import contextvars
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["FLUSH_TIMEOUT", "before_death", "die", "install"]

#: Longest the flush may take before the process ends anyway (``docker stop`` waits 10 s).
FLUSH_TIMEOUT = 5.0


#: Run when SIGTERM is about to end the process: what ``atexit`` would have done.
_before_death: list[Callable[[], None]] = []


def before_death(callback: Callable[[], None]) -> None:
    """Run ``callback`` (once, never raising out) before SIGTERM's death, if this handler
    ends the process.  It runs in a signal handler: it must not take a lock the
    interrupted main thread may hold (write with ``os.write``, not ``print``)."""
    if callback not in _before_death:
        _before_death.append(callback)


def _run_before_death() -> None:
    callbacks = list(_before_death)
    _before_death.clear()  # once: a second SIGTERM during them does not repeat them
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the process is ending: nothing to report to
            pass


def die(signum: int) -> None:
    """The death ``signum`` would have given, after the :func:`before_death` callbacks."""
    _run_before_death()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # default action now: the death SIGTERM would have given


def install() -> bool:
    """Install the handler if SIGTERM has its default action; True if installed."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False  # ignored, or someone else's: leave it
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def _flush() -> None:
    """Flush the global provider, in a helper thread so that a stuck exporter is bounded."""
    done = threading.Event()

    def flush() -> None:
        try:
            from opentelemetry import trace

            force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if force_flush is not None:
                force_flush(int(FLUSH_TIMEOUT * 1000))
        except Exception:  # the process is ending: nothing to report to
            pass
        finally:
            done.set()

    try:
        # Started from an empty context: the helper records no hop span of its own, one
        # that would end after this flush and never be exported.
        contextvars.Context().run(_thread.start_new_thread, flush, ())
    except Exception:  # no thread at all (interpreter shutting down): flush here
        flush()
    done.wait(FLUSH_TIMEOUT)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # A process-pool worker may be inside the carrier's exit flush (its finalizers run
    # before Pool.terminate's SIGTERM lands): let that flush finish, then die.
    carrier = sys.modules.get("ctxrelay.carrier")
    if carrier is not None and carrier.defer_death_if_flushing():
        return
    if signal.getsignal(signum) is not _on_sigterm:
        _flush()
        return  # chained to by the handler in force: that one decides
    # First the doctor's report (milliseconds), then the flush (up to FLUSH_TIMEOUT):
    # an orchestrator's patience is bounded.
    _run_before_death()
    _flush()
    die(signum)
