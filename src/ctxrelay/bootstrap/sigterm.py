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
Worse, the kernel hands a process-directed SIGTERM to any thread: one taken by another
thread (the SDK's export thread) does not interrupt the main thread's wait at all, and a
main thread waiting for ever (a pool worker in ``sem_wait`` on the queue lock its pool
holds while terminating it) would never die, where the default action kills it.
:func:`route_to_main_thread` closes that gap.
"""

from __future__ import annotations

import _thread
import contextvars
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = [
    "FLUSH_TIMEOUT",
    "before_death",
    "began",
    "die",
    "install",
    "route_inherited",
    "route_to_main_thread",
]

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
    # Not routed here (route_to_main_thread): its reader thread would make every
    # activated process multi-threaded (3.12+ warns at each os.fork()).  A pool worker,
    # which has threads anyway, routes on its first task (route_inherited).
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def flush_bounded(timeout: float = FLUSH_TIMEOUT) -> bool:
    """Flush the global provider in a helper thread; True if it ended within ``timeout`` s.

    The SDK's batch processor does not bound its flush: an export that never returns (a
    collector that does not answer) must not keep a dying process alive.  Never raises.
    """
    done = threading.Event()

    def flush() -> None:
        try:
            from opentelemetry import trace

            force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if force_flush is not None:
                force_flush(int(timeout * 1000))
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
    return done.wait(max(0.0, timeout))


#: Set once a ctxrelay SIGTERM handler has begun in this process.
_begun: list[bool] = []


def began() -> bool:
    """In a ctxrelay SIGTERM handler, first thing: True if one has begun already (the
    same SIGTERM, re-sent to the main thread by :func:`route_to_main_thread`)."""
    if _begun:
        return True
    _begun.append(True)
    return False


def route_to_main_thread(handler: Any) -> None:
    """While ``handler`` is SIGTERM's and has not begun, a SIGTERM that another thread
    took is sent on to the main thread.

    A raw thread reads the signal wake-up fd (a byte per signal, whichever thread took
    it) and sends SIGTERM to the main thread with ``pthread_kill`` until the handler has
    begun (at most :data:`FLUSH_TIMEOUT`).  Only from the main thread, and only where no
    wake-up fd is set already (an event loop's own stays; there, the gap stays too).
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_kill"
    ):
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return
    try:
        os.set_blocking(write_end, False)
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        if previous != -1:  # someone else's: theirs stays
            signal.set_wakeup_fd(previous)
            raise OSError("the wake-up fd is in use")
    except (OSError, ValueError):
        os.close(read_end)
        os.close(write_end)
        return
    _routing[:] = [handler, read_end, write_end]
    main = threading.main_thread().ident
    term = bytes([signal.SIGTERM])

    def watch() -> None:
        try:
            while term not in os.read(read_end, 64):
                pass
            for _ in range(int(FLUSH_TIMEOUT / 0.05)):
                time.sleep(0.05)
                if _begun or main is None or signal.getsignal(signal.SIGTERM) is not handler:
                    return  # begun, or someone else's handler now: theirs decides
                signal.pthread_kill(main, signal.SIGTERM)
        except Exception:  # the process is ending
            pass

    try:
        # A raw thread from an empty context: no Thread bookkeeping, no hop span.
        contextvars.Context().run(_thread.start_new_thread, watch, ())
    except Exception:  # pragma: no cover - no thread: the gap stays
        pass


#: ``[handler, read_end, write_end]`` while :func:`route_to_main_thread` routes.
_routing: list[Any] = []


def _route_again_in_child() -> None:
    """A forked child inherits the wake-up fd, not the thread reading it: it is
    dropped (a pool worker routes again on its first task: :func:`route_inherited`)."""
    if not _routing:
        return
    _, read_end, write_end = _routing
    _routing.clear()
    _begun.clear()
    try:
        if signal.set_wakeup_fd(-1) != write_end:
            return  # not ours any more
        os.close(read_end)
        os.close(write_end)
    except (OSError, ValueError):
        pass


def route_inherited() -> None:
    """In a forked child whose SIGTERM handler is still the start-up one: route again."""
    if not _routing and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        route_to_main_thread(_on_sigterm)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_route_again_in_child)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # A process-pool worker may be inside the carrier's exit flush (its finalizers run
    # before Pool.terminate's SIGTERM lands): let that flush finish, then die.
    carrier = sys.modules.get("ctxrelay.carrier")
    if carrier is not None and carrier.defer_death_if_flushing():
        return
    if signal.getsignal(signum) is not _on_sigterm:
        flush_bounded()
        return  # chained to by the handler in force: that one decides
    if began():
        return
    # First the doctor's report (milliseconds), then the flush (up to FLUSH_TIMEOUT):
    # an orchestrator's patience is bounded.
    _run_before_death()
    flush_bounded()
    die(signum)
