"""Reading the current OpenTelemetry context in one lookup, and what it allows.

The public way to ask "is the current span sampled, is instrumentation suppressed?"
walks opentelemetry.context twice (get_current_span -> get_value -> get_current ->
the runtime context -> its ContextVar), ~0.5 us per hand-over.  The default runtime
context keeps the OpenTelemetry Context (a dict) in one ContextVar: read it once.
Both names are private to opentelemetry-api (read against 1.45), so anything
unexpected falls back to the public API (another OTEL_PYTHON_CONTEXT, a future rename).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import TraceFlags

__all__ = ["current_otel_context", "parent_allows"]

SUPPRESS_KEY = otel_context._SUPPRESS_INSTRUMENTATION_KEY  # the SDK's own flag
_SAMPLED = int(TraceFlags.SAMPLED)

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


def current_otel_context() -> Any:
    """The current OpenTelemetry Context (a mapping), or None to use the public API."""
    if _OTEL_CONTEXT_VAR is None:
        return None
    try:
        return _OTEL_CONTEXT_VAR.get()  # its default is an empty Context
    except LookupError:  # pragma: no cover - a runtime context without a default
        return _EMPTY


def parent_allows(*, root: bool) -> bool:
    """May a span start here, as a child of the current span (or, with ``root``, alone)?

    False under an unsampled parent (a parent-based sampler would drop the child too)
    and while instrumentation is suppressed (the SDK suppresses it while it exports,
    which keeps exporter threads from producing spans about themselves); with no active
    span, ``root`` decides.  The decision is made from the parent's *sampled* flag, not
    ``is_recording()``: a parent that has already ended (work handed over from a
    done-callback) no longer records, yet its children belong in the trace.
    """
    current = current_otel_context()
    if current is None:  # another runtime context: the public API
        parent = trace.get_current_span().get_span_context()
        if not parent.trace_flags.sampled and (parent.is_valid or not root):
            return False
        return not otel_context.get_value(SUPPRESS_KEY)
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
    return not current.get(SUPPRESS_KEY)
