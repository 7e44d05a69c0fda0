"""ctxrelay as an OpenTelemetry instrumentor, for ``opentelemetry-instrument python app.py``.

``opentelemetry-instrument`` loads every ``opentelemetry_instrumentor`` entry point; this
one is named ``ctxrelay`` (so ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=ctxrelay`` skips it)
and only applies ctxrelay's patches.  Configuring the SDK is left to the distro's
configurator (``opentelemetry-distro``), as for every other instrumentor.

It coexists with the official ``threading`` instrumentor: that one wraps
``Thread.start``/``Thread.run``/``ThreadPoolExecutor.submit`` to carry the OpenTelemetry
context only; ctxrelay hooks the thread start ``start()`` calls and the pool's work items and
carries a copy of the whole ``contextvars`` context (which contains the OpenTelemetry
context).  Both attach the same span, no work runs twice, each records its own spans
(that instrumentor records none), and either can be uninstrumented first.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

import ctxrelay

__all__ = ["CtxrelayInstrumentor"]


class CtxrelayInstrumentor(BaseInstrumentor):
    """``instrument(tracer_provider=...)`` / ``uninstrument()`` around ctxrelay's own."""

    def instrumentation_dependencies(self) -> Collection[str]:
        # ctxrelay patches the standard library and any framework only once imported:
        # nothing to check before loading it.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        ctxrelay.instrument(tracer_provider=kwargs.get("tracer_provider"))

    def _uninstrument(self, **kwargs: Any) -> None:
        ctxrelay.uninstrument()
