"""Other tools that replace, after ctxrelay, what ctxrelay wrapped.

gevent's ``monkey.patch_all()`` (``patch_thread()``) replaces ``threading``'s thread-start
function with its own greenlet spawner: ctxrelay's wrapper, which captures the starter's
context, is gone, and threads (greenlets) silently stop carrying.  gevent announces each
patch on ``gevent.events.subscribers`` (read in gevent 26.9: ``monkey/_util.py``,
``monkey/_patch_thread_common.py``); ctxrelay subscribes as soon as ``gevent.events`` is
imported and wraps the replacement (:func:`ctxrelay.patching.refresh`).  In the other
order (``patch_all()`` first, ctxrelay after) ctxrelay simply wraps gevent's function.

pydevd (debugpy, PyCharm) does the same when a debugger starts listening or attaches:
``_pydev_bundle.pydev_monkey.patch_thread_module`` replaces the thread-start function
with one that calls the previous one (ctxrelay's wrapper) with its own startup object
instead of the thread's ``_bootstrap`` (read in debugpy 1.8.22's vendored pydevd), so
ctxrelay no longer recognises the thread.  ``patch_thread_module`` is wrapped here to
wrap, in turn, what it installed.

OpenTelemetry's threading instrumentor (``opentelemetry-instrument`` turns it on beside
ctxrelay) hands ``ThreadPoolExecutor.submit`` a closure of its own, ``wrapped_func``,
that attaches the submitter's OpenTelemetry context and calls the user's function (read
in opentelemetry-instrumentation-threading 0.66b1).  When its wrapper is outside
ctxrelay's, the pool hop would be named after that closure: it is named after the
function the closure holds instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from ctxrelay import attributes, imports, patching

__all__ = ["watch"]

logger = logging.getLogger("ctxrelay")

_GEVENT_EVENTS = "gevent.events"
_THREAD_MODULES = ("thread", "threading", "_thread")
_PYDEVD = "_pydev_bundle.pydev_monkey"

attributes.name_hops_after(
    "opentelemetry.instrumentation.threading."
    "ThreadingInstrumentor.__wrap_thread_pool_submit.<locals>.wrapped_func",
    cell="original_func",
)


def watch(runner: str) -> None:
    """Follow gevent and pydevd, now or when they are imported (``runner``: threads' name)."""
    imports.watch(_GEVENT_EVENTS, _subscribe)
    module = sys.modules.get(_GEVENT_EVENTS)
    if module is not None and not imports.initializing(module):
        _subscribe(module)
    patching.apply([patching.Patch(runner, _PYDEVD, "patch_thread_module", _refresh_after)])


def _refresh_after(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        patching.refresh("threading")
    except Exception:
        logger.debug("ctxrelay: could not follow pydevd's patching", exc_info=True)
    return result


def _subscribe(events: Any) -> None:
    subscribers = getattr(events, "subscribers", None)
    if isinstance(subscribers, list) and _on_gevent_event not in subscribers:
        subscribers.append(_on_gevent_event)


def _on_gevent_event(event: Any) -> None:
    """gevent patched a module: wrap again what it replaced (never raises into gevent)."""
    try:
        name = getattr(event, "module_name", None)
        if name in _THREAD_MODULES or type(event).__name__ == "GeventDidPatchAllEvent":
            if patching.active():
                patching.refresh("threading")
    except Exception:
        logger.debug("ctxrelay: could not follow gevent's patching", exc_info=True)
