"""Gradio: the queue is a hand-over, and generator handlers keep one context for life.

Read against gradio 6.31 (``queueing.py``, ``routes.py``, ``blocks.py``, ``utils.py``,
``http_server.py``); the queue has the same shape in gradio 5.x (``Event(...)`` built in
``Queue.push``, ``run_coro_in_background(self.process_events, events, batch, ...)`` in
``Queue.start_processing``), and every hook here falls back to Gradio's own behaviour
when the shape is not what it expects.

**The queue.**  ``POST /gradio_api/queue/join`` calls ``Queue.push``, which builds an
``Event`` and appends it to a list; ``Queue.start_processing``, a long-lived asyncio task
started by whichever request came first (``GET /gradio_api/startup-events``, or the app's
lifespan under ``gr.mount_gradio_app``), later takes it off and runs
``process_events(events, ...)`` in a new task: pre-processing, the handler (in an anyio
thread for sync ones), every generator step and streaming chunk, post-processing.  That
task copies the *queue loop's* context, so a request-scoped ContextVar (a request id a
middleware set) is not what the handler sees, and every handler span sits in the trace
of the request that happened to start the queue.  So:

* ``Event.__init__`` (in the join request's task) captures a copy of the context and, when
  a span is to be recorded, the hop (origin thread, time of the hand-over);
* ``gradio.queueing.run_coro_in_background`` (the name ``queueing`` imported from
  ``utils``), when called with ``process_events``, creates the job's task inside that
  copy (a task copies the current context: the job runs in a fresh copy of its own), under
  a ``gradio.queue <handler>`` hop span, child of the join request's span, whose
  ``ctxrelay.queue.wait_ms`` is the time the job waited in Gradio's queue;
* ``Queue.start`` runs in a copy of the context the queue was created in (``Blocks.queue()``,
  ``launch()``: the app's set-up), so the queue loop runs in no request's context.

A batch (``batch=True``) is one call for several events: it runs in the first event's
context (the others' captures are dropped).  ``every=`` / ``gr.Timer`` ticks are joins
sent by the browser like any other, so each tick is its own job.  Cached examples and
validators run inside the join request itself (no queue), as before.

**Generators.**  ``SyncToAsyncIterator.__anext__`` runs each step as
``anyio.to_thread.run_sync(run_sync_iterator_async, iterator)``, each in a fresh copy,
so a value the generator set before its first ``yield`` is gone at the second.  The
module global ``run_sync_iterator_async`` (looked up at every step) is wrapped to run
every step of one iterator in one context (:func:`ctxrelay.iterators.step_in_own_context`),
and its hops are named after the user's generator function, not after the helper.

**launch().**  ``demo.launch()`` runs uvicorn in ``threading.Thread(target=server.run)``
(``http_server.Server.run_in_thread``): the thread patch carries the launcher's context
into it; ``run_in_thread`` is wrapped only to name that hop ``gradio``.

Not covered: ``SyncToAsyncIterator.aclose`` closes a generator stopped early from the
event loop, so its ``finally`` blocks run in the job's task context, not its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import Context, copy_context
from typing import Any

from ctxrelay import attributes, iterators, relay, spans
from ctxrelay.patching import Patch
from ctxrelay.runners._thread_roles import naming_threads

NAME = "gradio"
RUNNER = "gradio"
#: The hop from the join request to the queue's run of the job.
QUEUE_RUNNER = "gradio.queue"

#: Attribute names ctxrelay sets on Gradio's objects (instance ``__dict__`` only).
_JOB = "_ctxrelay_job"
_SETUP = "_ctxrelay_setup"


class _Job:
    """What the join request handed over: its context and, if recorded, the hop."""

    __slots__ = ("context", "hop")

    def __init__(self, context: Context, hop: spans.Hop | None) -> None:
        self.context = context
        self.hop = hop


def capture_job(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``Event.__init__``: runs in the join request's task."""
    result = wrapped(*args, **kwargs)
    try:
        context, hop = relay.hand_over(QUEUE_RUNNER, _handler_of([instance]))
        if context is not None:
            instance.__dict__[_JOB] = _Job(context, hop)
    except Exception:  # pragma: no cover - defensive: Gradio as without us
        pass
    return result


