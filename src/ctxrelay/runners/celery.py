"""Celery tasks: the declared values and the trace travel in the task message's headers.

Read against Celery 5.7.0 (``celery/app/amqp.py``, ``celery/app/trace.py``,
``celery/worker/request.py``).  Distinct from ``listeners/celery.py``, which traces
Celery's signal dispatches: this module only *uses* three public signals.

* ``before_task_publish`` is sent in the publishing thread for every message Celery
  builds (``apply_async``, ``delay``, signatures, each task of a group, the header of a
  chord; the next task of a chain and a chord's body are published by the worker that
  finished the previous step, while that step's values are still set).  The receiver
  puts the carrier under the ``ctxrelay`` header.  Message headers go through the
  transport's envelope (JSON for Redis), so a value must be JSON-serializable to cross.
* On the worker, the header arrives as ``task.request.ctxrelay``.  ``task_prerun`` sets
  the values that *this worker* declared (``CTXRELAY_PROCESS_VARS``: nothing undeclared
  is ever set from a message), attaches the trace and starts the hop span;
  ``task_postrun`` (sent in a ``finally``, also after a failure) ends it, with ERROR
  when the task failed, and resets every value, so the next task on the same worker
  process or thread sees none of them.  Prefork, threads and solo pools all send both
  signals in the thread that runs the task; the gevent pool (read in
  ``celery/concurrency/gevent.py``) in the task's own greenlet, which starts with an
  empty context: what the prerun set and the tokens the postrun resets it with stay
  with that task while other tasks' greenlets run in the same thread.
* With ``opentelemetry-instrumentation-celery`` active it carries the trace and records
  the task's spans itself: the carrier then holds the values only (one trace, no double
  spans).
* Prefork children flush their spans on ``worker_process_shutdown``, the worker on
  ``worker_shutdown`` (and ``atexit``).

The patch-table entry exists to tie the receivers to ``instrument()`` /
``uninstrument()`` (connected when ``celery.app.base`` is imported, by publishers and
workers alike, and disconnected on removal); its wrapper around ``Celery.send_task``
passes through.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

from ctxrelay import relay
from ctxrelay.patching import Patch

if TYPE_CHECKING:
    from ctxrelay import carrier

# The carrier (pickle, OpenTelemetry's propagators) is imported by the first signal, not
# here: the table imports this module at every activation, Celery or not.

NAME = "celery_tasks"
RUNNER = "celery"
HEADER = "ctxrelay"
_UID = "ctxrelay.runners.celery"

#: (task id, thread) -> what task_prerun set, for task_postrun to undo.  Under gevent's
#: monkey-patching ``threading.get_ident`` is the greenlet's (the task id alone is unique).
_entered: dict[tuple[Any, int], carrier.Entered] = {}


def _json_size(value: Any) -> int:
    import json  # only once a task is published (start-up imports this module)

    return len(json.dumps(value))


def _otel_celery_active() -> bool:
    module = sys.modules.get("opentelemetry.instrumentation.celery")
    instrumentor = getattr(module, "CeleryInstrumentor", None)
    try:
        return bool(instrumentor and instrumentor().is_instrumented_by_opentelemetry)
    except Exception:
        return False


def on_publish(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``, in the publishing thread."""
    if headers is None:
        return
    try:
        found = relay.hand_over_carrier(
            RUNNER, sender, size=_json_size, trace_context=not _otel_celery_active()
        )
        if found:
            headers[HEADER] = found
    except Exception:
        pass


def on_prerun(task_id: Any = None, task: Any = None, **_: Any) -> None:
    """``task_prerun``, in the worker thread that is about to run the task."""
    from ctxrelay import carrier

    try:
        found = getattr(getattr(task, "request", None), HEADER, None)
        if not isinstance(found, dict):
            return
        entered = carrier.enter(
            found, only=frozenset(carrier.declared_paths()), task_name=getattr(task, "name", None)
        )
        if entered is not None:
            carrier.at_exit.ensure()
            _entered[(task_id, threading.get_ident())] = entered
    except Exception:
        pass


def on_postrun(task_id: Any = None, retval: Any = None, state: Any = None, **_: Any) -> None:
    """``task_postrun``: end the hop and reset every value the prerun set."""
    from ctxrelay import carrier

    entered = _entered.pop((task_id, threading.get_ident()), None)
    failed = state == "FAILURE" and isinstance(retval, BaseException)
    carrier.leave(entered, retval if failed else None)


def on_shutdown(**_: Any) -> None:
    from ctxrelay import carrier

    carrier.flush()


def _signals() -> list[tuple[Any, Any]]:
    from celery import signals

    return [
        (signals.before_task_publish, on_publish),
        (signals.task_prerun, on_prerun),
        (signals.task_postrun, on_postrun),
        (signals.worker_process_shutdown, on_shutdown),
        (signals.worker_shutdown, on_shutdown),
    ]


def _connect(module: Any) -> None:
    for signal, receiver in _signals():
        signal.connect(receiver, weak=False, dispatch_uid=f"{_UID}.{receiver.__name__}")


def _disconnect(module: Any) -> None:
    for signal, receiver in _signals():
        signal.disconnect(receiver, dispatch_uid=f"{_UID}.{receiver.__name__}")
    _entered.clear()


def passthrough(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return wrapped(*args, **kwargs)


PATCHES = (
    Patch(
        NAME,
        "celery.app.base",
        "Celery.send_task",
        passthrough,
        on_apply=_connect,
        on_remove=_disconnect,
    ),
)
