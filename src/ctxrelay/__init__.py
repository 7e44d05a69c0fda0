"""ctxrelay: carry ``contextvars`` into every thread, pool task and framework runner.

Quickstart::

    import ctxrelay
    ctxrelay.instrument()          # or: ctxrelay run python app.py / CTXRELAY_ENABLED=1

See ``docs/`` for what is patched, the span attributes and the settings.

The public names are imported on first use (PEP 562): ``import ctxrelay`` alone, as the
start-up bootstrap and the ``ctxrelay`` command do, imports neither OpenTelemetry nor
wrapt, so it is fast and a broken install of either cannot fail it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ctxrelay.version import __version__

if TYPE_CHECKING:
    from ctxrelay.instrumentation import instrument, is_instrumented, uninstrument
    from ctxrelay.listeners import trace_dispatch
    from ctxrelay.relay import bind

__all__ = ["__version__", "bind", "instrument", "is_instrumented", "trace_dispatch", "uninstrument"]

_PUBLIC = {
    "instrument": "ctxrelay.instrumentation",
    "is_instrumented": "ctxrelay.instrumentation",
    "uninstrument": "ctxrelay.instrumentation",
    "trace_dispatch": "ctxrelay.listeners",
    "bind": "ctxrelay.relay",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:  # ``ctxrelay.relay`` after a bare ``import ctxrelay``, as before
            return importlib.import_module(f"ctxrelay.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ctxrelay.{name}":
                raise
    raise AttributeError(f"module 'ctxrelay' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
