"""``anyio.to_thread.run_sync`` (asyncio backend): anyio already copies, ctxrelay adds the hop.

Read against anyio 4.16 ``_backends/_asyncio.py`` (same shape since 4.0).

``AsyncIOBackend.run_sync_in_worker_thread(func, args, ...)`` is where every
``anyio.to_thread.run_sync`` lands (Starlette's ``run_in_threadpool``, FastAPI's sync
endpoints and dependencies, Gradio's sync handlers and generator steps).  In the caller's
task it makes ``context = copy_context()`` and queues ``(context, func, args, future,
scope)`` to a ``WorkerThread``, whose loop runs ``context.run(func, *args)``: one fresh
copy per call, which is right.  So this patch never copies: when a span is to be
recorded it decides the hop at the call (origin thread, same context as anyio's copy)
and hands anyio ``partial(_run, hop, func)``, which opens the hop span inside anyio's
copy.  With no span to record, ``func`` goes through untouched.

``WorkerThread`` overrides ``run()`` and lives for many calls (until idle for 10 s):
started inside a ``run_sync``, the thread patch would pin that call's context (and a
hop span) for the worker's whole life.  It is exempt from the thread patch
(``runners._thread_roles``, whether or not this patch is on).

The trio backend (``trio.to_thread.run_sync`` also copies per call) is not covered.
"""

from __future__ import annotations

import functools
from typing import Any

from ctxrelay import attributes, relay, spans
from ctxrelay.patching import Patch

NAME = "anyio"
RUNNER = "anyio.to_thread"


def _run(hop: spans.Hop, func: Any, *args: Any) -> Any:
    # In the worker thread, inside the copy anyio made for this call.  A framework
    # helper stepping the user's generator is named after the generator.
    try:
        return relay.run_hop(hop=hop, fn=func, args=args, named=attributes.subject_of(func, args))
    except BaseException as exc:
        relay.hide_own_frames(exc)  # the traceback the caller gets lists anyio's and the user's
        raise


relay.own_frames(_run)


def record_hop(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Around ``run_sync_in_worker_thread(func, args, ...)``; runs in the caller's task."""
    if args:
        try:
            _, hop = relay.hand_over(RUNNER, args[0], carry=False)  # anyio copies itself
        except Exception:  # pragma: no cover - defensive: anyio runs it, unrecorded
            hop = None
        if hop is not None:
            return wrapped(functools.partial(_run, hop, args[0]), *args[1:], **kwargs)
    return wrapped(*args, **kwargs)


PATCHES = (
    Patch(
        NAME,
        "anyio._backends._asyncio",
        "AsyncIOBackend.run_sync_in_worker_thread",
        record_hop,
    ),
)
