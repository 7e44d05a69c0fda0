"""Listener-dispatch spans: the one place they are recorded.  Every bus module calls this.

One *dispatch* span per publish/send/emit, and one *listener* span per listener call,
child of the dispatch span (names and keys: :mod:`ctxrelay.attributes`, docs/listeners.md).
A bus module only declares where to hook, with the wrapper factories below:

* :func:`dispatching` / :func:`dispatching_async` go around the dispatch method.  The
  dispatch span is current while the bus runs, and the dispatch is published in a
  ContextVar so the listener hooks below can find it (also from a thread that
  ``sync_to_async`` or ctxrelay carried the context into).
* one listener hook, depending on what the bus's loop offers:

  - :func:`listeners_from` - a method returning the listeners (blinker
    ``receivers_for``, Django/Celery ``_live_receivers``): each listener it returns
    during the dispatch becomes a call-through proxy (:class:`Traced`) for the
    dispatch only.  Wrapping at call time, not at ``connect``, keeps ``disconnect``,
    weak references and the bus's own bookkeeping on the user's function.
  - :func:`listener_argument` - a method called once per listener with the listener as
    an argument (pyee ``_emit_run``): the argument becomes the proxy, so a call that
    happens later in a pool thread or an asyncio task is still timed where it runs.
  - :func:`listener_call` - a method that *is* the per-listener call (griptape
    ``EventListener.publish_event``, PyPubSub ``Listener.__call__``): the span goes
    around it.

Guarantees: each listener runs exactly once, in the bus's order, with the bus's
arguments; its exception reaches the bus unchanged (so the bus stops, collects or logs
exactly as it does without ctxrelay); return values are unchanged (results listing
``(listener, value)`` pairs get the user's listeners back, not proxies).  Span
bookkeeping never raises into the application: on any internal failure the listener
or dispatch simply runs without a span.

When no span is recorded: listener spans switched off (one flag check, nothing else);
instrumentation suppressed; an unsampled current span; or a bus with no listener for
this event (each bus's cheap ``has_listeners`` check: Django's ``pre_init`` fires for
every model instance, griptape publishes an event per streamed token).  With **no
active span** a dispatch span is recorded as a new root: a dispatch with listeners is a
meaningful unit on its own (a Celery worker signal, a Django signal in a management
command), unlike a thread hop, which is only a step inside a trace.

Payloads (event objects, signal arguments, message data) are described on the
dispatch span only when ``record_payloads`` is on, as a bounded ``repr``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from ctxrelay import attributes as keys
from ctxrelay import spans
from ctxrelay.listeners._describe import describe, module_attribute_name, text, type_name
from ctxrelay.otel_fast import parent_allows
from ctxrelay.patching import Wrapper
from ctxrelay.spans import end_span, settings

if TYPE_CHECKING:
    import wrapt
else:  # see ctxrelay.lean_imports: wrapt without its unused helpers' imports
    from ctxrelay import lean_imports

    wrapt = lean_imports.load("wrapt", lean_imports.WRAPT)

__all__ = [
    "Bus",
    "Dispatch",
    "Traced",
    "current",
    "describe",
    "dispatching",
    "dispatching_async",
    "listener_argument",
    "listener_call",
    "listeners_from",
    "module_attribute_name",
    "type_name",
]

T = TypeVar("T")
Reader = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]

#: The innermost dispatch being recorded in this context; None while a listener runs,
#: so that a listener's own calls are never mistaken for the bus's loop.
_current: ContextVar[Dispatch | None] = ContextVar("ctxrelay.dispatch", default=None)


@dataclass(frozen=True)
class Bus:
    """How to read one bus's dispatch call ``(instance, args, kwargs)``.

    ``event`` names the event or signal (span name, ``ctxrelay.event``);
    ``has_listeners`` is a cheap check that skips all span work when nobody listens;
    ``sender`` gives the object whose *type* becomes ``ctxrelay.sender``; ``payload``
    what ``record_payloads`` may describe; ``pairs``: the dispatch returns a list of
    ``(listener, value)`` pairs (blinker, Django, Celery).
    """

    name: str
    event: Reader
    has_listeners: Reader | None = None
    sender: Reader | None = None
    payload: Reader | None = None
    pairs: bool = False


class Dispatch:
    """One publish/send/emit being recorded: its span and how many listeners it reached."""

    __slots__ = ("bus", "claimed", "context", "count", "event", "owner", "span")

    def __init__(self, bus: str, event: str, owner: Any, span: Span) -> None:
        self.bus = bus
        self.event = event
        self.owner = owner
        self.span = span
        #: the dispatch span as a context: the parent of listener spans that run where
        #: no span is current (a pool thread nobody carried the context into).
        self.context = trace.set_span_in_context(span)
        self.count = 0
        self.claimed = False

    def traced(self, listener: Any) -> Any:
        """``listener`` as a :class:`Traced` proxy for this dispatch (counted once)."""
        if type(listener) is Traced or not callable(listener):
            return listener
        try:
            proxy = Traced(listener, self, self.count)
        except Exception:  # pragma: no cover - defensive: an object wrapt cannot proxy
            return listener
        self.count += 1
        return proxy

    def call(
        self,
        fn: Callable[..., T],
        index: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        named: Any = None,
        attributes: dict[str, Any] | None = None,
    ) -> T:
        """Run one listener call under its span; ``named`` is what the span names.

        A call that returns a coroutine (an ``async def`` listener) keeps its span open
        until the coroutine finishes: the coroutine handed back awaits the original
        inside the span, so the bus awaits or schedules it exactly as before.
        """
        started = self._start(fn if named is None else named, index, attributes)
        if started is None:
            return fn(*args, **kwargs)
        span, token, var_token = started
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            spans.record_failure(span, exc)
            _close(token, var_token)
            end_span(span)
            # A kept traceback keeps this frame: let go of the span and the tokens.
            del started, span, token, var_token
            raise
        _close(token, var_token)
        if inspect.iscoroutine(result):
            return _finish_later(span, result)  # type: ignore[return-value]
        end_span(span)
        return result

    def _start(
        self, fn: Any, index: int, attributes: dict[str, Any] | None
    ) -> tuple[Span, object, Token[Dispatch | None]] | None:
        try:
            # Where no span is current (a pool thread the context was not carried
            # into), hang the listener under the dispatch rather than start a trace.
            current_context = trace.get_current_span().get_span_context()
            parent = None if current_context.is_valid else self.context
            thread = threading.current_thread()
            attrs: dict[str, Any] = {
                keys.ATTR_BUS: self.bus,
                keys.ATTR_EVENT: self.event,
                keys.CODE_FUNCTION_NAME: keys.callable_name(fn),
                keys.ATTR_LISTENER_INDEX: index,
                keys.THREAD_ID: thread.ident,
                keys.THREAD_NAME: thread.name[: keys.MAX_ATTRIBUTE_LENGTH],
            }
            if attributes:
                attrs.update(attributes)
            name = keys.LISTENER_SPAN.format(bus=self.bus, listener=keys.short_name(fn))
            span = settings.tracer.start_span(
                name, context=parent, kind=SpanKind.INTERNAL, attributes=attrs
            )
            token = otel_context.attach(trace.set_span_in_context(span))
            return span, token, _current.set(None)
        except Exception:  # pragma: no cover - defensive: the listener runs, unrecorded
            return None


class Traced(wrapt.ObjectProxy):
    """A listener for the length of one dispatch: calls it once under a listener span.

    Everything else (``==``, ``hash``, ``repr``, ``__qualname__``, ``__code__`` for
    ``iscoroutinefunction``) is the listener's own, so a bus that logs, compares or
    inspects it sees the user's function.
    """

    def __init__(self, wrapped: Any, dispatch: Dispatch, index: int) -> None:
        super().__init__(wrapped)
        self._self_dispatch = dispatch
        self._self_index = index

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        # Positional-only ``self``: a listener may take a ``self`` keyword.
        return self._self_dispatch.call(self.__wrapped__, self._self_index, args, kwargs)

    def __repr__(self) -> str:
        # ObjectProxy's repr names the proxy; Celery logs receivers with %r.
        return repr(self.__wrapped__)


def _close(token: object, var_token: Token[Dispatch | None]) -> None:
    try:
        _current.reset(var_token)
    except (ValueError, RuntimeError):  # pragma: no cover - reset from another context
        pass
    otel_context.detach(token)  # type: ignore[arg-type]  # logs, never raises


async def _finish_later(span: Span, coroutine: Coroutine[Any, Any, T]) -> T:
    """Await an async listener inside its span, in whatever task the bus runs it."""
    token = otel_context.attach(trace.set_span_in_context(span))
    var_token = _current.set(None)
    try:
        return await coroutine
    except BaseException as exc:
        spans.record_failure(span, exc)
        raise
    finally:
        _close(token, var_token)
        end_span(span)


# --- the dispatch span ----------------------------------------------------------------


def current(bus: str | None = None) -> Dispatch | None:
    """The dispatch being recorded here (of ``bus``, if given), else None."""
    dispatch = _current.get()
    if dispatch is None or (bus is not None and dispatch.bus != bus):
        return None
    return dispatch


_Started = tuple[Dispatch, object, Token[Dispatch | None]]

#: ``observer(bus, traced)``: told of each dispatch that has listeners, after the span
#: decision (the doctor counts them); None when nothing observes.
_observer: Callable[[str, bool], None] | None = None


def set_observer(observer: Callable[[str, bool], None] | None) -> None:
    """Have ``observer`` told of each dispatch with listeners from now on (None: stop)."""
    global _observer
    _observer = observer


def _begin(
    bus: Bus, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _Started | None:
    try:
        if bus.has_listeners is not None and not bus.has_listeners(instance, args, kwargs):
            return None
        # A dispatch is meaningful on its own: a root span when no span is active.
        # The sampled flag, not is_recording(): a parent that already ended (an asyncio
        # done-callback that emits after its dispatch returned) is sampled yet not recording.
        allowed = parent_allows(root=True)
        if _observer is not None:
            try:
                _observer(bus.name, allowed)
            except Exception:
                pass
        if not allowed:
            return None
        event = text(bus.event(instance, args, kwargs))
        thread = threading.current_thread()
        attributes: dict[str, Any] = {
            keys.ATTR_BUS: bus.name,
            keys.ATTR_EVENT: event,
            keys.THREAD_ID: thread.ident,
            keys.THREAD_NAME: thread.name[: keys.MAX_ATTRIBUTE_LENGTH],
        }
        if bus.sender is not None:
            sender = bus.sender(instance, args, kwargs)
            if sender is not None:
                attributes[keys.ATTR_SENDER] = type_name(sender)
        if settings.record_payloads and bus.payload is not None:
            attributes[keys.ATTR_PAYLOAD] = describe(bus.payload(instance, args, kwargs))
        name = keys.DISPATCH_SPAN.format(bus=bus.name, event=event)
        span = settings.tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
        dispatch = Dispatch(bus.name, event, instance, span)
        return dispatch, otel_context.attach(dispatch.context), _current.set(dispatch)
    except Exception:  # pragma: no cover - defensive: the dispatch runs, unrecorded
        return None


def _finish(started: _Started, exc: BaseException | None) -> None:
    dispatch, token, var_token = started
    try:
        _close(token, var_token)
        span = dispatch.span
        span.set_attribute(keys.ATTR_LISTENERS, dispatch.count)
        if exc is not None:
            spans.record_failure(span, exc)
    except Exception:  # pragma: no cover - defensive
        pass
    end_span(dispatch.span)


def _restore_pairs(result: Any) -> Any:
    """Give ``[(listener, value), ...]`` back the user's listeners instead of proxies."""
    if type(result) is list:
        for i, item in enumerate(result):
            if type(item) is tuple and len(item) == 2 and type(item[0]) is Traced:
                result[i] = (item[0].__wrapped__, item[1])
    return result


