"""THE propagation mechanism: every patch in ctxrelay calls this module.

At hand-over (``Thread.start``, ``submit``, a pool's queueing) the origin thread
captures a copy of its ``contextvars`` context; the work later runs inside that copy in
the target thread.  Each piece of work gets its own copy, so:

* a pool task never sees what an earlier task on the same worker set, and a worker
  never pins the context of whichever ``submit`` happened to start it;
* two threads never enter the same ``Context`` at once ("cannot enter context").

A captured context must not outlive its work: a :class:`Relayed` drops its context the
moment it starts running, and the frames here clear their locals before an exception
leaves them, because a failed ``Future`` keeps the traceback (and so these frames)
alive for as long as the application holds the future.
"""

from __future__ import annotations

import functools
import threading
from contextvars import Context, copy_context
from typing import Any, Callable, ParamSpec, TypeVar

from ctxrelay import spans
from ctxrelay.spans import settings as _span_settings

__all__ = [
    "Relayed",
    "bind",
    "capture",
    "hand_over",
    "hand_over_single_use",
    "run_hop",
    "thread_is_exempt",
]

T = TypeVar("T")
P = ParamSpec("P")

_BuiltinMethod: Any = type(Context().run)  # Any: `type(x) is` must not narrow x to it
_Partial = functools.partial

#: ContextVar names that are never carried into another thread (CTXRELAY_SKIP_VARS).
_skipped_var_names: frozenset[str] = frozenset()


def skip_vars(names: frozenset[str]) -> None:
    """Never carry ContextVars with these names; they start at their default."""
    global _skipped_var_names
    _skipped_var_names = frozenset(names)


def skips_vars() -> bool:
    """Whether CTXRELAY_SKIP_VARS names any variable (a full copy would carry them)."""
    return bool(_skipped_var_names)


def capture() -> Context:
    """A private copy of the caller's context, less the variables the user excluded."""
    context = copy_context()
    if _skipped_var_names:
        context = _without_skipped(context)
    return context


def _without_skipped(context: Context) -> Context:
    # A Context cannot forget a variable, so build a new one with the rest.
    kept = Context()
    for var, value in context.items():
        if var.name not in _skipped_var_names:
            kept.run(var.set, value)
    return kept


