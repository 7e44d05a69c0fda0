"""Dask distributed: tasks carry the declared values and the trace to the workers.

Read against distributed 2026.8.0 (``distributed/client.py``, ``distributed/worker.py``,
``Scheduler._task_to_msg``) and dask 2026.8.0 (``dask/base.py``).

* ``Client.submit`` and ``Client.map`` take the user's ``func`` in the caller: it becomes
  a :class:`ctxrelay.carrier.Task`, pickled to the worker with the task; the worker
  thread runs it in a fresh context of its own (the declared values and the submitter's
  trace), so that thread is left exactly as it was.  The task's key is unchanged in
  shape: ``Task`` names itself after ``func`` and tokenizes as ``func`` does, so pure
  tasks keep Dask's de-duplication (a second submit of the same call returns the first
  one's future, which ran with the first submitter's values).
* ``Client.compute``, ``Client.persist`` and ``Client.get`` (what ``dask.compute()`` and
  ``.compute()`` call with a distributed client) send a graph, not a callable: the
  carrier rides as a task annotation instead, Dask's own way to attach metadata to
  every task of a graph (``dask.annotate``, a ContextVar, so concurrent callers never
  see each other's), set around ``Client._graph_to_futures`` only (see
  :func:`_carried_in_annotation`).  It is pickled to bytes, because the scheduler forwards
  annotations to the workers through msgpack.  On the worker, ``Worker.execute`` (each
  task's own asyncio task, whose context ``run_in_executor_with_context`` copies into
  the executor thread) enters the carrier for the task's run and leaves it after, so
  the next task sees none of it.  That half needs ctxrelay active in the worker process
  (a ``LocalCluster`` started by an activated process, ``ctxrelay run dask worker ...``);
  a worker without it runs the task as before, without the values.
* A coroutine function given to ``submit`` / ``map`` is carried the graphs' way: Dask
  awaits it in the worker's event loop (``TaskSpec.is_coro``), which a ``Task`` around
  it would turn into a thread call returning an un-awaited coroutine.
* Caller-side frames of ctxrelay are left out of the tracebacks the caller gets.
"""

from __future__ import annotations

import pickle
from contextvars import ContextVar
from typing import Any

from ctxrelay import frames, relay
from ctxrelay.patching import Patch

NAME = "dask"
RUNNER = "dask"
#: The task annotation that holds the pickled carrier.
ANNOTATION = "ctxrelay"