class _Hidden:
    """The ``with`` form of "hide an outer dispatch from this one's listener hooks".

    A context copied during a dispatch (an asyncio done-callback) still names it; an
    unrecorded dispatch of the same bus inside must not add its listeners to it.
    """

    __slots__ = ("token",)

    def __enter__(self) -> None:
        self.token = _current.set(None) if _current.get() is not None else None

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _current.reset(self.token)


class _Recorded:
    """The ``with`` form of a recorded dispatch: ends its span with the outcome."""

    __slots__ = ("started",)

    def __init__(self, started: _Started) -> None:
        self.started = started

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        _finish(self.started, exc)
        self.started = None  # type: ignore[assignment]  # a kept traceback must not pin it


def _outcome(
    bus: Bus, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _Hidden | _Recorded:
    """What a dispatch runs under: recorded (a dispatch span) or hidden from an outer one."""
    started = _begin(bus, instance, args, kwargs)
    return _Hidden() if started is None else _Recorded(started)


def dispatching(bus: Bus) -> Wrapper:
    """Wrapper for a synchronous dispatch method: the dispatch span around it."""

    def dispatch_wrapper(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not settings.listeners:
            return wrapped(*args, **kwargs)
        with _outcome(bus, instance, args, kwargs):
            result = wrapped(*args, **kwargs)
        return _restore_pairs(result) if bus.pairs else result

    return dispatch_wrapper


def dispatching_async(bus: Bus) -> Wrapper:
    """Wrapper for an ``async def`` dispatch method (blinker ``send_async``, Django ``asend``).

    The original coroutine is created at call time, as without ctxrelay (a bad call
    still fails at the call); the span starts when it is awaited, in the awaiting task.
    """

    def dispatch_wrapper(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        coroutine = wrapped(*args, **kwargs)
        if not settings.listeners or not inspect.iscoroutine(coroutine):
            return coroutine
        return _dispatch_async(bus, coroutine, instance, args, kwargs)

    return dispatch_wrapper


async def _dispatch_async(
    bus: Bus,
    coroutine: Coroutine[Any, Any, T],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    with _outcome(bus, instance, args, kwargs):
        result = await coroutine
    return _restore_pairs(result) if bus.pairs else result


# --- listener hooks -------------------------------------------------------------------


def _traced_all(dispatch: Dispatch, listeners: Any) -> Any:
    if type(listeners) is list:
        return [dispatch.traced(listener) for listener in listeners]
    if type(listeners) is tuple:  # Django 5: (sync_receivers, async_receivers)
        return tuple(_traced_all(dispatch, part) for part in listeners)
    if isinstance(listeners, Iterator):
        return _traced_iter(dispatch, listeners)
    return listeners


def _traced_iter(dispatch: Dispatch, listeners: Iterable[Any]) -> Iterator[Any]:
    # Lazily, like the original generator: blinker disconnects dead weak receivers as
    # it goes, and a receiver connected during the loop is seen or not as before.
    for listener in listeners:
        yield dispatch.traced(listener)


def listeners_from(bus: str) -> Wrapper:
    """Wrapper for the method that returns the listeners of a dispatch.

    Only the first call made by the bus's own dispatch of the same object is traced;
    any other caller (``has_listeners``, the user) gets the plain listeners.
    """

    def listeners_wrapper(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = wrapped(*args, **kwargs)
        if not settings.listeners:
            return result
        dispatch = _current.get()
        if (
            dispatch is None
            or dispatch.bus != bus
            or dispatch.owner is not instance
            or dispatch.claimed
        ):
            return result
        dispatch.claimed = True
        try:
            return _traced_all(dispatch, result)
        except Exception:  # pragma: no cover - defensive
            return result

    return listeners_wrapper


def listener_argument(bus: str, position: int) -> Wrapper:
    """Wrapper for a method given one listener at ``args[position]`` to call or schedule."""

    def argument_wrapper(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not settings.listeners:
            return wrapped(*args, **kwargs)
        dispatch = _current.get()
        if (
            dispatch is None
            or dispatch.bus != bus
            or dispatch.owner is not instance
            or len(args) <= position
        ):
            return wrapped(*args, **kwargs)
        args = (*args[:position], dispatch.traced(args[position]), *args[position + 1 :])
        return wrapped(*args, **kwargs)

    return argument_wrapper


def listener_call(
    bus: str,
    listener_of: Reader,
    attributes_of: Callable[[Any], dict[str, Any] | None] | None = None,
) -> Wrapper:
    """Wrapper for the method that is one listener call; the span goes around it.

    ``listener_of(instance, args, kwargs)`` returns the function the span is named
    after, or None when this call does not deliver the event (no span).
    """

    def call_wrapper(
        wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not settings.listeners:
            return wrapped(*args, **kwargs)
        dispatch = _current.get()
        if dispatch is None or dispatch.bus != bus:
            return wrapped(*args, **kwargs)
        extra = None
        try:
            named = listener_of(instance, args, kwargs)
            if attributes_of is not None and named is not None:
                extra = attributes_of(instance)
        except Exception:  # pragma: no cover - defensive
            named = None
        if named is None:
            return wrapped(*args, **kwargs)
        index = dispatch.count
        dispatch.count += 1
        return dispatch.call(wrapped, index, args, kwargs, named=named, attributes=extra)

    return call_wrapper
