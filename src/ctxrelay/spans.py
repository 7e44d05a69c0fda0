"""Span names, attribute keys and the life of a hop span: the one place they are defined.

A *hop* is one piece of work handed from an origin thread to another thread.  Its span
is decided at hand-over (in the origin thread) and started when the work starts (in
the target thread), as a child of the span that was current at hand-over.

Cost matters here: :func:`hand_over` runs on every ``submit``/``start``, so it returns
``None`` (and nothing else is allocated) whenever the span would not be recorded —
spans switched off, no active span, an unsampled parent, or instrumentation suppressed
(the OpenTelemetry SDK suppresses it while it exports, which is what keeps exporter
threads from producing spans about themselves).
"""

from __future__ import annotations

import functools
import threading
import time
from contextvars import ContextVar
from typing import Any, Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TraceFlags

try:  # semantic conventions >= 0.54b0 have the stable code.* names
    from opentelemetry.semconv.attributes.code_attributes import CODE_FUNCTION_NAME
except ImportError:  # pragma: no cover - older semconv releases
    from opentelemetry.semconv._incubating.attributes.code_attributes import (
        CODE_FUNCTION_NAME,
    )
from opentelemetry.semconv._incubating.attributes.thread_attributes import (
    THREAD_ID,
    THREAD_NAME,
)

from ctxrelay.version import __version__

__all__ = [
    "ATTR_CONTEXT_VARS",
    "ATTR_DETACHED",
    "ATTR_ORIGIN_THREAD_ID",
    "ATTR_ORIGIN_THREAD_NAME",
    "ATTR_QUEUE_WAIT_MS",
    "ATTR_RUNNER",
    "CODE_FUNCTION_NAME",
    "THREAD_ID",
    "THREAD_NAME",
    "Hop",
    "callable_name",
    "hand_over",
]

# --- attribute keys (listed in docs/spans.md) ---------------------------------------
ATTR_RUNNER = "ctxrelay.runner"
ATTR_ORIGIN_THREAD_ID = "ctxrelay.origin.thread.id"
ATTR_ORIGIN_THREAD_NAME = "ctxrelay.origin.thread.name"
ATTR_QUEUE_WAIT_MS = "ctxrelay.queue.wait_ms"
ATTR_CONTEXT_VARS = "ctxrelay.context.vars"
ATTR_DETACHED = "ctxrelay.detached"

# Listener-dispatch attributes (issue: spans for every event-listener dispatch).
ATTR_BUS = "ctxrelay.bus"
ATTR_EVENT = "ctxrelay.event"
ATTR_LISTENERS = "ctxrelay.listeners"
ATTR_LISTENER_INDEX = "ctxrelay.listener.index"
ATTR_LISTENER_DRIVER = "ctxrelay.listener.driver"
ATTR_SENDER = "ctxrelay.sender"
#: only with CTXRELAY_RECORD_PAYLOADS=1: a bounded description of what was dispatched.
ATTR_PAYLOAD = "ctxrelay.event.payload"

# Listener-dispatch span names (docs/listeners.md): one per dispatch, one per listener call.
DISPATCH_SPAN = "{bus} dispatch {event}"
LISTENER_SPAN = "{bus} listener {listener}"

#: Longest string ctxrelay ever puts in an attribute it builds itself.
MAX_ATTRIBUTE_LENGTH = 256

_SUPPRESS_KEY = otel_context._SUPPRESS_INSTRUMENTATION_KEY  # the SDK's own flag
_SAMPLED = int(TraceFlags.SAMPLED)

# The public way to ask "is the current span sampled, is instrumentation suppressed?"
# walks opentelemetry.context twice (get_current_span -> get_value -> get_current ->
# the runtime context -> its ContextVar), ~0.5 us per hand-over.  The default runtime
# context keeps the OpenTelemetry Context (a dict) in one ContextVar: read it once.
# Both names are private to opentelemetry-api, so anything unexpected falls back to
# the public API (another OTEL_PYTHON_CONTEXT, a future rename).
try:
    from opentelemetry.context import _RUNTIME_CONTEXT
    from opentelemetry.trace.propagation import _SPAN_KEY

    _OTEL_CONTEXT_VAR = getattr(_RUNTIME_CONTEXT, "_current_context", None)
except ImportError:  # pragma: no cover - a future opentelemetry-api
    _SPAN_KEY = ""
    _OTEL_CONTEXT_VAR = None
