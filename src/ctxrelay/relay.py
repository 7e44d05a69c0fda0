"""The hand-over mechanism: what every runner calls when work leaves for another thread.

Every runner's hand-over (``Thread.start``, ``submit``, a pool's queueing,
``run_in_executor``, ``anyio.to_thread``) goes through :func:`hand_over`, in the origin
thread: it captures a copy of the caller's ``contextvars`` context (unless the runner
makes its own copy) and asks :func:`ctxrelay.spans.admit` whether a hop span is to be
recorded.  The work later runs inside that copy in the target thread.  Each piece of
work gets its own copy, so:

* a pool task never sees what an earlier task on the same worker set, and a worker
  never pins the context of whichever ``submit`` happened to start it;
* two threads never enter the same ``Context`` at once ("cannot enter context").

The listener buses do not hand work over (their listeners run where the bus runs
them) and do not come here.

A captured context must not outlive its work: a :class:`Relayed` drops its context the
moment it starts running, and the frames here clear their locals before an exception
leaves them, because a failed ``Future`` keeps the traceback (and so these frames)
alive for as long as the application holds the future.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from contextvars import Context, copy_context
from typing import Any, ParamSpec, TypeVar

from ctxrelay import left_behind, spans
from ctxrelay.frames import hide_own_frames, own_frames, without_own_frames
from ctxrelay.spans import settings as _span_settings

__all__ = [
    "Observer",
    "Relayed",
    "bind",
    "capture",
    "carried_task",
    "hand_over",
    "hand_over_carrier",
    "hide_own_frames",
    "leaves_vars_behind",
    "own_frames",
    "relayed",
    "relayed_call",
    "relayed_single_use",
    "released",
    "run_hop",
    "runs_in_own_context",
    "set_observer",
    "without_own_frames",
]

T = TypeVar("T")
P = ParamSpec("P")
logger = logging.getLogger("ctxrelay")

_BuiltinMethod: Any = type(Context().run)  # Any: `type(x) is` must not narrow x to it
_Partial = functools.partial
_run_in: Callable[..., Any] = Context.run

#: ``observer(runner, fn, context, hop)``: told of every hand-over, in the origin thread,
#: after the decision (``context`` None when the runner copies for itself, ``hop`` None
#: when no span is recorded).  None when nothing observes: one check per hand-over.
Observer = Callable[[str, Any, "Context | None", "spans.Hop | None"], None]
_observer: Observer | None = None

#: True while :func:`hand_over` would do nothing but ``copy_context()`` when hop spans
#: are off: no observer, no variable to leave behind (:mod:`ctxrelay.left_behind`).
#: The front ends then copy inline and save the hot path a Python call (``submit`` is
#: the hottest path ctxrelay has); the result is exactly what :func:`hand_over` returns.
_only_copy = True


def _refresh() -> None:
    global _only_copy
    _only_copy = _observer is None and left_behind.nothing


left_behind.on_change = _refresh


#: ``on_release(context)``: told, in the thread that ran it, that the work which was a
#: whole thread's life has ended and let go of its captured ``context`` (the copy may be
#: freed much later: on free-threaded builds an object is freed by the thread that made
#: it, the next time that thread runs Python code).  Set with the observer.
_on_release: Callable[[Context], None] | None = None


#: ``on_start(hop, fn)``: told in the target thread, inside the carried context (the
#: current span is still the parent), as a traced piece of work starts, before its hop
#: span.  Set with the observer.
_on_start: Callable[[spans.Hop, Any], None] | None = None


def set_observer(
    observer: Observer | None,
    on_release: Callable[[Context], None] | None = None,
    on_start: Callable[[spans.Hop, Any], None] | None = None,
) -> None:
    """Have ``observer`` told of each hand-over from now on (None: stop)."""
    global _observer, _on_release, _on_start
    _observer = observer
    _on_release = on_release if observer is not None else None
    _on_start = on_start if observer is not None else None
    _refresh()


def _tell_start(hop: spans.Hop, fn: Any) -> None:
    on_start = _on_start
    if on_start is None:
        return
    try:
        on_start(hop, fn)
    except Exception:
        logger.debug("ctxrelay: the start observer failed", exc_info=True)


def released(context: Context | None) -> None:
    """A thread's run in ``context`` is over (thread runners call this); never raises."""
    on_release = _on_release
    if on_release is None or context is None:
        return
    try:
        on_release(context)
    except Exception:
        logger.debug("ctxrelay: the release observer failed", exc_info=True)


