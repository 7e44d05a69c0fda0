"""The life of a hop span: whether one is recorded, and its start, failure and end.

A *hop* is one piece of work handed from an origin thread to another thread.  Its span
is decided at hand-over (in the origin thread, :func:`admit`) and started when the work
starts (in the target thread, :func:`start_hop`), as a child of the span that was
current at hand-over.  Names and attribute keys: :mod:`ctxrelay.attributes`.

Two rules hold for everything here:

* :func:`admit` runs on every ``submit``/``start``, so it returns ``None`` (and
  allocates nothing) whenever the span would not be recorded;
* span bookkeeping never changes what the user's code returns or raises: recording a
  failure and ending a span swallow their own errors (an exception whose ``__str__``
  raises, a span processor whose ``on_end`` raises).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from ctxrelay.attributes import (
    ATTR_CONTEXT_VARS,
    ATTR_DETACHED,
    ATTR_ORIGIN_THREAD_ID,
    ATTR_ORIGIN_THREAD_NAME,
    ATTR_QUEUE_WAIT_MS,
    ATTR_RUNNER,
    CODE_FUNCTION_NAME,
    MAX_ATTRIBUTE_LENGTH,
    THREAD_ID,
    THREAD_NAME,
    callable_name,
    short_name,
    through_closures,
)
from ctxrelay.otel_fast import parent_allows
from ctxrelay.version import __version__

__all__ = ["Hop", "admit", "end_hop", "end_span", "record_failure", "settings", "start_hop"]

logger = logging.getLogger("ctxrelay")

#: How a piece of work normally ends without being a failure: a generator step that
#: finds the generator exhausted (runners add their framework's own form of it).
NORMAL_ENDS: tuple[type[BaseException], ...] = (StopIteration, StopAsyncIteration)


def add_normal_end(kind: type[BaseException]) -> None:
    """``kind`` ends a piece of work normally: never an error on a span."""
    global NORMAL_ENDS
    if kind not in NORMAL_ENDS:
        NORMAL_ENDS = (*NORMAL_ENDS, kind)


# --- hops that are never recorded (CTXRELAY_DROP_HOPS) --------------------------------
#: The word in CTXRELAY_DROP_HOPS that stands for :data:`FRAMEWORK_HOPS`.
FRAMEWORK = "framework"

#: Dropped by default: hops running code the user did not write and cannot act on.
#: Starlette's static files and ``FileResponse`` run ``stat``/``open``/``read``/``close``
#: through ``anyio.to_thread`` (four hop spans per file, dozens per page load); Gradio
#: pre- and post-processes every input and output there, and computes its analytics;
#: a server thread runs ``uvicorn.Server.run`` for the process's life.  The
#: OpenTelemetry SDK's own work handed to a pool (the resource detectors that every
#: ``TracerProvider()`` runs in a ThreadPoolExecutor) would be exported as the
#: application's hops, into the global provider even when the app traces with its own
#: (``opentelemetry.sdk.*`` only: the instrumentations wrap the user's work in
#: functions of theirs, ``opentelemetry.instrumentation.*``).  The user's handlers are
#: named after the user's function, so they never match.
FRAMEWORK_HOPS: tuple[str, ...] = (
    "posix.*",
    "nt.*",
    "io.open",
    "_io.*",
    "genericpath.*",
    "anyio.*",
    "starlette.*",
    "fastapi.*",
    "pydantic.*",
    "pydantic_core.*",
    "uvicorn.*",
    "gradio.*",
    "gradio_client.*",
    "opentelemetry.sdk.*",
)


class _Drop:
    """Glob patterns over a hop's qualified function name; a decision cache per name."""

    __slots__ = ("cache", "patterns")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self.cache: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        dropped = self.cache.get(name)
        if dropped is None:
            dropped = any(fnmatch.fnmatchcase(name, p) for p in self.patterns)
            if len(self.cache) > 4096:  # names are few; a bound all the same
                self.cache.clear()
            self.cache[name] = dropped
        return dropped


def drop_patterns(patterns: tuple[str, ...]) -> None:
    """Never record hops whose function's qualified name matches one of ``patterns``.

    The word ``framework`` stands for :data:`FRAMEWORK_HOPS`; ``none`` for nothing.
    """
    expanded: list[str] = []
    for pattern in patterns:
        if pattern.lower() == FRAMEWORK:
            expanded.extend(FRAMEWORK_HOPS)
        elif pattern.lower() != "none":
            expanded.append(pattern)
    settings.drop = _Drop(tuple(dict.fromkeys(expanded))) if expanded else None


