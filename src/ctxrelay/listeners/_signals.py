"""What Django's dispatcher and Celery's fork of it share: senders, payloads, the cache.

Celery's ``celery/utils/dispatch/signal.py`` began as a copy of Django's
``django/dispatch/dispatcher.py``; both keep ``receivers``, a per-sender
``sender_receivers_cache`` and a module-level ``NO_RECEIVERS`` marker, and both take
``sender`` first.  The bus modules declare their hooks; this module reads the shape.
"""

from __future__ import annotations

from typing import Any


def sender(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("sender")


def payload(signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "sender"}


class ReceiverCache:
    """A dispatcher's own "nobody listens" fast path, without a second receiver lookup."""

    __slots__ = ("marker",)

    def __init__(self) -> None:
        self.marker: object | None = None

    def remember_marker(self, module: Any) -> None:
        """``on_apply``: read the module's ``NO_RECEIVERS`` marker once it is loaded."""
        self.marker = module.NO_RECEIVERS

    def has_listeners(self, signal: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if not signal.receivers:
            return False
        if self.marker is None:
            return True
        cached = signal.sender_receivers_cache.get(sender(signal, args, kwargs))
        return cached is not self.marker