def skip_vars(names: frozenset[str]) -> None:
    """Never carry ContextVars with these names; they start at their default."""
    left_behind.configure_skipped(frozenset(names))


def leaves_vars_behind() -> bool:
    """Whether some variable is never carried (a full copy would carry it)."""
    return not left_behind.nothing


def capture() -> Context:
    """A private copy of the caller's context, less what must not be carried.

    (Variables that belong to their thread, and those the user excluded:
    :mod:`ctxrelay.left_behind`.)
    """
    context = copy_context()
    if not left_behind.nothing:
        context = left_behind.leave_behind(context)
    return context


def hand_over(
    runner: str, fn: Any, *, carry: bool = True
) -> tuple[Context | None, spans.Hop | None]:
    """THE hand-over, in the origin thread: ``(copy of the context, hop or None)``.

    ``carry=False`` for runners that copy the context themselves (anyio, a thread on
    3.14 that inherits it): only the span is decided.  May raise; the front ends below
    and every runner turn any failure into "hand the work over unchanged".
    """
    context = capture() if carry else None
    hop = spans.admit(runner) if _span_settings.hops else None
    if _observer is not None:
        _tell_observer(runner, fn, context, hop)
    return context, hop


def _tell_observer(runner: str, fn: Any, context: Context | None, hop: spans.Hop | None) -> None:
    observer = _observer
    if observer is None:  # set_observer(None) from another thread in between
        return
    try:
        observer(runner, fn, context, hop)
    except Exception:
        logger.debug("ctxrelay: the hand-over observer failed", exc_info=True)


def _context_run_target(fn: Any) -> tuple[Context, Any, tuple[Any, ...], dict[str, Any]] | None:
    """``(ctx, f, args, kwargs)`` if ``fn`` is ``partial(ctx.run, f, ...)``.

    ``asyncio.to_thread`` and hand-written code already pick the context to run in; that
    choice wins, and ctxrelay only adds the hop span inside it.
    """
    if type(fn) is _Partial:
        run: Any = fn.func
        if type(run) is _BuiltinMethod and type(run.__self__) is Context and fn.args:
            return run.__self__, fn.args[0], fn.args[1:], fn.keywords
    return None


def runs_in_own_context(fn: Any) -> bool:
    """True for ``partial(ctx.run, f, ...)``: the caller already chose a context."""
    return _context_run_target(fn) is not None


class Relayed:
    """``fn`` and its captured context: runs once in that copy, under the hop span if any.

    Queued when a hop span is recorded, or when the runner's own frames keep the queued
    callable after it ran (:func:`relayed_single_use`); otherwise the front ends queue a
    plain ``partial(context.run, fn)``.  ``named`` is what the span is named after when
    it is not ``fn`` (a chunk of ``ThreadPool.map`` is named after the user's function,
    not the pool's ``mapstar``).  Single use: it lets go of the context the moment it
    starts; a second call (only possible if someone kept the callable) runs ``fn`` in
    the caller's context rather than entering a context that may already be in use.
    """

    __slots__ = ("context", "fn", "hop", "named")

    def __init__(
        self,
        fn: Callable[..., Any],
        context: Context,
        hop: spans.Hop | None,
        named: Any = None,
    ) -> None:
        self.fn = fn
        self.context: Context | None = context
        self.hop = hop
        self.named = named

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        # Positional-only ``self``: the user's function may take a ``self`` keyword.
        context = self.context
        if context is None:
            return self.fn(*args, **kwargs)
        self.context = None
        hop = self.hop
        try:
            if hop is None:
                return context.run(self.fn, *args, **kwargs)
            self.hop = None
            return context.run(
                run_hop,
                hop=hop,
                fn=self.fn,
                args=args,
                kwargs=kwargs,
                context_vars=len(context),
                named=self.named,
            )
        except BaseException as exc:
            hide_own_frames(exc)
            raise
        finally:
            # The traceback of a failed task keeps this frame: let go of the context.
            context = None

    def __repr__(self) -> str:
        return f"<ctxrelay.Relayed {self.fn!r}>"


