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
* 3.14's ``InterpreterPoolExecutor`` resolves its task to pickled bytes, not a
  ``(fn, args, kwargs)`` triple, and is passed through untouched (a Context cannot be
  pickled); ``ProcessPoolExecutor`` never reaches this module.

The pool's worker threads are exempt from the thread patch: started inside a
``submit``, they would otherwise pin that submit's context for their whole life.
"""

from __future__ import annotations

from typing import Any

from ctxrelay import relay
from ctxrelay.patching import Patch
from ctxrelay.relay import hand_over_call

NAME = "futures"
RUNNER = "ThreadPoolExecutor"


def relay_work_item(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not kwargs:
        if len(args) == 4:  # 3.10-3.13: (future, fn, args, kwargs)
            future, fn, fn_args, fn_kwargs = args
            fn, fn_args = hand_over_call(RUNNER, fn, fn_args)
            return wrapped(future, fn, fn_args, fn_kwargs)
        if len(args) == 2:  # 3.14+: (future, task)
            future, task = args
            if type(task) is tuple and len(task) == 3 and callable(task[0]):
                fn, fn_args, fn_kwargs = task
                fn, fn_args = hand_over_call(RUNNER, fn, fn_args)
                return wrapped(future, (fn, fn_args, fn_kwargs))
    return wrapped(*args, **kwargs)


def _exempt_workers(pool_module: Any) -> None:
    relay.exempt_thread_target(pool_module._worker)


PATCHES = (
    Patch(
        NAME, "concurrent.futures.thread", "_WorkItem", relay_work_item, on_apply=_exempt_workers
    ),
)