def _context_run_target(fn: Any) -> tuple[Context, Any, tuple[Any, ...], dict[str, Any]] | None:
    """``(ctx, f, args, kwargs)`` if ``fn`` is ``ctx.run`` or ``partial(ctx.run, f, ...)``.

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
    """``fn`` plus the captured context and the hop span to record; runs once, in that copy.

    Queued when a span is recorded (without one, :func:`hand_over` queues a plain
    ``partial(context.run, fn)``); with no ``hop`` it only marks the work as relayed, or
    runs a callable that records its own span (``thread_pool`` names a chunk's span after
    the user's function).  Single use: pools call each submitted callable once;
    a second call (only possible if someone kept the callable) runs ``fn`` in the
    caller's context rather than entering a context that may already be in use.
    """

    __slots__ = ("context", "fn", "hop")

    def __init__(
        self, fn: Callable[..., Any], context: Context | None, hop: spans.Hop | None
    ) -> None:
        self.fn = fn
        self.context = context
        self.hop = hop

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        context = self.context
        if context is None:
            return self.fn(*args, **kwargs)
        self.context = None
        hop = self.hop
        try:
            if hop is None:
                return context.run(self.fn, *args, **kwargs)
            self.hop = None
            return context.run(run_hop, hop, self.fn, args, kwargs, len(context), None)
        finally:
            # The traceback of a failed task keeps this frame: let go of the context.
            context = None

    def __repr__(self) -> str:
        return f"<ctxrelay.Relayed {self.fn!r}>"


def hand_over(runner: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Called in the origin thread when ``fn`` is handed to another thread.

    Returns what should be queued instead of ``fn``.  This is the hot path of every
    ``submit``: with no span to record it costs one context copy and one C-level
    ``partial(context.run, fn)`` (no Python frame at run time, and nothing of ctxrelay
    left in a failed task's traceback).  Never raises: if anything here fails, the work
    is handed over unchanged (propagation lost, application intact).
    """
    kind = type(fn)
    if kind is Relayed:  # an outer patch (run_in_executor) already took care of it
        return fn
    try:
        if kind is _Partial:
            chosen = _context_run_target(fn)
            if chosen is not None:
                return _with_span_only(runner, fn, chosen)
        context = capture()
        if _span_settings.hops:
            hop = spans.hand_over(runner)
            if hop is not None:
                return Relayed(fn, context, hop)
        return _Partial(context.run, fn)
    except Exception:  # pragma: no cover - defensive: never break the host app
        return fn


def hand_over_single_use(runner: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`hand_over` for runners whose own frames keep the queued callable after it ran.

    CPython 3.14's thread pool runs a task as ``WorkerContext.run(task)``, whose frame
    unpacks ``fn, args, kwargs`` into locals; a failed task's traceback (kept by its
    ``Future``) keeps that frame.  A ``partial(context.run, fn)`` there would pin the
    copy for as long as the application holds the future, so the copy sits in a
    :class:`Relayed`, which lets go of it the moment it starts (one Python frame more
    per task).  A callable that already runs in a context of the caller's choice
    (``partial(ctx.run, f)``) keeps it, as with :func:`hand_over`.
    """
    kind = type(fn)
    if kind is Relayed:
        return fn
    try:
        if kind is _Partial and _context_run_target(fn) is not None:
            return hand_over(runner, fn)
        hop = spans.hand_over(runner) if _span_settings.hops else None
        return Relayed(fn, capture(), hop)
    except Exception:  # pragma: no cover - defensive: never break the host app
        return fn


_run_in: Callable[..., Any] = Context.run


def hand_over_call(
    runner: str, fn: Callable[..., Any], args: tuple[Any, ...]
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """:func:`hand_over` for runners that queue ``fn`` and its ``args`` apart (a work item).

    With no span to record, the queued callable is ``Context.run`` itself and the copy
    goes in front of the arguments: the task runs as ``Context.run(copy, fn, *args)``,
    and each task waiting in a queue keeps 2 objects alive for the garbage collector
    instead of 4 (no bound method, no ``partial`` and its tuple).  On a busy pool that
    difference is most of ctxrelay's cost (docs/performance.md).
    """
    kind = type(fn)
    if kind is Relayed or kind is _Partial or _skipped_var_names:
        return hand_over(runner, fn), args
    try:
        if _span_settings.hops:
            hop = spans.hand_over(runner)
            if hop is not None:
                return Relayed(fn, copy_context(), hop), args
        return _run_in, (copy_context(), fn, *args)
    except Exception:  # pragma: no cover - defensive: never break the host app
        return fn, args


def _with_span_only(
    runner: str,
    fn: Callable[..., Any],
    chosen: tuple[Context, Any, tuple[Any, ...], dict[str, Any]],
) -> Callable[..., Any]:
    """The caller already runs ``fn`` in a context of its choice: add the hop span only."""
    hop = spans.hand_over(runner)
    if hop is None:
        return fn
    context, target, args, kwargs = chosen
    # Wrapped in a context-less Relayed so that an inner patch (the pool, after
    # run_in_executor) sees the work as handled and adds no second span.
    return Relayed(
        _Partial(context.run, run_hop, hop, target, args, kwargs, None, None), None, None
    )


def run_hop(
    hop: spans.Hop,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    context_vars: int | None,
    thread_name: str | None,
    named: Any = None,
) -> T:
    """Run ``fn`` under a hop span; called inside the carried context.

    ``named`` is what the span is named after when it is not ``fn`` itself (a thread's
    ``target`` rather than the ``run`` method that calls it).

    The user's function is called exactly once, outside any ctxrelay ``try`` that could
    swallow its exception: failures in span bookkeeping are dropped, the work is not.
    """
    span = token = None
    try:
        if context_vars is None:
            context_vars = len(copy_context())
        if thread_name is None:
            thread_name = threading.current_thread().name
        span, token = spans.start_hop(
            hop, fn if named is None else named, context_vars, thread_name
        )
    except Exception:  # pragma: no cover - defensive
        span = token = None
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:
        if span is not None:
            spans.record_failure(span, exc)
        raise
    finally:
        if span is not None:
            spans.end_hop(span, token)
        # The token refers to the carried Context; a kept traceback must not pin it.
        span = token = None


class _Bound:
    """See :func:`bind`."""

    __slots__ = ("__weakref__", "context", "fn")

    def __init__(self, fn: Callable[..., Any], context: Context) -> None:
        self.fn = fn
        self.context = context

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
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
    except (AttributeError, TypeError):
        pass
    return bound


# --- threads that must never capture a context --------------------------------------
# Pool workers live for many tasks: a context captured when one is started would pin
# whatever the submitting request held, for the worker's whole life (a leak, and a
# stale snapshot).  Pools carry the context per task instead.
_exempt_targets: set[Any] = set()
_exempt_classes: set[type] = set()


def exempt_thread_target(fn: Any) -> None:
    """Threads whose ``target`` is ``fn`` (a pool's worker loop) never capture."""
    _exempt_targets.add(getattr(fn, "__func__", fn))


def exempt_thread_class(cls: type) -> None:
    """Threads of exactly this class (a pool's worker class) never capture."""
    _exempt_classes.add(cls)


def clear_exemptions() -> None:
    """Forget every exemption (``uninstrument()``); patches re-register theirs when applied."""
    _exempt_targets.clear()
    _exempt_classes.clear()


def thread_is_exempt(thread: threading.Thread) -> bool:
    if type(thread) in _exempt_classes:
        return True
    target = thread.__dict__.get("_target")
    if target is None:
        return False
    func = getattr(target, "__func__", target)
    if func in _exempt_targets:
        return True
    # The OpenTelemetry SDK's own threads (batch span processor, metric readers):
    # a span about exporting spans would recurse, and their life is the process's.
    module = getattr(func, "__module__", None)
    return isinstance(module, str) and module.startswith("opentelemetry.")


# --- threads started on behalf of another runner ------------------------------------
# Some runners hand work over by starting a thread (a server's thread per request):
# the thread patch carries the context, and the runner only names the hop.
_thread_runner = threading.local()


class threads_started_as:  # used as a context manager, like a function
    """Name the hop of the threads this thread starts inside the ``with`` block.

    ``with threads_started_as("socketserver"): ...``: their hop spans report that runner
    instead of ``Thread``.  Propagation itself is the thread patch's, unchanged.
    """

    __slots__ = ("previous", "runner")

    def __init__(self, runner: str) -> None:
        self.runner = runner
        self.previous: str | None = None

    def __enter__(self) -> None:
        self.previous = getattr(_thread_runner, "name", None)
        _thread_runner.name = self.runner

    def __exit__(self, *exc: object) -> None:
        _thread_runner.name = self.previous


def naming_threads(
    runner: str,
) -> Callable[[Callable[..., T], Any, tuple[Any, ...], dict[str, Any]], T]:
    """A wrapt wrapper: threads started during the wrapped call get hops named ``runner``."""

    def wrapper(
        wrapped: Callable[..., T], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        with threads_started_as(runner):
            return wrapped(*args, **kwargs)

    return wrapper


def thread_runner_name() -> str | None:
    """The runner named by an enclosing :class:`threads_started_as` in this thread."""
    return getattr(_thread_runner, "name", None)
