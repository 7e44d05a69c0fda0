"""Proposal P2 (docs/performance.md): the context copy rides in the work item's args.

Measure with ``benchmarks/run.py --preload benchmarks/proposals/work_item_args.py``:
the file is run in every ctxrelay process before ``instrument()``, so it replaces the
futures runner's wrapper without touching ``src/``.

What it changes: when no span is recorded, ``submit`` queues ``Context.run`` (the
unbound C method) as the work item's callable and puts the copy in front of the
arguments, instead of ``partial(copy.run, fn)``.  The task runs exactly as before
(``Context.run(copy, fn, *args, **kwargs)``, no ctxrelay frame, exceptions untouched),
but each queued task keeps 2 GC-tracked objects alive instead of 4 (no bound method,
no ``partial`` and its argument tuple), which is most of ctxrelay's cost when tasks
pile up in the queue.  Proposed home: ``relay.hand_over_call`` + ``runners/futures.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextvars import Context, copy_context
from functools import partial
from typing import Any

from ctxrelay import relay, spans
from ctxrelay.runners import futures

_RUN_IN = Context.run


def hand_over_call(
    runner: str, fn: Callable[..., Any], args: tuple[Any, ...]
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Like ``relay.hand_over``, for runners that queue ``fn`` with its ``args``."""
    kind = type(fn)
    if kind is relay.Relayed or kind is partial or relay._skipped_var_names:
        return relay.hand_over(runner, fn), args  # nesting, asyncio.to_thread, skip-vars
    if spans.settings.hops:
        hop = spans.hand_over(runner)
        if hop is not None:
            return relay.Relayed(fn, copy_context(), hop), args
    return _RUN_IN, (copy_context(), fn, *args)


def relay_work_item(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not kwargs:
        if len(args) == 4:  # 3.10-3.13: (future, fn, args, kwargs)
            future, fn, fn_args, fn_kwargs = args
            fn, fn_args = hand_over_call(futures.RUNNER, fn, fn_args)
            return wrapped(future, fn, fn_args, fn_kwargs)
        if len(args) == 2:  # 3.14+: (future, (fn, args, kwargs))
            future, task = args
            if type(task) is tuple and len(task) == 3 and callable(task[0]):
                fn, fn_args, fn_kwargs = task
                fn, fn_args = hand_over_call(futures.RUNNER, fn, fn_args)
                return wrapped(future, (fn, fn_args, fn_kwargs))
    return wrapped(*args, **kwargs)


futures.PATCHES = tuple(
    dataclasses.replace(patch, wrapper=relay_work_item)
    if patch.wrapper is futures.relay_work_item
    else patch
    for patch in futures.PATCHES
)