def relay_func(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Around ``Client.submit(func, ...)`` / ``Client.map(func, ...)``, in the caller."""
    try:
        if not args or kwargs.get("actor") or kwargs.get("actors"):
            return _without_pending(wrapped, args, kwargs)
        if _is_coroutine_function(args[0]):
            # Dask awaits a coroutine function in the worker's event loop; a Task
            # wrapping it would be called in a thread and return an un-awaited
            # coroutine.  Its carrier rides as a graph's does, in the annotation.
            return _carried_in_annotation(args[0], wrapped, args, kwargs)
        args = (relay.carried_task(RUNNER, args[0]), *args[1:])
        return _without_pending(wrapped, args, kwargs)
    except BaseException as exc:
        frames.hide_own_frames(exc)  # the caller's traceback lists Dask's frames, as bare
        raise


def _is_coroutine_function(fn: Any) -> bool:
    """What Dask itself asks (``TaskSpec.is_coro``) to await a task rather than call it."""
    try:
        from distributed.utils import iscoroutinefunction

        return bool(iscoroutinefunction(fn))
    except Exception:  # pragma: no cover - defensive: treated as a plain function
        return False


def _without_pending(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``wrapped`` with no graph carrier pending (a submit made inside a graph call)."""
    if _pending.get() is None:
        return wrapped(*args, **kwargs)
    token = _pending.set(None)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _pending.reset(token)


#: The pickled carrier of the graph call (``compute`` / ``persist`` / ``get``) running in
#: this context, for :func:`annotate_tasks` to put on the graph's tasks.
_pending: ContextVar[bytes | None] = ContextVar("ctxrelay.dask.pending", default=None)


def annotate_graph(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``Client.compute`` / ``persist`` / ``get``, in the caller."""
    try:
        return _carried_in_annotation(wrapped, wrapped, args, kwargs)
    except BaseException as exc:
        frames.hide_own_frames(exc)  # the caller's traceback lists Dask's frames, as bare
        raise


def _carried_in_annotation(
    named: Any, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``wrapped`` with this context's carrier pending for the tasks it sends.

    Only pending: the annotation itself is set around ``Client._graph_to_futures``
    alone, where the client reads ``dask.get_annotations()`` for the graph it sends.
    Set around the whole call, it would also land on every collection the call builds
    (``persist`` returns new collections: their layers keep the annotations current
    at their creation, the carrier with the submitter's values, and dask-expr warns
    about annotations it ignores, printing them).
    """
    token = None
    try:
        if _pending.get() is None:  # an outer call captured already
            found = relay.hand_over_carrier(RUNNER, named)
            if found:
                token = _pending.set(_dumps(found))
    except Exception:  # pragma: no cover - defensive: the graph goes unannotated
        token = None
    try:
        return wrapped(*args, **kwargs)
    finally:
        if token is not None:
            _pending.reset(token)


def _dumps(found: dict[str, Any]) -> bytes:
    """The carrier pickled as Dask pickles what it ships (``distributed.protocol.pickle``).

    A value of a class defined in a ``__main__`` the workers cannot import (``python -c``,
    a notebook) pickles by reference, which the worker cannot resolve: Dask then pickles
    by value (cloudpickle), so ``submit``'s tasks carry it, and so must the annotation.
    """
    try:
        from distributed.protocol.pickle import dumps

        return bytes(dumps(found))
    except Exception:  # pragma: no cover - defensive: plain pickle
        return pickle.dumps(found, pickle.HIGHEST_PROTOCOL)


def annotate_tasks(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``Client._graph_to_futures``: the pending carrier becomes the annotation."""
    blob = _pending.get()
    if blob is None:
        return wrapped(*args, **kwargs)
    annotating = None
    try:
        import dask

        # A user's own annotation of that name stays as it is (and nothing is carried).
        if ANNOTATION not in dask.get_annotations():
            annotating = dask.annotate(**{ANNOTATION: blob})
            annotating.__enter__()
    except Exception:  # pragma: no cover - defensive: the graph goes unannotated
        annotating = None
    token = _pending.set(None)  # what the call runs of the user's (a submit) is its own
    try:
        return wrapped(*args, **kwargs)
    except BaseException as exc:
        frames.hide_own_frames(exc)
        raise
    finally:
        _pending.reset(token)
        if annotating is not None:
            annotating.__exit__(None, None, None)


frames.own_frames(
    relay_func, annotate_graph, _carried_in_annotation, _without_pending, annotate_tasks
)


def enter_annotated(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``Worker.execute(key, *, stimulus_id)``, in the worker's event loop."""
    try:
        key = args[0] if args else kwargs["key"]
        task = instance.state.tasks.get(key)
        blob = (task.annotations or {}).get(ANNOTATION) if task is not None else None
    except Exception:  # pragma: no cover - defensive: executed unchanged
        blob = None
    if type(blob) is not bytes:
        return wrapped(*args, **kwargs)
    return _execute_carried(blob, key, wrapped, args, kwargs)


async def _execute_carried(
    blob: bytes, key: Any, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    from ctxrelay import carrier

    entered = None
    try:
        from dask.utils import key_split

        entered = carrier.enter(pickle.loads(blob), only=None, task_name=key_split(key))
        carrier.at_exit.ensure()
    except Exception:  # pragma: no cover - defensive: the task runs without them
        pass
    error: BaseException | None = None
    try:
        event = await wrapped(*args, **kwargs)
        error = _task_error(event)
        return event
    except BaseException as exc:
        error = exc
        raise
    finally:
        carrier.leave(entered, error)


def _task_error(event: Any) -> BaseException | None:
    """The task's exception, when ``execute`` reports a failure (it never raises it).

    The event holds it pickled (``distributed.core.error_message``), as the scheduler
    gets it; unpickled only for a failed task, for the span's exception event.
    """
    if type(event).__name__ != "ExecuteFailureEvent":
        return None
    found = getattr(getattr(event, "exception", None), "data", None)
    if isinstance(found, bytes):
        try:
            found = pickle.loads(found)
        except Exception:
            found = None
    if isinstance(found, BaseException):
        return found
    return _TaskFailed(str(getattr(event, "exception_text", "")))


class _TaskFailed(Exception):
    """Stands for a failed task's exception that could not be read back (ERROR status)."""


PATCHES = (
    Patch(NAME, "distributed.client", "Client.submit", relay_func),
    Patch(NAME, "distributed.client", "Client.map", relay_func),
    Patch(NAME, "distributed.client", "Client.compute", annotate_graph),
    Patch(NAME, "distributed.client", "Client.persist", annotate_graph),
    Patch(NAME, "distributed.client", "Client.get", annotate_graph),
    Patch(NAME, "distributed.client", "Client._graph_to_futures", annotate_tasks),
    Patch(NAME, "distributed.worker", "Worker.execute", enter_annotated),
)
