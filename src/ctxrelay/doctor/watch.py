"""The doctor's own observation points: starts that no hand-over patch sees.

Read against ``Lib/threading.py`` of CPython 3.10-3.13.

* Threads already running when the doctor starts (started before ctxrelay was
  activated): listed once, with where each one is now (``sys._current_frames()``).
* Foreign threads: ``threading.current_thread()`` in a thread that ``threading`` did not
  start (a C library's callback thread, ``_thread`` with ctxrelay's ``_thread`` runner
  excluded, a thread started around the patches) creates a ``threading._DummyThread``.
  Its ``__init__`` is wrapped to note where that first happened and whether the thread
  had any context at all.  The wrapper only reads; the dummy is made as before.
* gevent greenlets spawned directly (``gevent.spawn``, ``Greenlet.start``, a gevent
  ``Pool``'s ``spawn``): each starts in a context of its own (greenlet >= 1.0), so
  nothing is carried into it.  gevent calls its spawn callbacks
  (``Greenlet.add_spawn_callback``, gevent >= 1.4; read in gevent 26.9
  ``greenlet.py``) in the spawner, from ``Greenlet.start()``: the doctor notes the
  call site there.  Greenlets that are threads (``threading`` monkey-patched) are left
  to the thread runners, which carry them.  Raw ``greenlet.greenlet`` objects and
  ``gevent.spawn_raw`` have no such callback and are not seen.

These run only while the doctor is on; nothing here is installed otherwise.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
from types import ModuleType
from typing import Any

import wrapt

from ctxrelay import imports, relay, spans
from ctxrelay.doctor.callsite import call_site, frame_site, on_stack, skip_package
from ctxrelay.doctor.recorder import Recorder, Start
from ctxrelay.runners import _thread_roles

__all__ = ["note_running_threads", "watch_foreign_threads", "watch_greenlets"]

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


_GEVENT_GREENLET = "gevent.greenlet"
_GEVENT_THREAD = os.path.join("gevent", "thread.py")
_THREAD_STARTS = frozenset({"start_new_thread", "_start_new_greenlet"})


def watch_greenlets(recorder: Recorder) -> None:
    """Note where each gevent ``Greenlet`` is spawned, now or once gevent is imported."""

    def spawned(greenlet: Any) -> None:
        # Called by Greenlet.start() (spawn, spawn_later, a Pool's spawn), in the spawner.
        try:
            if _started_as_thread():
                return  # threading under monkey-patching: the thread runners' hand-over
            run: Any = getattr(greenlet, "_run", None)
            # A greenlet starts in a context of its own unless one was given to it.
            carried = isinstance(run, relay._Bound) or greenlet.gr_context is not None
            if isinstance(run, relay._Bound):
                run = run.fn  # named after the user's function, as a hop span is
            function = spans.callable_name(run) if run is not None else type(greenlet).__qualname__
            recorder.note_counted("greenlet", call_site(), function, carried=carried)
        except Exception:
            pass

    def install(module: ModuleType) -> None:
        add = getattr(getattr(module, "Greenlet", None), "add_spawn_callback", None)
        if add is None:  # gevent < 1.4
            return
        gevent = sys.modules.get("gevent")
        if gevent is not None:
            skip_package(gevent)  # the call site is the caller of spawn(), not gevent's pool
        add(spawned)

    imports.watch(_GEVENT_GREENLET, install)
    module = sys.modules.get(_GEVENT_GREENLET)
    if module is not None and not imports.initializing(module):
        install(module)


def _started_as_thread() -> bool:
    """True when gevent's ``start_new_thread`` (threading's start, monkey-patched) spawns."""
    return on_stack(_THREAD_STARTS, _GEVENT_THREAD, 14)
