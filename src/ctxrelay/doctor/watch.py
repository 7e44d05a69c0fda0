"""The doctor's own observation points: starts that no hand-over patch sees.

Read against ``Lib/threading.py`` of CPython 3.10-3.13.

* Threads already running when the doctor starts (started before ctxrelay was
  activated): listed once, with where each one is now (``sys._current_frames()``).
* Foreign threads: ``threading.current_thread()`` in a thread that ``threading`` did not
  start (a C library's callback thread, ``_thread`` with ctxrelay's ``_thread`` runner
  excluded, a thread started around the patches) creates a ``threading._DummyThread``.
  Its ``__init__`` is wrapped to note where that first happened and whether the thread
  had any context at all.  The wrapper only reads; the dummy is made as before.
* gevent: with ``threading`` monkey-patched, threads are greenlets, which start in
  a context of their own (greenlet >= 1.0); noted at report time.

These run only while the doctor is on; nothing here is installed otherwise.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from typing import Any

import wrapt

from ctxrelay import spans
from ctxrelay.doctor.callsite import call_site, frame_site
from ctxrelay.doctor.recorder import Recorder, Start
from ctxrelay.runners import _thread_roles

__all__ = ["gevent_findings", "note_running_threads", "watch_foreign_threads"]

_watching = False


def note_running_threads(recorder: Recorder) -> None:
    """Threads alive now that ctxrelay did not start: they run without a carried context."""
    here = threading.current_thread()
    frames = sys._current_frames()
    for thread in threading.enumerate():
        if thread is here or thread is threading.main_thread():
            continue
        if isinstance(thread, threading._DummyThread):
            kind = "foreign_thread"
        elif _thread_roles.is_exempt(thread):
            continue  # the OpenTelemetry SDK's own threads: never carried, on purpose
        else:
            kind = "before_activation"
        target = thread.__dict__.get("_target")
        recorder.note_start(
            Start(
                kind,
                frame_site(frames.get(thread.ident)) if thread.ident else None,
                spans.callable_name(target) if target is not None else None,
                thread.name[: spans.MAX_ATTRIBUTE_LENGTH],
                detail="running when ctxrelay started",
            )
        )
    del frames


def watch_foreign_threads(recorder: Recorder) -> None:
    """Note each dummy thread's first ``current_thread()`` call site (once per process)."""
    global _watching
    if _watching:
        return
    _watching = True

    def noting(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = wrapped(*args, **kwargs)
        try:
            variables = len(contextvars.copy_context())
            recorder.note_start(
                Start(
                    "foreign_thread",
                    call_site(),
                    None,
                    str(getattr(instance, "name", ""))[: spans.MAX_ATTRIBUTE_LENGTH],
                    carried=variables > 0,
                    detail="first seen through threading.current_thread()",
                )
            )
        except Exception:
            pass
        return result

    try:
        wrapt.wrap_function_wrapper(threading, "_DummyThread.__init__", noting)
    except Exception:
        _watching = False


def gevent_findings() -> list[Start]:
    """One finding if gevent has replaced ``threading``: every "thread" is a greenlet."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return []
    try:
        patched = bool(monkey.is_module_patched("threading"))
    except Exception:
        return []
    if not patched:
        return []
    return [
        Start(
            "greenlet",
            None,
            detail="gevent monkey-patched threading: threads are greenlets, and each "
            "greenlet starts in a context of its own",
        )
    ]
