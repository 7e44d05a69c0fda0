"""Proposal P4 (docs/performance.md): decide "no span" from ONE read of the OTel context.

Measure with ``benchmarks/run.py --preload benchmarks/proposals/one_context_read.py``.

``spans.hand_over`` runs on every hand-over while hop spans are on.  Through the public
API, "is the current span sampled?" and "is instrumentation suppressed?" are two walks
through ``opentelemetry.context`` (``get_current_span`` -> ``get_value`` ->
``get_current`` -> the runtime context -> its ``ContextVar``), ~0.4-0.6 µs together.
The default runtime context keeps the OTel ``Context`` (a dict) in one ``ContextVar``:
read it once and take both values from the dict.  ``_current_context`` is private, so
the public API stays the fallback for any other runtime context.
"""

from __future__ import annotations

from opentelemetry.context import _RUNTIME_CONTEXT
from opentelemetry.trace.propagation import _SPAN_KEY

from ctxrelay import spans

_CURRENT = getattr(_RUNTIME_CONTEXT, "_current_context", None)
_SUPPRESS = spans._SUPPRESS_KEY
_SAMPLED = 0x01  # TraceFlags.SAMPLED
_settings = spans.settings
_Hop = spans.Hop
_api_hand_over = spans.hand_over


def hand_over(runner: str) -> spans.Hop | None:
    if not _settings.hops:
        return None
    if _CURRENT is None:
        return _api_hand_over(runner)
    current = _CURRENT.get()
    span = current.get(_SPAN_KEY)
    if span is None:
        return None
    try:
        # `& 1`, not `.sampled`: the property and an ABC isinstance() cost ~0.3 µs here.
        if not span.get_span_context().trace_flags & _SAMPLED:
            return None
    except AttributeError:  # not a Span: what get_current_span() would call INVALID_SPAN
        return None
    if current.get(_SUPPRESS):
        return None
    return _Hop(runner)


spans.hand_over = hand_over
