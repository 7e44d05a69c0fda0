"""Django ``Signal.send``, ``send_robust``, ``asend``, ``asend_robust``: spans per send, receiver.

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

import sys

from ctxrelay.listeners import _dispatch, _signals
from ctxrelay.patching import Patch

NAME = "django"
_receivers = _signals.ReceiverCache()
_MODULE = "django.dispatch.dispatcher"


def _has_asend() -> bool:
    # Asked by the table when the module is imported or at instrument(); no
    # distribution-metadata lookup (importlib.metadata is slow to import and to ask).
    module = sys.modules.get(_MODULE)
    return module is None or hasattr(getattr(module, "Signal", None), "asend")


BUS = _dispatch.Bus(
    NAME,
    event=lambda signal, args, kwargs: _dispatch.module_attribute_name(
        signal, type(signal).__name__
    ),
    has_listeners=_receivers.has_listeners,
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
    Patch(NAME, _MODULE, "Signal.asend", _dispatch.dispatching_async(BUS), applies=_has_asend),
    Patch(
        NAME, _MODULE, "Signal.asend_robust", _dispatch.dispatching_async(BUS), applies=_has_asend
    ),
    Patch(NAME, _MODULE, "Signal._live_receivers", _dispatch.listeners_from(NAME)),
)