if not isinstance(_OTEL_CONTEXT_VAR, ContextVar):  # pragma: no cover
    _OTEL_CONTEXT_VAR = None


_EMPTY: dict[str, Any] = {}


def _current_otel_context() -> Any:
    """The current OpenTelemetry Context (a mapping), or None to use the public API."""
    if _OTEL_CONTEXT_VAR is None:
        return None
    try:
        return _OTEL_CONTEXT_VAR.get()  # its default is an empty Context
    except LookupError:  # pragma: no cover - a runtime context without a default
        return _EMPTY


class _Settings:
    """What :func:`ctxrelay.instrument` chose for spans; read on every hand-over."""

    __slots__ = ("detach", "detach_only", "hops", "listeners", "record_payloads", "tracer")

    def __init__(self) -> None:
        self.hops = False
        self.listeners = False
        #: opt-in (CTXRELAY_RECORD_PAYLOADS): listener spans may describe event payloads.
        self.record_payloads = False
        self.tracer: trace.Tracer = trace.NoOpTracer()
        #: predicate(runner, fn) -> True to start the hop span in a new trace (linked).
        self.detach: Callable[[str, Any], bool] | None = None
        #: Hop spans are off but detaching is on: a Hop is still taken at hand-over
        #: (the detached span is what carries the link), and only detached work gets
        #: a span.  Without it, detached work would silently nest under its origin.
        self.detach_only = False


settings = _Settings()


class _GlobalTracer(trace.Tracer):
    """ctxrelay's tracer on the *global* provider, following it when it is replaced.

    ``trace.get_tracer()`` on the global provider binds to the first real provider it
    sees, so after an application or a test harness replaces the global provider, hop
    spans would go to one nobody reads.  Here the provider is looked up at each span:
    one global read and an identity check while it stays the same.
    """

    def __init__(self) -> None:
        # (provider, its tracer) in one attribute: threads refreshing at once never
        # pair a provider with another provider's tracer.
        self._bound: tuple[Any, trace.Tracer] = (None, trace.NoOpTracer())

    def _current(self) -> trace.Tracer:
        provider = trace.get_tracer_provider()
        bound = self._bound
        if bound[0] is provider:
            return bound[1]
        tracer = provider.get_tracer("ctxrelay", __version__)
        self._bound = (provider, tracer)
        return tracer

    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        return self._current().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._current().start_as_current_span(*args, **kwargs)


def configure(
    *,
    tracer_provider: trace.TracerProvider | None,
    hops: bool,
    listeners: bool,
    detach: Callable[[str, Any], bool] | None = None,
    record_payloads: bool = False,
) -> None:
    """Choose the tracer and which spans are recorded. Called by ``instrument()``."""
    # Without an explicit provider, follow the global one (set later by the application,
    # or replaced): activation at start-up may run before the app's own set-up.
    if tracer_provider is None:
        settings.tracer = _GlobalTracer()
    else:
        settings.tracer = tracer_provider.get_tracer("ctxrelay", __version__)
    settings.hops = hops or detach is not None
    settings.detach_only = not hops and detach is not None
    settings.listeners = listeners
    settings.detach = detach
    settings.record_payloads = record_payloads


def disable() -> None:
    """Record nothing (after ``uninstrument()``); work still in flight ends its spans."""
    settings.hops = False
    settings.detach_only = False
    settings.listeners = False


def _through_partials(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def callable_name(fn: Any) -> str:
    """``module.qualname`` of what will run, seen through partials and bound methods."""
    fn = _through_partials(fn)
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None:
        cls = type(fn)
        qualname = f"{cls.__qualname__}.__call__"
        module: str | None = cls.__module__
    else:
        module = getattr(fn, "__module__", None)
    name = f"{module}.{qualname}" if module else str(qualname)
    return name[:MAX_ATTRIBUTE_LENGTH]


def short_name(fn: Any) -> str:
    """The last part of the qualified name, for span names."""
    fn = _through_partials(fn)
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)[:MAX_ATTRIBUTE_LENGTH]


class Hop:
    """What the origin thread knew at hand-over, kept only when a span will be recorded."""

    __slots__ = ("handed_ns", "origin_id", "origin_name", "runner")

    def __init__(self, runner: str) -> None:
        self.runner = runner
        origin = threading.current_thread()
        self.origin_id = threading.get_ident()
        # Thread names are the application's (any length): bounded like every attribute.
        self.origin_name = origin.name[:MAX_ATTRIBUTE_LENGTH]
        self.handed_ns = time.perf_counter_ns()


