"""One context for the whole life of an iterator that a pool steps one ``next()`` at a time.

Gradio's ``SyncToAsyncIterator`` and Starlette's ``iterate_in_threadpool`` hand each
``next()`` of a sync generator to ``anyio.to_thread.run_sync``, which runs it in a fresh
copy of the consumer's context: whatever the generator set before its first ``yield``
is gone at the second.  Stepped from one thread, a generator would run every step in
its consumer's one context; :func:`step_in_own_context` gives it that back.

This is the one place where ctxrelay enters the *same* context more than once: the
steps of one iterator are sequential, and a step that overlaps another (never done by
these runners) runs as it would without ctxrelay instead of failing with "cannot enter
context".
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from contextvars import Context
from typing import Any, TypeVar

from ctxrelay import relay
from ctxrelay.relay import capture

__all__ = ["step_in_own_context", "stepping_in_own_context"]

T = TypeVar("T")


class _IteratorContext:
    """The context one iterator runs in for its whole life, and a flag for "in use"."""

    __slots__ = ("busy", "context", "ref")

    def __init__(self, context: Context, ref: weakref.ref[Any]) -> None:
        self.context = context
        self.ref = ref  # kept so that its callback fires when the iterator dies
        self.busy = threading.Lock()


#: id(iterator) -> its context; dropped when the iterator is collected or raises.
_iterator_contexts: dict[int, _IteratorContext] = {}


def _forget_iterator(key: int, ref: weakref.ref[Any]) -> None:
    entry = _iterator_contexts.get(key)
    if entry is not None and entry.ref is ref:
        # pop, not del: a weakref callback must never raise (a racing drop is fine).
        _iterator_contexts.pop(key, None)


def step_in_own_context(step: Callable[[Any], T], iterator: Any) -> T:
    """Run ``step(iterator)`` (one ``next()``) in the one context kept for ``iterator``.

    Called in the worker thread, inside the copy the hand-over made for this step.  The
    first step copies that context once more and keeps the copy for as long as the
    iterator lives (weakly, by identity); every later step enters that same copy, so a
    value set at one step is there at the next.  The kept copy is the first step's, so
    spans a generator starts at a later step (outside a span of its own) have the first
    step's hop as parent: the generator's trace position is where it started.

    Steps of one iterator come one after another; should two ever overlap (a plain
    iterator stepped from two threads), the second runs as it would have without
    ctxrelay, since a Context cannot be entered twice.  Iterators that cannot be
    weakly referenced (built-in list/tuple iterators, which run no user code) are
    stepped unchanged.
    """
    key = id(iterator)
    entry = _iterator_contexts.get(key)
    if entry is None:
        try:
            ref = weakref.ref(iterator, functools.partial(_forget_iterator, key))
        except TypeError:
            return step(iterator)
        entry = _IteratorContext(capture(), ref)
        _iterator_contexts[key] = entry
    busy = entry.busy
    if not busy.acquire(blocking=False):
        return step(iterator)
    context = entry.context
    try:
        return context.run(step, iterator)
    except BaseException:
        # A generator that raised (StopIteration included) is finished: let go now.
        _forget_iterator(key, entry.ref)
        raise
    finally:
        busy.release()
        # A kept traceback holds this frame: it must not pin the generator's context.
        del context, entry


def stepping_in_own_context(
    wrapped: Callable[[Any], T], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    """wrapt wrapper for a ``step(iterator)`` helper that a pool calls once per ``next()``."""
    if len(args) == 1 and not kwargs:
        try:
            return step_in_own_context(wrapped, args[0])
        except BaseException as exc:
            relay.hide_own_frames(exc)  # the caller's traceback lists the framework's frames
            raise
    return wrapped(*args, **kwargs)


relay.own_frames(stepping_in_own_context, step_in_own_context)
