"""Celery signals (``celery.signals``): a span per ``send`` / ``send_robust`` and per receiver.

Read against Celery 5.7.0 (``celery/utils/dispatch/signal.py``), a fork of Django's
dispatcher: ``send`` returns early without receivers, loops over
``self._live_receivers(sender)`` (the hook that sees the receivers), and for a receiver
that raises logs ``'Signal handler %r raised: %r'`` and returns the exception as its
response.  ``send_robust = send`` is bound in the class body, so the alias is a second
attribute holding the same function and is patched separately.
"""

from __future__ import annotations

from typing import Any

from ctxrelay.listeners import _dispatch, _signals
from ctxrelay.patching import Patch

NAME = "celery"
_receivers = _signals.ReceiverCache()
_MODULE = "celery.utils.dispatch.signal"


def _event(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    name = getattr(signal, "name", None)
    return (
        name
        if isinstance(name, str) and name
        else _dispatch.module_attribute_name(signal, "Signal")
    )


#: Signals whose receivers set the context a task runs in (ctxrelay's Celery runner,
#: opentelemetry-instrumentation-celery): a dispatch span attached around them would
#: undo, when it ends, the OpenTelemetry context they set.  Not traced.
_SETS_TASK_CONTEXT = frozenset({"task_prerun", "task_postrun"})


def _has_listeners(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if getattr(signal, "name", None) in _SETS_TASK_CONTEXT:
        return False
    return _receivers.has_listeners(signal, args, kwargs)


BUS = _dispatch.Bus(
    NAME,
    event=_event,
    has_listeners=_has_listeners,
    sender=_signals.sender,
    payload=_signals.payload,
    pairs=True,
)

PATCHES = (
    Patch(
        NAME,
        _MODULE,
        "Signal.send",
        _dispatch.dispatching(BUS),
        on_apply=_receivers.remember_marker,
    ),
    Patch(NAME, _MODULE, "Signal.send_robust", _dispatch.dispatching(BUS)),
    Patch(NAME, _MODULE, "Signal._live_receivers", _dispatch.listeners_from(NAME)),
)