def relayed(runner: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """What to queue instead of ``fn``, for runners that queue one callable.

    With no span to record it is one C-level ``partial(context.run, fn)`` (no Python
    frame at run time, and nothing of ctxrelay left in a failed task's traceback).
    Never raises: if anything here fails, ``fn`` itself is returned (propagation lost,
    application intact).
    """
    kind = type(fn)
    if kind is Relayed:  # an outer patch (run_in_executor) already took care of it
        return fn
    try:
        if kind is _Partial:
            chosen = _context_run_target(fn)
            if chosen is not None:
                return _span_in_chosen_context(runner, fn, chosen)
        if _only_copy and not _span_settings.hops:  # what hand_over() would return
            return _Partial(copy_context().run, fn)
        context, hop = hand_over(runner, fn)
        if hop is None:
            return _Partial(context.run, fn)  # type: ignore[union-attr]
        return Relayed(fn, context, hop)  # type: ignore[arg-type]
    except Exception:
        logger.debug("ctxrelay: hand-over failed; the work runs uncarried", exc_info=True)
        return fn


def relayed_call(
    runner: str, fn: Callable[..., Any], args: tuple[Any, ...]
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """What to queue instead of ``(fn, args)``, for runners that queue them apart.

    With no span to record, the queued callable is ``Context.run`` itself and the copy
    goes in front of the arguments: the task runs as ``Context.run(copy, fn, *args)``,
    and each task waiting in a queue keeps 2 objects alive for the garbage collector
    instead of 4 (no bound method, no ``partial`` and its tuple).  On a busy pool that
    difference is most of ctxrelay's cost (docs/performance.md).  Never raises.
    """
    kind = type(fn)
    if kind is Relayed or kind is _Partial:
        return relayed(runner, fn), args
    if _only_copy and not _span_settings.hops:  # what hand_over() would return
        return _run_in, (copy_context(), fn, *args)
    try:
        context, hop = hand_over(runner, fn)
        if hop is None:
            return _run_in, (context, fn, *args)
        return Relayed(fn, context, hop), args  # type: ignore[arg-type]
    except Exception:
        logger.debug("ctxrelay: hand-over failed; the work runs uncarried", exc_info=True)
        return fn, args


def relayed_single_use(runner: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`relayed` for runners whose own frames keep the queued callable after it ran.

    CPython 3.14's thread pool runs a task as ``WorkerContext.run(task)``, whose frame
    unpacks ``fn, args, kwargs`` into locals; a failed task's traceback (kept by its
    ``Future``) keeps that frame.  A ``partial(context.run, fn)`` there would pin the
    copy for as long as the application holds the future, so the copy sits in a
    :class:`Relayed`, which lets go of it the moment it starts (one Python frame more
    per task).  A callable that already runs in a context of the caller's choice
    (``partial(ctx.run, f)``) keeps it, as with :func:`relayed`.  Never raises.
    """
    kind = type(fn)
    if kind is Relayed:
        return fn
    try:
        if kind is _Partial and _context_run_target(fn) is not None:
            return relayed(runner, fn)
        context, hop = hand_over(runner, fn)
        return Relayed(fn, context, hop)  # type: ignore[arg-type]
    except Exception:
        logger.debug("ctxrelay: hand-over failed; the work runs uncarried", exc_info=True)
        return fn


#: :mod:`ctxrelay.carrier`, once the first hand-over leaves the process (an import
#: statement per hand-over costs more than the rest of the capture's bookkeeping).
_carrier: Any = None


def _load_carrier() -> Any:
    global _carrier
    from ctxrelay import carrier

    _carrier = carrier
    return carrier


def hand_over_carrier(runner: str, fn: Any, **options: Any) -> dict[str, Any]:
    """:func:`hand_over` for work that leaves the process: a carrier, not a Context.

    Plain picklable data (the declared ContextVars' values, the trace context and
    whether a hop span is recorded on the other side) that the engine ships with the
    task; see :mod:`ctxrelay.carrier`.  The span decision (and the observer) are
    :func:`hand_over`'s.  Imported lazily: the propagator set-up costs start-up time
    to processes that never cross a boundary.  May raise, like :func:`hand_over`.
    """
    carrier = _carrier or _load_carrier()
    _, hop = hand_over(runner, fn, carry=False)
    return carrier.capture(runner, hop=hop is not None, **options)  # type: ignore[no-any-return]


def carried_task(runner: str, fn: Any, fresh: bool = True) -> Any:
    """What a process runner pickles instead of ``fn``: a :class:`ctxrelay.carrier.Task`.

    ``fn`` itself when there is nothing to carry, or when it already is one (an outer
    patch took care of it).  ``fresh``: see :func:`ctxrelay.carrier.run`.  Never raises.
    """
    carrier = _carrier or _load_carrier()
    if type(fn) is carrier.Task:
        return fn
    try:
        # hand_over_carrier's two steps, inlined: this runs at every process-pool submit.
        _, hop = hand_over(runner, fn, carry=False)
        found = carrier.capture(runner, hop=hop is not None)
        return carrier.Task(fn, found, fresh) if found else fn
    except Exception:
        logger.debug("ctxrelay: hand-over failed; the work runs uncarried", exc_info=True)
        return fn


def _span_in_chosen_context(
    runner: str,
    fn: Callable[..., Any],
    chosen: tuple[Context, Any, tuple[Any, ...], dict[str, Any]],
) -> Callable[..., Any]:
    """The caller already runs ``fn`` in a context of its choice: add the hop span only."""
    context, target, args, kwargs = chosen
    _, hop = hand_over(runner, target, carry=False)
    if hop is None:
        return fn
    bound = _Partial(target, *args, **kwargs) if args or kwargs else target
    # A Relayed, so that an inner patch (the pool, after run_in_executor) sees the
    # work as handled and adds no second span.
    return Relayed(bound, context, hop, named=target)


def run_hop(
    *,
    hop: spans.Hop,
    fn: Callable[..., T],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    context_vars: int | None = None,
    thread_name: str | None = None,
    named: Any = None,
) -> T:
    """Run ``fn(*args, **kwargs)`` under a hop span; called inside the carried context.

    ``named`` is what the span is named after when it is not ``fn`` itself;
    ``context_vars`` and ``thread_name`` are measured here when not given.

    The user's function is called exactly once, outside any ctxrelay ``try`` that could
    swallow its exception: failures in span bookkeeping are dropped, the work is not.
    """
    span = token = None
    if _on_start is not None:
        _tell_start(hop, fn if named is None else named)
    try:
        if context_vars is None:
            context_vars = len(copy_context())
        if thread_name is None:
            thread_name = threading.current_thread().name
        span, token = spans.start_hop(
            hop, fn if named is None else named, context_vars, thread_name
        )
    except Exception:
        logger.debug("ctxrelay: could not start a hop span", exc_info=True)
        span = token = None
    try:
        if kwargs:
            return fn(*args, **kwargs)
        return fn(*args)
    except BaseException as exc:
        if span is not None:
            spans.record_failure(span, exc)
        raise
    finally:
        if span is not None:
            spans.end_hop(span, token)
        # The token refers to the carried Context; a kept traceback must not pin it.
        span = token = None


own_frames(Relayed.__call__, run_hop)


class _Bound:
    """See :func:`bind`."""

    __slots__ = ("__weakref__", "context", "fn")

    def __init__(self, fn: Callable[..., Any], context: Context) -> None:
        self.fn = fn
        self.context = context

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        # A fresh copy per call: concurrent calls never share (or fight over) a Context.
        return self.context.copy().run(self.fn, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<ctxrelay.bind {self.fn!r}>"


def bind(fn: Callable[P, T]) -> Callable[P, T]:
    """Capture the caller's context now; run every call of the result in a fresh copy.

    The correct form of the manual ``ctx.run`` workaround: safe to call from many
    threads at once, and no call sees what another call set.
    """
    bound = _Bound(fn, capture())
    try:
        functools.update_wrapper(bound, fn, updated=())
    except Exception:  # a callable whose attributes cannot be read: no metadata
        pass
    return bound
