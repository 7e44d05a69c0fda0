"""ctxrelay: carry ``contextvars`` into every thread, pool task and framework runner.

Quickstart::

    import ctxrelay
    ctxrelay.instrument()          # or: ctxrelay run python app.py / CTXRELAY_ENABLED=1

See ``docs/`` for what is patched, the span attributes and the settings.
"""

from ctxrelay.instrumentation import instrument, is_instrumented, uninstrument
from ctxrelay.listeners import trace_dispatch
from ctxrelay.relay import bind
from ctxrelay.version import __version__

__all__ = ["__version__", "bind", "instrument", "is_instrumented", "trace_dispatch", "uninstrument"]
