"""Django ``Signal.send``, ``send_robust``, ``asend``, ``asend_robust``: a span per send and receiver.

Read against Django 5.2 (``django/dispatch/dispatcher.py``); 4.2 has no ``asend`` and
its ``_live_receivers`` returns one list, which is handled the same way.

Each send returns early when ``not self.receivers`` or the sender is cached as having
none (``pre_init``/``post_init`` fire for every model instance: no span then), then
calls ``self._live_receivers(sender)`` once - the hook that sees the receivers.  Sync
receivers run in the loop (``asend``: in one ``sync_to_async`` thread, which copies the
context), async ones through ``asyncio.gather``.  ``send`` lets an exception end the
loop; ``send_robust`` logs it and returns it as that receiver's response.  Results
``[(receiver, response), ...]`` get the receivers themselves back.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from ctxrelay.listeners import _dispatch
from ctxrelay.patching import Patch

NAME = "django"
_MODULE = "django.dispatch.dispatcher"
_no_receivers: list[object] = []  # Django's NO_RECEIVERS marker, read when Django loads


def _remember_marker(module: Any) -> None:
    _no_receivers[:] = [module.NO_RECEIVERS]


def _sender(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("sender")


def _has_listeners(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # Django's own fast path, without calling _live_receivers a second time.
    if not signal.receivers:
        return False
    marker = _no_receivers[0] if _no_receivers else None
    return marker is None or signal.sender_receivers_cache.get(_sender(signal, args, kwargs)) is not marker


def _has_asend() -> bool:
    try:
        return int(metadata.version("django").split(".")[0]) >= 5
    except (metadata.PackageNotFoundError, ValueError):
        return False


BUS = _dispatch.Bus(
    NAME,
    event=lambda signal, args, kwargs: _dispatch.module_attribute_name(signal, type(signal).__name__),
    has_listeners=_has_listeners,
    sender=_sender,
    payload=lambda signal, args, kwargs: {k: v for k, v in kwargs.items() if k != "sender"},
    pairs=True,
)

PATCHES = (
    Patch(NAME, _MODULE, "Signal.send", _dispatch.dispatching(BUS), on_apply=_remember_marker),
    Patch(NAME, _MODULE, "Signal.send_robust", _dispatch.dispatching(BUS)),
    Patch(NAME, _MODULE, "Signal.asend", _dispatch.dispatching_async(BUS), applies=_has_asend),
    Patch(NAME, _MODULE, "Signal.asend_robust", _dispatch.dispatching_async(BUS), applies=_has_asend),
    Patch(NAME, _MODULE, "Signal._live_receivers", _dispatch.listeners_from(NAME)),
)
