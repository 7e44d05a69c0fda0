"""Griptape ``EventBus``: a span per ``publish_event`` and per listener it reaches.

Read against griptape 1.13.0 (``griptape/events/event_bus.py``, ``event_listener.py``).

``_EventBus.publish_event`` loops over ``self.event_listeners`` (a ContextVar) and calls
each ``EventListener.publish_event(event, flush=...)``, which filters by
``event_types``, calls ``on_event`` and then, if set, ``event_listener_driver.publish_event``.
A listener that raises stops the loop and the exception reaches the publisher.

The dispatch span is skipped when no listener accepts the event type: griptape
publishes an event per streamed chunk, and listeners usually filter.
"""

from __future__ import annotations

from typing import Any

from ctxrelay import attributes
from ctxrelay.listeners import _dispatch
from ctxrelay.patching import Patch

NAME = "griptape"


def _event(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("event")


def _accepts(listener: Any, event: Any) -> bool:
    # The same test EventListener.publish_event makes before calling anything.
    types = listener.event_types
    return types is None or any(isinstance(event, t) for t in types)


def _has_listeners(bus: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    event = _event(args, kwargs)
    return any(_accepts(listener, event) for listener in bus.event_listeners)


def _listener_of(listener: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _accepts(listener, _event(args, kwargs)):
        return None  # not delivered: no span (a flush-only call stays unrecorded)
    if listener.on_event is not None:
        return listener.on_event
    driver = listener.event_listener_driver
    return None if driver is None else type(driver).publish_event


def _driver_attributes(listener: Any) -> dict[str, Any] | None:
    driver = listener.event_listener_driver
    return (
        None if driver is None else {attributes.ATTR_LISTENER_DRIVER: _dispatch.type_name(driver)}
    )


BUS = _dispatch.Bus(
    NAME,
    event=lambda bus, args, kwargs: type(_event(args, kwargs)).__name__,
    has_listeners=_has_listeners,
    payload=lambda bus, args, kwargs: _event(args, kwargs),
)

PATCHES = (
    Patch(NAME, "griptape.events.event_bus", "_EventBus.publish_event", _dispatch.dispatching(BUS)),
    Patch(
        NAME,
        "griptape.events.event_listener",
        "EventListener.publish_event",
        _dispatch.listener_call(NAME, _listener_of, _driver_attributes),
    ),
)