def should_record() -> bool:
    """Called in the origin thread at hand-over: will a hop span be recorded?

    No span is recorded when no span is active at the hand-over: a hop is a step inside
    a trace, and a server's or a library's own threads would otherwise flood the backend
    with one-span traces.  Propagation happens either way.  Nor under an unsampled
    parent (a parent-based sampler would drop the hop too), nor while instrumentation
    is suppressed (the SDK suppresses it while it exports).

    The decision is made from the parent's *sampled* flag, not ``is_recording()``: a
    parent that has already ended (work handed over from a done-callback) no longer
    records, yet its children belong in the trace.  This runs on every hand-over, so the
    OpenTelemetry context is read once (see :func:`_current_otel_context`).
    """
    return settings.hops and parent_allows(root=False)


def parent_allows(*, root: bool) -> bool:
    """May a span start here, as a child of the current span (or, with ``root``, alone)?

    False under an unsampled parent (a parent-based sampler would drop the child too)
    and while instrumentation is suppressed; with no active span, ``root`` decides.  The
    OpenTelemetry context is read once (see :func:`_current_otel_context`).
    """
    current = _current_otel_context()
    if current is None:  # another runtime context: the public API
        parent = trace.get_current_span().get_span_context()
        if not parent.trace_flags.sampled and (parent.is_valid or not root):
            return False
        return not otel_context.get_value(_SUPPRESS_KEY)
    span = current.get(_SPAN_KEY)
    if span is None:
        if not root:
            return False
    else:
        try:
            parent = span.get_span_context()
            # ``& 1`` rather than ``.sampled``: the property costs more than the rest.
            if not parent.trace_flags & _SAMPLED and (not root or parent.is_valid):
                return False
        except AttributeError:  # not a Span: what get_current_span() calls INVALID_SPAN
            if not root:
                return False
    return not current.get(_SUPPRESS_KEY)


def hand_over(runner: str) -> Hop | None:
    """A :class:`Hop` if a span should be recorded for this hand-over, else None."""
    return Hop(runner) if should_record() else None


def start_hop(hop: Hop, fn: Any, context_vars: int, thread_name: str) -> tuple[Span | None, object]:
    """Called in the target thread, inside the carried context: start and activate.

    ``(None, None)`` when hop spans are off and this work is not detached.

    ``thread_name`` comes from the caller because inside ``Thread._bootstrap_inner`` the
    new thread is not yet registered, and ``threading.current_thread()`` there would
    create and register a dummy thread object.
    """
    now_ns = time.perf_counter_ns()
    detach = settings.detach
    detached = detach is not None and detach(hop.runner, fn)
    if not detached and settings.detach_only:
        return None, None
    attributes: dict[str, Any] = {
        ATTR_RUNNER: hop.runner,
        CODE_FUNCTION_NAME: callable_name(fn),
        THREAD_ID: threading.get_ident(),
        THREAD_NAME: thread_name[:MAX_ATTRIBUTE_LENGTH],
        ATTR_ORIGIN_THREAD_ID: hop.origin_id,
        ATTR_ORIGIN_THREAD_NAME: hop.origin_name,
        ATTR_QUEUE_WAIT_MS: (now_ns - hop.handed_ns) / 1e6,
        ATTR_CONTEXT_VARS: context_vars,
    }
    name = f"{hop.runner} {short_name(fn)}"
    if detached:
        origin = trace.get_current_span().get_span_context()
        attributes[ATTR_DETACHED] = True
        span = settings.tracer.start_span(
            name,
            context=otel_context.Context(),  # an empty context: a new trace
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=[Link(origin)],
        )
    else:
        span = settings.tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span))
    return span, token


def record_failure(span: Span, exc: BaseException) -> None:
    """ERROR status and an exception event; the exception itself is not touched."""
    if span.is_recording():
        span.record_exception(exc, escaped=True)
        span.set_status(
            Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:MAX_ATTRIBUTE_LENGTH])
        )


def end_hop(span: Span, token: object) -> None:
    """Deactivate and end; never raises into the work it wrapped."""
    try:
        otel_context.detach(token)  # type: ignore[arg-type]
    finally:
        span.end()
