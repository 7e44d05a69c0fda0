"""Configure the OpenTelemetry SDK from the standard ``OTEL_*`` variables at start-up.

Used by the start-up activations (``ctxrelay run`` and ``CTXRELAY_ENABLED=1``), never by
``ctxrelay.instrument()`` nor by ``opentelemetry-instrument`` (whose own configurator
does this job).  The work is done by the SDK's own configurator, the one
``opentelemetry-distro`` subclasses, so every variable means exactly what the SDK
documents: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_EXPORTER``,
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``_PROTOCOL``, ``OTEL_TRACES_SAMPLER`` / ``_ARG``, ...
(it also sets up metrics and logs when ``OTEL_METRICS_EXPORTER`` / ``OTEL_LOGS_EXPORTER``
ask for it).  Spans are flushed at exit by the SDK itself: its ``TracerProvider``
registers ``atexit`` ``shutdown()``, which drains the batch processor, and ``atexit``
runs after the interpreter has joined the non-daemon threads.

Nothing is configured when:

* a real tracer provider is already set (a ``sitecustomize``, ``OTEL_PYTHON_TRACER_PROVIDER``);
* ``opentelemetry-instrument`` is starting this interpreter (its configurator runs next);
* ``OTEL_SDK_DISABLED=true`` (the SDK would hand out no-op tracers anyway).

A provider the application sets *later* is refused by the OpenTelemetry API ("Overriding
of current TracerProvider is not allowed"): the one configured here stays in force.
Applications that set up OpenTelemetry in code should call ``ctxrelay.instrument()``
there instead of using a start-up activation (see ``docs/configuration.md``).
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.util._importlib_metadata import entry_points

__all__ = ["DEFAULT_EXPORTER", "FALLBACK_EXPORTER", "configure_from_env", "default_exporter"]

logger = logging.getLogger("ctxrelay")

#: ``OTEL_TRACES_EXPORTER`` when unset: ctxrelay's trace-tree exporter (no backend needed).
DEFAULT_EXPORTER = "ctxrelay_tree"
#: ... unless that entry point is missing: then the SDK's (and the distro's) ``otlp``.
FALLBACK_EXPORTER = "otlp"
_EXPORTER_GROUP = "opentelemetry_traces_exporter"
_OTEL_AUTO_DIR = os.path.join("opentelemetry", "instrumentation", "auto_instrumentation")


class _Configurator(_OTelSDKConfigurator):
    """The SDK's own ``OTEL_*`` configuration, unchanged (the SDK asks to be subclassed)."""


def default_exporter() -> str:
    if any(True for _ in entry_points(group=_EXPORTER_GROUP, name=DEFAULT_EXPORTER)):
        return DEFAULT_EXPORTER
    return FALLBACK_EXPORTER


def _provider_already_set() -> bool:
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _opentelemetry_instrument_pending() -> bool:
    """True while ``opentelemetry-instrument`` is starting us: its sitecustomize configures."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return any(os.path.normpath(p).endswith(_OTEL_AUTO_DIR) for p in paths if p)


def configure_from_env() -> bool:
    """Set the global tracer provider from ``OTEL_*``; False when it was left alone."""
    if os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        return False
    if _provider_already_set() or _opentelemetry_instrument_pending():
        return False
    # The SDK's configurator adds the names passed here to those in OTEL_TRACES_EXPORTER:
    # pass a default only when the variable is unset ("none" means none).
    defaults = [] if os.environ.get(OTEL_TRACES_EXPORTER, "").strip() else [default_exporter()]
    _Configurator().configure(trace_exporter_names=defaults)
    return True
