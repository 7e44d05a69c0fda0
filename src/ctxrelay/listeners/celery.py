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

from ctxrelay.listeners import _dispatch
from ctxrelay.patching import Patch

NAME = "celery"
_MODULE = "celery.utils.dispatch.signal"
_no_receivers: list[object] = []  # Celery's NO_RECEIVERS marker, read when Celery loads


def _remember_marker(module: Any) -> None:
    _no_receivers[:] = [module.NO_RECEIVERS]


def _sender(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("sender")


def _has_listeners(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if not signal.receivers:
        return False
    marker = _no_receivers[0] if _no_receivers else None
    return marker is None or signal.sender_receivers_cache.get(_sender(signal, args, kwargs)) is not marker


def _event(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    name = getattr(signal, "name", None)
    return name if isinstance(name, str) and name else _dispatch.module_attribute_name(signal, "Signal")


BUS = _dispatch.Bus(
    NAME,
    event=_event,
    has_listeners=_has_listeners,
    sender=_sender,
    payload=lambda signal, args, kwargs: {k: v for k, v in kwargs.items() if k != "sender"},
    pairs=True,
)

PATCHES = (
    Patch(NAME, _MODULE, "Signal.send", _dispatch.dispatching(BUS), on_apply=_remember_marker),
    Patch(NAME, _MODULE, "Signal.send_robust", _dispatch.dispatching(BUS)),
    Patch(NAME, _MODULE, "Signal._live_receivers", _dispatch.listeners_from(NAME)),
)
