"""``concurrent.futures.ThreadPoolExecutor``: carry the context of each ``submit`` to its task.

Read against ``concurrent/futures/thread.py`` of CPython 3.10-3.14.

``submit`` builds one ``_WorkItem(future, fn, args, kwargs)`` (3.14:
``_WorkItem(future, (fn, args, kwargs))``) in the caller's thread, and a worker calls
it later.  Wrapping the module global ``_WorkItem`` puts the relayed callable into the
work item:

* it covers ``submit``, ``map`` (which calls ``submit``) and subclasses that call
  ``super().submit``, with ``fn`` given any way the signature allows;
* it leaves ``ThreadPoolExecutor.submit`` to OpenTelemetry's threading instrumentor,
  whose ``unwrap`` would otherwise strip whichever of the two is outermost;
* 3.14's ``InterpreterPoolExecutor`` (a ``ThreadPoolExecutor`` subclass) queues the
  same plain ``(fn, args, kwargs)`` triple (since 3.14.0b4) and sends it to another
  interpreter, where neither a ``Context`` nor ctxrelay's wrapper can go
  (``NotShareableError``): its work items are passed through exactly as they are
  (see :func:`_queued_by_interpreter_pool`); ``ProcessPoolExecutor`` never reaches
  this module.
* 3.14's worker runs a task as ``WorkerContext.run(task)``, a frame that a failed
  task's traceback keeps: the copy goes into a single-use holder there
  (:func:`relay.relayed_single_use`), never into the task's arguments.

Read against 3.14.7's ``concurrent/futures/thread.py`` and ``interpreter.py`` too.

The pool's worker threads are exempt from the thread patch (``runners._thread_roles``,
whether or not this patch is on): started inside a ``submit``, they would otherwise pin
that submit's context for their whole life.
"""

from __future__ import annotations

import sys
from typing import Any

from ctxrelay.patching import Patch
from ctxrelay.relay import relayed_call, relayed_single_use

NAME = "futures"
RUNNER = "ThreadPoolExecutor"


def relay_work_item(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not kwargs:
        if len(args) == 4:  # 3.10-3.13: (future, fn, args, kwargs)
            future, fn, fn_args, fn_kwargs = args
            fn, fn_args = relayed_call(RUNNER, fn, fn_args)
            return wrapped(future, fn, fn_args, fn_kwargs)
        if len(args) == 2:  # 3.14+: (future, task)
            future, task = args
            if (
                type(task) is tuple
                and len(task) == 3
                and callable(task[0])
                and not _queued_by_interpreter_pool()
            ):
                fn, fn_args, fn_kwargs = task
                return wrapped(future, (relayed_single_use(RUNNER, fn), fn_args, fn_kwargs))
    return wrapped(*args, **kwargs)


_INTERPRETER_MODULE = "concurrent.futures.interpreter"


def _queued_by_interpreter_pool() -> bool:
    """3.14: is the work item being built by an ``InterpreterPoolExecutor.submit``?

    Its task looks like a thread pool's, and ``_WorkItem`` is not told which pool
    queues it, so the caller is looked up: ``submit`` (inherited from
    ``ThreadPoolExecutor``, so any pool however old) is the nearest frame named so.
    That module is imported lazily (``concurrent.futures.InterpreterPoolExecutor``):
    until something imports it no such pool exists and this costs one dict lookup.
    """
    module = sys.modules.get(_INTERPRETER_MODULE)
    pool_class = getattr(module, "InterpreterPoolExecutor", None)
    if pool_class is None:
        return False
    frame: Any = None
    try:
        # 1: relay_work_item; 2: submit with wrapt's C wrapper (3 with its Python one).
        frame = sys._getframe(2)
        for _ in range(3):
            if frame is None:
                break
            if frame.f_code.co_name == "submit":
                return isinstance(frame.f_locals.get("self"), pool_class)
            frame = frame.f_back
    except Exception:  # pragma: no cover - defensive
        pass
    finally:
        frame = None
    # Not found: an unknown caller builds the item; a ThreadPoolExecutor is the norm.
    return False


PATCHES = (Patch(NAME, "concurrent.futures.thread", "_WorkItem", relay_work_item),)
