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
  see each other's).  It is pickled to bytes, because the scheduler forwards
  annotations to the workers through msgpack.  On the worker, ``Worker.execute`` (each
  task's own asyncio task, whose context ``run_in_executor_with_context`` copies into
  the executor thread) enters the carrier for the task's run and leaves it after, so
  the next task sees none of it.  That half needs ctxrelay active in the worker process
  (a ``LocalCluster`` started by an activated process, ``ctxrelay run dask worker ...``);
  a worker without it runs the task as before, without the values.
"""

from __future__ import annotations

import pickle
from typing import Any

from ctxrelay import relay
from ctxrelay.patching import Patch

NAME = "dask"
RUNNER = "dask"
#: The task annotation that holds the pickled carrier.
ANNOTATION = "ctxrelay"


def relay_func(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Around ``Client.submit(func, ...)`` / ``Client.map(func, ...)``, in the caller."""
    if not args or kwargs.get("actor") or kwargs.get("actors"):
        return wrapped(*args, **kwargs)
    return wrapped(relay.carried_task(RUNNER, args[0]), *args[1:], **kwargs)


def annotate_graph(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``Client.compute`` / ``persist`` / ``get``, in the caller."""
    annotating = None
    try:
        import dask

        if ANNOTATION not in dask.get_annotations():  # an outer call annotated already
            found = relay.hand_over_carrier(RUNNER, wrapped)
            if found:
                annotating = dask.annotate(
                    **{ANNOTATION: pickle.dumps(found, pickle.HIGHEST_PROTOCOL)}
                )
                annotating.__enter__()
    except Exception:  # pragma: no cover - defensive: the graph goes unannotated
        annotating = None
    try:
        return wrapped(*args, **kwargs)
    finally:
        if annotating is not None:
            annotating.__exit__(None, None, None)


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
    Patch(NAME, "distributed.worker", "Worker.execute", enter_annotated),
)