def _take_job(events: Any) -> _Job | None:
    """The first event's job; every event's capture is dropped (it must not outlive it)."""
    job = None
    for event in events:
        taken = getattr(event, "__dict__", {}).pop(_JOB, None)
        if job is None:
            job = taken
    return job


def _handler_of(events: Any) -> Any:
    """The user's function for the job (``BlockFunction.fn``), for the span's name."""
    block_fn = getattr(events[0], "fn", None)
    return getattr(block_fn, "fn", None) or block_fn


async def _run_job(
    hop: spans.Hop, handler: Any, process: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """``process_events(...)`` under the queue hop span; runs in the job's own task."""
    span = token = None
    try:
        span, token = spans.start_hop(
            hop, handler, len(copy_context()), threading.current_thread().name
        )
    except Exception:  # pragma: no cover - defensive
        span = token = None
    try:
        return await process(*args, **kwargs)
    except BaseException as exc:
        # A job the user stopped is cancelled: not a failure of the application.
        if span is not None and type(exc).__name__ != "CancelledError":
            spans.record_failure(span, exc)
        raise
    finally:
        if span is not None:
            spans.end_hop(span, token)
        span = token = None


def _is_process_events(func: Any) -> bool:
    return getattr(func, "__name__", None) == "process_events" and hasattr(func, "__self__")


def start_job(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``gradio.queueing.run_coro_in_background(func, *args)`` (the queue loop)."""
    job = None
    try:
        if len(args) > 1 and _is_process_events(args[0]) and args[1]:
            events = args[1]
            job = _take_job(events)
            if job is not None:
                func = args[0]
                if job.hop is not None:
                    handler = _handler_of(events)
                    if handler is not None:
                        args = (_run_job, job.hop, handler, func, *args[1:])
                context = job.context
                job = None
                # create_task copies the current context: the job's task runs in a
                # fresh copy of the captured one, which is let go of right after.
                return context.run(wrapped, *args, **kwargs)
    except RuntimeError:  # pragma: no cover - "cannot enter context": as without us
        pass
    return wrapped(*args, **kwargs)


def capture_setup(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``Queue.__init__`` (``Blocks.queue()``, ``launch()``): the app's set-up."""
    result = wrapped(*args, **kwargs)
    try:
        instance.__dict__[_SETUP] = relay.capture()
    except Exception:  # pragma: no cover - defensive
        pass
    return result


def start_outside_requests(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``Queue.start()``: its loops start in the set-up context, not a request's."""
    setup = getattr(instance, "__dict__", {}).get(_SETUP)
    if isinstance(setup, Context):
        try:
            return setup.copy().run(wrapped, *args, **kwargs)
        except RuntimeError:  # pragma: no cover - defensive
            pass
    return wrapped(*args, **kwargs)


def _generator_function(iterator: Any) -> Any:
    """What a generator step is named after: the user's generator function.

    Gradio wraps every handler in ``utils.function_wrapper``: a generator handler runs
    as ``gen_wrapper``'s generator (named like the user's by ``functools.wraps``, but
    whose code is Gradio's); its frame holds the user's function as ``f``.
    """
    frame = getattr(iterator, "gi_frame", None)
    if frame is not None and frame.f_globals.get("__name__") == "gradio.utils":
        user = frame.f_locals.get("f")
        if callable(user):
            return user
    return iterator


attributes.name_hops_after("gradio.utils.run_sync_iterator_async", _generator_function)


PATCHES = (
    Patch(NAME, "gradio.utils", "run_sync_iterator_async", iterators.stepping_in_own_context),
    Patch(NAME, "gradio.http_server", "Server.run_in_thread", naming_threads(RUNNER)),
    Patch(NAME, "gradio.queueing", "Event.__init__", capture_job),
    Patch(NAME, "gradio.queueing", "run_coro_in_background", start_job),
    Patch(NAME, "gradio.queueing", "Queue.__init__", capture_setup),
    Patch(NAME, "gradio.queueing", "Queue.start", start_outside_requests),
)
