"""Gradio: sync generator handlers keep one context for their whole life.

Read against gradio 6.31 (``utils.py``, ``blocks.py``, ``http_server.py``, ``queueing.py``).

Where Gradio loses the caller's context, and what covers each place:

* ``demo.launch()`` runs uvicorn in ``threading.Thread(target=server.run)``
  (``http_server.Server.run_in_thread``): every request task and the queue's
  processing tasks descend from that thread's context.  The thread patch carries the
  context of the thread that called ``launch()`` (when ctxrelay was instrumented
  before it); ``run_in_thread`` is wrapped only to name that hop ``gradio``.
* Sync handlers run through ``anyio.to_thread.run_sync`` (a fresh copy per call of the
  queue task's context): right as it is; the anyio runner records the hop.
* Sync generator handlers: ``SyncToAsyncIterator.__anext__`` runs each step as
  ``anyio.to_thread.run_sync(run_sync_iterator_async, iterator)``, each in a fresh
  copy, so a value the generator set before its first ``yield`` is gone at the second.
  The module global ``run_sync_iterator_async`` (looked up at every step) is wrapped to
  run every step of one iterator in one context (:func:`ctxrelay.iterators.step_in_own_context`).

Not covered: ``SyncToAsyncIterator.aclose`` closes a generator stopped early from the
event loop, so its ``finally`` blocks run in the queue task's context, not its own.
"""

from __future__ import annotations

from ctxrelay import iterators
from ctxrelay.patching import Patch
from ctxrelay.runners._thread_roles import naming_threads

NAME = "gradio"
RUNNER = "gradio"


PATCHES = (
    Patch(NAME, "gradio.utils", "run_sync_iterator_async", iterators.stepping_in_own_context),
    Patch(NAME, "gradio.http_server", "Server.run_in_thread", naming_threads(RUNNER)),
)