class _Settings:
    """What :func:`ctxrelay.instrument` chose for spans; read on every hand-over."""

    __slots__ = (
        "detach",
        "detach_only",
        "drop",
        "hop_roots",
        "hops",
        "listeners",
        "record_payloads",
        "tracer",
    )

    def __init__(self) -> None:
        self.hops = False
        #: CTXRELAY_HOP_SPANS=all: a hand-over with no active span starts a new trace.
        self.hop_roots = False
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
        #: name -> True for hops never recorded (CTXRELAY_DROP_HOPS); None drops none.
        self.drop: Callable[[str], bool] | None = None


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
    drop_hops: tuple[str, ...] | None = None,
    hop_roots: bool = False,
) -> None:
    """Choose the tracer and which spans are recorded. Called by ``instrument()``.

    ``drop_hops``: patterns of hops never recorded; None = ``framework`` (the default).
    ``hop_roots``: a hand-over with no active span records its hop span as the root of
    a new trace instead of recording nothing (``CTXRELAY_HOP_SPANS=all``).
    """
    # Without an explicit provider, follow the global one (set later by the application,
    # or replaced): activation at start-up may run before the app's own set-up.
    if tracer_provider is None:
        settings.tracer = _GlobalTracer()
    else:
        settings.tracer = tracer_provider.get_tracer("ctxrelay", __version__)
    settings.hops = hops or detach is not None
    settings.detach_only = not hops and detach is not None
    settings.hop_roots = hops and hop_roots
    settings.listeners = listeners
    settings.detach = detach
    settings.record_payloads = record_payloads
    drop_patterns((FRAMEWORK,) if drop_hops is None else drop_hops)


def disable() -> None:
    """Record nothing (after ``uninstrument()``); work still in flight ends its spans."""
    settings.hops = False
    settings.detach_only = False
    settings.hop_roots = False
    settings.listeners = False


class Hop:
    """What the origin thread knew at hand-over, kept only when a span will be recorded."""

    __slots__ = ("handed_ns", "origin_id", "origin_name", "runner")

    def __init__(self, runner: str) -> None:
        self.runner = runner
        self.origin_id = threading.get_ident()
        # Thread names are the application's (any length): bounded like every attribute.
        name = threading.current_thread().name
        self.origin_name = name[:MAX_ATTRIBUTE_LENGTH] if isinstance(name, str) else "?"
        self.handed_ns = time.perf_counter_ns()


def admit(runner: str) -> Hop | None:
    """THE decision whether a hand-over gets a hop span: a :class:`Hop` if so, else None.

    Called in the origin thread at hand-over.  No span is recorded when hop spans are
    off, or when no span is active at the hand-over: a hop is a step inside a trace, and
    a server's or a library's own threads would otherwise flood the backend with
    one-span traces (propagation happens either way); nor under an unsampled parent or
    while instrumentation is suppressed (:func:`ctxrelay.otel_fast.parent_allows`).
    With ``CTXRELAY_HOP_SPANS=all`` (``settings.hop_roots``) a hand-over with no active
    span records its hop span as the root of a new trace.
    """
    if settings.hops and parent_allows(root=settings.hop_roots):
        return Hop(runner)
    return None


def start_hop(hop: Hop, fn: Any, context_vars: int, thread_name: str) -> tuple[Span | None, object]:
    """Called in the target thread, inside the carried context: start and activate.

    ``(None, None)`` when hop spans are off and this work is not detached, or when the
    work's function matches ``CTXRELAY_DROP_HOPS``.

    ``thread_name`` comes from the caller because inside ``Thread._bootstrap_inner`` the
    new thread is not yet registered, and ``threading.current_thread()`` there would
    create and register a dummy thread object.
    """
    now_ns = time.perf_counter_ns()
    fn = through_closures(fn)
    qualified = callable_name(fn)
    # The one place a hop is dropped by what it runs (CTXRELAY_DROP_HOPS): here, not in
    # admit(), because only now is the function known for every runner (a thread's
    # target, a generator behind a framework helper), and it costs the hand-over nothing.
    drop = settings.drop
    if drop is not None and drop(qualified):
        return None, None
    detach = settings.detach
    detached = detach is not None and detach(hop.runner, fn)
    if not detached and settings.detach_only:
        return None, None
    attributes: dict[str, Any] = {
        ATTR_RUNNER: hop.runner,
        CODE_FUNCTION_NAME: qualified,
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


def _describe(exc: BaseException) -> str:
    """``Type: message`` for the span status; an exception's ``__str__`` may raise."""
    try:
        message = str(exc)
    except Exception:
        message = "<exception str() failed>"
    return f"{type(exc).__name__}: {message}"[:MAX_ATTRIBUTE_LENGTH]


def record_failure(span: Span, exc: BaseException) -> None:
    """ERROR status and an exception event; the exception itself is not touched.

    A generator's normal end (:data:`NORMAL_ENDS`) is not a failure.  Never raises.
    """
    if isinstance(exc, NORMAL_ENDS):
        return
    try:
        if not span.is_recording():
            return
        try:
            span.record_exception(exc, escaped=True)
        except Exception:  # the SDK calls str(exc) and formats the traceback
            span.add_event("exception", {"exception.type": type(exc).__qualname__})
        span.set_status(Status(StatusCode.ERROR, _describe(exc)))
    except Exception:
        logger.debug("ctxrelay: could not record a failure on a span", exc_info=True)


def end_span(span: Span) -> None:
    """``span.end()`` that never raises (a span processor's ``on_end`` may)."""
    try:
        span.end()
    except Exception:
        logger.debug("ctxrelay: a span processor failed at span end", exc_info=True)


def end_hop(span: Span, token: object) -> None:
    """Deactivate and end; never raises into the work it wrapped."""
    try:
        otel_context.detach(token)  # type: ignore[arg-type]  # logs, never raises
    except Exception:  # pragma: no cover - defensive
        pass
    end_span(span)
