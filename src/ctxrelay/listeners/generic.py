"""Dispatch spans for a bus ctxrelay does not know: :func:`trace_dispatch`.

The declaration is turned into the same :class:`~ctxrelay.patching.Patch` entries the
built-in buses use: applied at once if the module is imported and ctxrelay is
instrumented, else when the module is imported; removed by ``uninstrument()`` and put
back by the next ``instrument()`` (this module's ``PATCHES`` is in the table).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ctxrelay import patching
from ctxrelay.listeners import _dispatch
from ctxrelay.patching import Patch, Wrapper

__all__ = ["PATCHES", "trace_dispatch"]

#: Every declared patch, in declaration order (read by ``table.patches()``).
PATCHES: list[Patch] = []

EventSpec = int | str | Callable[[Any, tuple[Any, ...], dict[str, Any]], Any] | None


def _event_reader(event: EventSpec) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
    if callable(event):
        return event
    if isinstance(event, int):
        position = event
        return lambda instance, args, kwargs: args[position] if len(args) > position else "?"
    if isinstance(event, str):
        keyword = event
        return lambda instance, args, kwargs: kwargs.get(keyword, "?")

    def default(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = getattr(instance, "name", None)
        return name if isinstance(name, str) else type(instance).__name__

    return default


def _either(bus: _dispatch.Bus) -> Wrapper:
    """A dispatch wrapper for a method that may be sync or ``async def``."""
    sync, asynchronous = _dispatch.dispatching(bus), _dispatch.dispatching_async(bus)

    def dispatch_wrapper(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        chosen = asynchronous if inspect.iscoroutinefunction(wrapped) else sync
        return chosen(wrapped, instance, args, kwargs)

    return dispatch_wrapper


def trace_dispatch(
    module: str,
    dispatch: str,
    *,
    bus: str,
    event: EventSpec = None,
    listeners_from: str | None = None,
    listener_call: str | None = None,
    listener_position: int = 0,
    has_listeners: Callable[[Any, tuple[Any, ...], dict[str, Any]], bool] | None = None,
    payload: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any] | None = None,
    returns_pairs: bool = False,
) -> None:
    """Record a dispatch span around ``module.dispatch`` and a span per listener call.

    ``dispatch`` is a dotted attribute path in ``module`` (``"Bus.publish"``; sync or
    ``async def``).  ``bus`` names the bus in span names and in
    ``CTXRELAY_INCLUDE``/``_EXCLUDE``.  ``event`` names the event: an argument position
    (``self`` not counted), a keyword name, a ``(bus, args, kwargs) -> name`` function,
    or by default the bus object's ``name`` attribute or class name.

    Per-listener spans need one hook the bus calls during the dispatch (both are
    attribute paths in ``module``; without either, only the dispatch span is recorded):

    * ``listeners_from``: a method of the same object returning the listeners (a list,
      a tuple of lists or an iterator); during the dispatch it returns call-through
      proxies that compare, hash and ``repr`` as the listeners.  With
      ``returns_pairs=True`` a dispatch result ``[(listener, value), ...]`` gets the
      listeners themselves back.
    * ``listener_call``: a method of the same object given one listener at argument
      ``listener_position`` to call or schedule (it receives the proxy; the span is
      recorded where and when the listener really runs).

    ``has_listeners(bus, args, kwargs)`` lets a dispatch nobody listens to skip all
    span work; ``payload(bus, args, kwargs)`` is what ``CTXRELAY_RECORD_PAYLOADS=1``
    may describe (bounded repr); without it nothing of the arguments is recorded.

    Call it before ``ctxrelay.instrument()`` or after: it takes effect at once when
    instrumented (whatever ``include``/``exclude`` chose), otherwise at the next
    ``instrument()``.
    """
    spec = _dispatch.Bus(
        bus,
        event=_event_reader(event),
        has_listeners=has_listeners,
        payload=payload,
        pairs=returns_pairs,
    )
    declared = [Patch(bus, module, dispatch, _either(spec))]
    if listeners_from is not None:
        declared.append(Patch(bus, module, listeners_from, _dispatch.listeners_from(bus)))
    if listener_call is not None:
        declared.append(
            Patch(bus, module, listener_call, _dispatch.listener_argument(bus, listener_position))
        )
    # Declaring the same hook twice must not stack two wrappers (nested spans).
    known = {(p.name, p.module, p.path) for p in PATCHES}
    declared = [p for p in declared if (p.name, p.module, p.path) not in known]
    PATCHES.extend(declared)
    if declared and patching.active():
        patching.apply(declared)
