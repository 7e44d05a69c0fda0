"""``multiprocessing.pool.ThreadPool``: every task runs in a copy of its caller's context.

Read against ``Lib/multiprocessing/pool.py`` of CPython 3.10-3.13 (the parts used here
are identical in all four).

How the pool moves work.  Its threads (the workers, whose target is
``multiprocessing.pool.worker``, and the three handler threads) all start when the pool
is built; every public method then puts task tuples ``(job, i, func, args, kwds)`` on
``_taskqueue``, and the task-handler thread moves them to the workers.  So:

* ``apply_async`` (and ``apply``, which calls it) builds its one tuple in the caller:
  ``func`` is handed over right there.
* ``map``, ``map_async``, ``starmap``, ``starmap_async`` (through ``_map_async``),
  ``imap`` and ``imap_unordered`` queue a generator,
  ``_guarded_task_generation(job, func, iterable)``, that the *task-handler thread*
  iterates later: capturing while it yields would capture the handler's context.  The
  wrapper therefore captures once when the generator is created (in the caller) and
  gives every task it yields its own copy of that capture.
* For ``map``/``starmap`` (and ``imap`` with ``chunksize > 1``) a task is a chunk,
  ``mapstar((func, items))``: each item runs in its own copy as well, so an item never
  sees what an earlier item of the same chunk set.  One hop span per chunk, named after
  ``func``.

Only ``ThreadPool``'s (inherited) attributes are wrapped: the process-based ``Pool``
pickles its tasks, and a Context cannot be pickled.  The pool's threads are exempt from
the thread patch (``runners._thread_roles``, whether or not this patch is on): built
inside a request, they would otherwise pin its context for the pool's whole life.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import Context, copy_context
from typing import Any

from ctxrelay import relay, spans
from ctxrelay.patching import Patch

logger = logging.getLogger("ctxrelay")

NAME = "thread_pool"
RUNNER = "ThreadPool"
_MODULE = "multiprocessing.pool"


def relay_apply_async(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``apply_async(func, args=(), kwds={}, ...)``: runs in the caller."""
    if args:
        return wrapped(relay.relayed(RUNNER, args[0]), *args[1:], **kwargs)
    if "func" in kwargs:
        kwargs = dict(kwargs, func=relay.relayed(RUNNER, kwargs["func"]))
    return wrapped(*args, **kwargs)


def relay_task_generation(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``_guarded_task_generation``: called in the caller, iterated elsewhere."""
    tasks = wrapped(*args, **kwargs)
    try:
        func = args[1] if len(args) > 1 else kwargs.get("func")
        context, hop = relay.hand_over(RUNNER, func)
        pool = sys.modules[_MODULE]
        chunked = (pool.mapstar, pool.starmapstar)
        reraise = pool._helper_reraises_exception  # the pool's own error task
    except Exception:  # pragma: no cover - defensive: the tasks run, uncarried
        logger.debug("ctxrelay: ThreadPool tasks run uncarried", exc_info=True)
        return tasks
    return _carried(tasks, context, hop, chunked, reraise)  # type: ignore[arg-type]


def _carried(
    tasks: Iterator[Any],
    context: Context,
    hop: spans.Hop | None,
    chunked: tuple[Any, ...],
    reraise: Any,
) -> Iterator[Any]:
    """Yield each task with ``func`` replaced by a single-use runner in a fresh copy."""
    try:
        for task in tasks:
            try:
                job, i, func, args, kwds = task
                if func is not reraise:  # the iterable failed: no user code to carry
                    task = (job, i, *_in_copy(func, args, kwds, context.copy(), hop, chunked))
            except Exception:  # pragma: no cover - defensive: queue the task unchanged
                pass
            yield task
    finally:
        # The generator lives until the handler has queued its last task: no longer.
        context = None  # type: ignore[assignment]


def _in_copy(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwds: dict[str, Any],
    copy: Context,
    hop: spans.Hop | None,
    chunked: tuple[Any, ...],
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """``(func, args, kwds)`` for one task; the worker calls ``func(*args, **kwds)`` once."""
    named = func
    is_chunk = func is chunked[0] or func is chunked[1]
    if is_chunk and len(args) == 1 and type(args[0]) is tuple and len(args[0]) == 2:
        user_func, items = args[0]
        named = user_func
        args = ((_EachInOwnCopy(user_func), items),)
    if hop is None:
        return functools.partial(copy.run, func, *args, **kwds), (), {}
    # A chunk's span is named after the user's function, not after the pool's ``mapstar``.
    return relay.Relayed(func, copy, hop, named=None if named is func else named), args, kwds


class _EachInOwnCopy:
    """One item of a chunk: a fresh copy of the chunk's context (its hop span included)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, /, *args: Any) -> Any:
        return copy_context().run(self.fn, *args)


PATCHES = (
    Patch(NAME, _MODULE, "ThreadPool.apply_async", relay_apply_async),
    Patch(NAME, _MODULE, "ThreadPool._guarded_task_generation", relay_task_generation),
)
