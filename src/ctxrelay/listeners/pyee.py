"""pyee ``EventEmitter.emit``: a span per emit and per handler, where the handler runs.

Read against pyee 13.0.1 (``pyee/base.py``, ``executor.py``, ``asyncio.py``).

``emit`` -> ``_call_handlers`` copies the handlers under a lock and calls
``self._emit_run(f, args, kwargs)`` once per handler; each emitter class overrides
``_emit_run``: the base calls ``f`` (an exception propagates out of ``emit``),
``ExecutorEventEmitter`` submits ``f`` to its pool (an exception is re-emitted as
``"error"`` from the pool thread), ``AsyncIOEventEmitter`` calls ``f`` and schedules a
returned coroutine (exceptions are emitted as ``"error"``).  Wrapping the ``f`` given
to ``_emit_run`` times each handler where it really runs: in the pool thread (under the
hop span of the pool patch) or in its asyncio task.  ``emit`` with no handler is not
recorded (an unhandled ``"error"`` still raises as before).

``TrioEventEmitter``/``TwistedEventEmitter`` override ``_emit_run`` too and are not
patched: their emits get a dispatch span without listener spans.
"""

from __future__ import annotations

from typing import Any

from ctxrelay.listeners import _dispatch
from ctxrelay.patching import Patch

NAME = "pyee"


def _event(emitter: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("event")


def _has_listeners(emitter: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return bool(emitter._events.get(_event(emitter, args, kwargs)))


BUS = _dispatch.Bus(
    NAME,
    event=_event,
    has_listeners=_has_listeners,
    payload=lambda emitter, args, kwargs: (args[1:], kwargs),
)

_RUN = _dispatch.listener_argument(NAME, 0)

PATCHES = (
    Patch(NAME, "pyee.base", "EventEmitter.emit", _dispatch.dispatching(BUS)),
    Patch(NAME, "pyee.base", "EventEmitter._emit_run", _RUN),
    Patch(NAME, "pyee.executor", "ExecutorEventEmitter._emit_run", _RUN),
    Patch(NAME, "pyee.asyncio", "AsyncIOEventEmitter._emit_run", _RUN),
)
