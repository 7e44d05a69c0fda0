"""Event buses: one span per dispatch and one per listener call (docs/listeners.md).

One module per bus (``griptape``, ``blinker``, ``django``, ``pyee``, ``pubsub``,
``celery``), each a declaration of where to hook; the span logic is in
:mod:`ctxrelay.listeners._dispatch`.  :func:`trace_dispatch` gives the same spans to a
bus ctxrelay does not know.
"""

from ctxrelay.listeners.generic import trace_dispatch

__all__ = ["trace_dispatch"]
