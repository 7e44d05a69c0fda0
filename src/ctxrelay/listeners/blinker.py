"""blinker ``Signal.send`` / ``send_async`` (Flask's signals): a span per send and per receiver.

Read against blinker 1.9.0 (``blinker/base.py``).

``send`` and ``send_async`` loop over ``self.receivers_for(sender)`` (a generator that
drops dead weak receivers as it goes) and return ``[(receiver, result), ...]``; a
receiver's exception propagates and ends the loop.  ``receivers_for`` is the hook that
sees each receiver: during a send it yields call-through proxies, and the result list
gets the receivers themselves back.  Async receivers in ``send`` go through the caller's
``_async_wrapper`` (Flask: ``ensure_sync``), which receives the proxy; its span lasts
until the coroutine finishes.
"""

from __future__ import annotations

from typing import Any

from ctxrelay.listeners import _dispatch
from ctxrelay.patching import Patch

NAME = "blinker"
_PRIVATE = ("_async_wrapper", "_sync_wrapper")


def _sender(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else None


def _has_listeners(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return not signal.is_muted and signal.has_receivers_for(_sender(signal, args, kwargs))


def _event(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    name = getattr(signal, "name", None)  # NamedSignal; anonymous signals by their binding
    return (
        name
        if isinstance(name, str)
        else _dispatch.module_attribute_name(signal, type(signal).__name__)
    )


BUS = _dispatch.Bus(
    NAME,
    event=_event,
    has_listeners=_has_listeners,
    sender=_sender,
    payload=lambda signal, args, kwargs: {k: v for k, v in kwargs.items() if k not in _PRIVATE},
    pairs=True,
)

PATCHES = (
    Patch(NAME, "blinker.base", "Signal.send", _dispatch.dispatching(BUS)),
    Patch(NAME, "blinker.base", "Signal.send_async", _dispatch.dispatching_async(BUS)),
    Patch(NAME, "blinker.base", "Signal.receivers_for", _dispatch.listeners_from(NAME)),
)
