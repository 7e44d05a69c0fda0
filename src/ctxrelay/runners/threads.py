"""``threading.Thread`` and ``threading.Timer``: carry the context of whoever calls ``start()``.

Read against ``threading.py`` of CPython 3.10-3.13 and 3.14.7 (``Thread(context=)``,
``sys.flags.thread_inherit_context``).

Why this hook point, and not ``Thread.start``/``Thread.run``:

* The hand-over happens inside ``start()``, which calls the module global
  ``_start_new_thread`` (3.10-3.12) or ``_start_joinable_thread`` (3.13+) with
  ``self._bootstrap``; wrapping that global sees every started thread, in the caller.
* The new thread runs the function it is given: ctxrelay gives it a :class:`_Start`
  that runs ``self._bootstrap`` inside the capture.  ``_bootstrap_inner`` calls
  ``self.run()``, whatever a subclass made of it (``Timer`` and user subclasses
  override ``run`` without calling ``super()``: wrapping ``Thread.run`` misses them).
  One wrapper per start, in the caller: the new thread pays no wrapper dispatch
  (with hop spans off before 3.14 it runs no Python of ctxrelay's at all).
* OpenTelemetry's threading instrumentor and Sentry patch ``Thread.start``/``run``;
  OpenTelemetry's ``unwrap`` strips whatever is outermost there.  Hooking elsewhere
  keeps ctxrelay and them independent in any order.
* ``uninstrument()`` between a thread's ``start()`` and its first instruction: the
  thread still runs in what was captured for it (as a pool task queued before), and
  lets go of it when it ends.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import types
from contextvars import Context, copy_context
from typing import Any

from ctxrelay import relay, spans
from ctxrelay.otel_fast import parent_allows
from ctxrelay.patching import Patch
from ctxrelay.runners import _thread_roles
from ctxrelay.spans import settings as _span_settings

NAME = "threading"
logger = logging.getLogger("ctxrelay")

#: 3.14+: set when ``Thread(context=...)`` was given explicitly (it wins).
_EXPLICIT = "_ctxrelay_explicit_context"

_HAS_THREAD_CONTEXT = sys.version_info >= (3, 14)
# Read at every start(): module globals, not attribute lookups.
_MethodType = types.MethodType
_Thread = threading.Thread
_run_in = Context.run

#: The hop span of the thread running here, for the failure hook (see _note_failures).
_running = threading.local()


def needs_carry(
    *,
    has_thread_context: bool,
    explicit_context: bool,
    inherit_flag: bool,
    leaving_vars_behind: bool = False,
) -> bool:
    """Whether ctxrelay must put a copy of the caller's context into a starting thread.

    Before 3.14 always.  On 3.14+ an explicit ``context=`` wins (ctxrelay only records
    the hop span), and ``start()`` already copies the caller's context when
    ``sys.flags.thread_inherit_context`` is on: no second copy then, unless some
    variable must be left behind (:mod:`ctxrelay.left_behind`) that CPython's full
    copy would carry.
    """
    if not has_thread_context:
        return True
    if explicit_context:
        return False
    return not inherit_flag or leaving_vars_behind


def runner_of(thread: threading.Thread) -> str:
    # A runner that starts a thread per piece of work (socketserver) names the hop.
    named = _thread_roles.runner_name()
    if named is not None:
        return named
    return "Timer" if isinstance(thread, threading.Timer) else "Thread"


def _named(thread: threading.Thread) -> Any:
    """What the span is named after: the target, a Timer's function, or ``run``.

    Read from the instance ``__dict__`` and compared with ``is``: a subclass's
    ``__getattr__`` or a target's ``__bool__`` may raise.
    """
    own = thread.__dict__
    target = own.get("_target")
    if target is not None:
        return target
    if isinstance(thread, threading.Timer):
        function = own.get("function")
        if function is not None:
            return function
    return type(thread).run


def _forget(thread: threading.Thread | None, context_before: Any = None) -> None:
    """The thread will not run what was captured for it: take the span's stand-in back,
    and (3.14) put back the ``thread._context`` that ``start()`` had set.

    The application may keep the Thread object after a refused start (to log it, to
    retry with another one): the carried copy in ``thread._context`` would stay pinned
    with it, where bare ``start()`` leaves an empty ``Context()`` (or CPython's own copy
    with ``thread_inherit_context=1``).
    """
    if thread is not None:
        try:
            started = thread.__dict__.get("_started")
            if type(started) is _StartsTheSpan:
                thread.__dict__["_started"] = started.original
            if _HAS_THREAD_CONTEXT:
                own = thread.__dict__.get("_context")
                if own is not context_before:
                    relay.released(own)
                    _set_thread_context(thread, context_before)
        except Exception:  # pragma: no cover - defensive
            pass


class _StartsTheSpan(threading.Event):
    """Stands in for a thread's ``_started`` Event from ``start()`` to its first set().

    ``_bootstrap_inner`` sets ``_started`` (which releases the ``start()`` waiting in
    the caller) and then calls ``run()``: the one moment between the two, with nothing
    of ctxrelay between ``_bootstrap_inner`` and ``run()`` and nothing on the instance
    while it runs.  The hop span starts there, *after* the caller has been released: a
    span processor that blocks (or a lock that a fork left held in a child process) can
    delay this thread, never the caller's ``start()``.  The thread's own Event is set
    first and put back at once.
    """

    def __init__(
        self,
        original: threading.Event,
        thread: threading.Thread,
        hop: spans.Hop,
        named: Any,
        explicit: bool,
        in_thread_context: bool,
    ) -> None:
        super().__init__()
        self.original = original
        self._span_of: tuple[Any, ...] | None = (thread, hop, named, explicit, in_thread_context)

    def set(self) -> None:
        self.original.set()
        super().set()
        span_of, self._span_of = self._span_of, None
        if span_of is None:
            return
        thread = span_of[0]
        try:
            thread.__dict__["_started"] = self.original
        except Exception:  # pragma: no cover - defensive
            pass
        if getattr(_running, "armed", None) is thread:  # our _bootstrap runs this thread
            _running.armed = None
            _begin_span(*span_of)


class _Start(functools.partial):
    """What the new thread calls instead of the ``thread._bootstrap`` that ``start()`` gave.

    ``_Start(fn, first, bootstrap, ...)`` calls ``fn(first, bootstrap, ...)``:
    ``Context.run(copy, bootstrap)`` when all there is to do is run the thread in the
    copy (no Python frame of ctxrelay's in the new thread), else :func:`_run_carried` /
    :func:`_run_314`.  A ``partial``, called from C, holding its capture only until the
    thread's function returns: ``_thread`` drops it then, before ``join()`` is released.
    It reads as the bound method it stands for (:data:`_READ_AS_BOOTSTRAP`): a tool
    between ctxrelay and the real thread start looks for the Thread in ``__self__``
    (pydevd's start-up object), and eventlet (3.10-3.12) releases a green thread's
    ``_tstate_lock`` itself only for a function whose ``__module__`` is ``threading``
    (else ``join()`` never returns); and the repr is the bootstrap's (``_thread`` names
    the function in "Exception ignored in thread started by").  Looked up only when
    asked: the call itself (from C) reads no attribute.
    """

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        if name in _READ_AS_BOOTSTRAP:
            return getattr(_partial_attribute(self, "args")[1], name)
        return _partial_attribute(self, name)

    def __repr__(self) -> str:
        return repr(self.args[1])


#: What :class:`_Start` answers as the ``thread._bootstrap`` bound method does (a
#: partial's own ``__module__`` is the class's, ``ctxrelay.runners.threads``).
_READ_AS_BOOTSTRAP = frozenset(
    {"__self__", "__func__", "__module__", "__name__", "__qualname__", "__doc__"}
)
_partial_attribute = functools.partial.__getattribute__


def _capture_at_start(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``_start_new_thread(self._bootstrap, ())``: runs in the caller of ``start()``.

    The thread's ``_bootstrap`` is handed over as a :class:`_Start` that runs it in the
    capture.  Everything before the real call is guarded: on any failure the thread
    starts as it would without ctxrelay (nothing carried, one debug log).
    """
    thread = start = context_before = None
    try:
        function = args[0] if args else kwargs.get("function")
        if type(function) is _MethodType and isinstance(function.__self__, _Thread):
            thread = function.__self__
            if _HAS_THREAD_CONTEXT:  # what start() set, for a start that fails (_forget)
                context_before = thread.__dict__.get("_context")
            if not _HAS_THREAD_CONTEXT and relay._only_copy and not _span_settings.hops:
                # What _capture amounts to before 3.14 with hop spans off, nothing to
                # leave behind and nobody observing: run the bootstrap in a copy.
                if not _thread_roles.is_exempt(thread):
                    start = _Start(_run_in, copy_context(), function)
            else:
                start = _capture(thread, function)
            if start is not None:
                # (self._bootstrap, ()) before 3.13, (self._bootstrap,) and keywords after;
                # no slicing on the usual shapes.
                if len(args) == 2:
                    args = (start, args[1])
                elif len(args) == 1:
                    args = (start,)
                elif args:
                    args = (start, *args[1:])
                else:
                    kwargs = {**kwargs, "function": start}
    except Exception:
        logger.debug("ctxrelay: could not capture for a thread; it starts uncarried", exc_info=True)
        _forget(thread, context_before)
        thread = start = context_before = None
    try:
        if kwargs:
            return wrapped(*args, **kwargs)
        return wrapped(*args)
    except BaseException:
        _forget(thread, context_before)  # "can't start new thread": let go of the capture
        # a kept exception keeps this frame
        args = kwargs = start = context_before = None  # type: ignore[assignment]
        raise


def _capture(thread: threading.Thread, bootstrap: Any) -> _Start | None:
    """What the new thread runs instead of ``bootstrap``; None to leave it unchanged.

    3.14: every thread gets :func:`_run_314`, exempt or not, which lets go of
    ``thread._context`` once the thread has run.
    """
    explicit = bool(thread.__dict__.pop(_EXPLICIT, False))
    inherit_flag = bool(getattr(sys.flags, "thread_inherit_context", False))
    if _thread_roles.is_exempt(thread):
        if not _HAS_THREAD_CONTEXT:
            return None
        if inherit_flag and not explicit:
            # With thread_inherit_context=1, start() has just given this pool worker a
            # copy of whoever made the pool grow (a submitter, or the pool's builder):
            # it would keep that for its whole life, a stale snapshot under every task
            # the pool does not carry.  It starts empty, as with the flag off.
            _set_thread_context(thread, Context())
        return _Start(_run_314, thread, bootstrap, None, None, False)
    carry = needs_carry(
        has_thread_context=_HAS_THREAD_CONTEXT,
        explicit_context=explicit,
        inherit_flag=inherit_flag,
        leaving_vars_behind=relay.leaves_vars_behind(),
    )
    named = _named(thread)
    context, hop = relay.hand_over(runner_of(thread), named, carry=carry)
    if hop is not None:
        _note_failures(thread)
        started = thread.__dict__.get("_started")
        if type(started) is threading.Event:
            # 3.14: the run happens in thread._context, the span starts there too
            thread.__dict__["_started"] = _StartsTheSpan(
                started, thread, hop, named, explicit, _HAS_THREAD_CONTEXT
            )
    if _HAS_THREAD_CONTEXT:
        if context is not None:
            # 3.14's _bootstrap_inner runs self.run() inside self._context, which
            # start() has just set to an empty Context() (or, with the flag on, to a
            # full copy that CTXRELAY_SKIP_VARS must filter): replace it by the copy.
            # An explicit context= may hold no span at all (Context()): whether the
            # hop has a parent is only known inside it, in the new thread (_start_span).
            _set_thread_context(thread, context)
        return _Start(_run_314, thread, bootstrap, hop, named, explicit)
    return _Start(_run_carried, context, bootstrap, thread, hop, named, explicit)


def _set_thread_context(thread: threading.Thread, context: Context | None) -> None:
    try:
        thread._context = context  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - a subclass with slots or a property
        pass


def _run_carried(
    context: Context,
    bootstrap: Any,
    thread: threading.Thread,
    hop: spans.Hop | None,
    named: Any,
    explicit: bool,
) -> Any:
    """Before 3.14, in the new thread: ``thread._bootstrap()`` inside the carried copy.

    Nothing may raise before ``bootstrap`` runs: ``start()`` waits for the flag that
    ``_bootstrap_inner`` sets, so a failure here would hang the caller.
    """
    try:
        if hop is None:  # nothing to end afterwards (an observer is told of the release)
            return context.run(bootstrap)
        return context.run(_bootstrap, bootstrap, thread, hop, named, explicit, False)
    finally:
        relay.released(context)
        # An excepthook that keeps the exception keeps this frame (the traceback's
        # frames link back to it): it must not pin the carried context.
        context = None  # type: ignore[assignment]


def _run_314(
    thread: threading.Thread, bootstrap: Any, hop: spans.Hop | None, named: Any, explicit: bool
) -> Any:
    """3.14, in the new thread: the run happens in ``thread._context`` (the copy, when
    one was carried)."""
    try:
        if hop is None:
            return bootstrap()
        return _bootstrap(bootstrap, thread, hop, named, explicit, True)
    finally:
        # 3.14 keeps the context a thread ran in on the instance (thread._context)
        # after run() returned: a finished thread that the application still
        # references (a list of threads, a kept exception's frames) would pin the
        # carried copy, or CPython's own with thread_inherit_context=1.  Nothing
        # reads it once the thread has run (start() refuses a second start).
        try:
            relay.released(thread.__dict__.get("_context"))
        except Exception:  # pragma: no cover - defensive
            pass
        _set_thread_context(thread, None)


def _bootstrap(
    bootstrap: Any,
    thread: threading.Thread,
    hop: spans.Hop,
    named: Any,
    explicit: bool,
    in_thread_context: bool,
) -> Any:
    """``thread._bootstrap()``, and the end of the thread's hop span if one was started.

    The span starts when ``_bootstrap_inner`` sets ``_started`` (:class:`_StartsTheSpan`)
    and ends when it returns: nothing of ctxrelay sits between ``_bootstrap_inner`` and
    ``run()`` (no instance ``run`` attribute, no frame in the traceback
    ``threading.excepthook`` receives); the failure hook below records what ``run()``
    raised.
    """
    _running.armed = thread
    try:
        return bootstrap()
    finally:
        _running.armed = None
        started = getattr(_running, "started", None)
        if started is not None:
            _running.started = _running.span = None
            span, token, run_in = started
            if run_in is not None:
                run_in.run(spans.end_hop, span, token)
            else:
                spans.end_hop(span, token)
            started = span = token = run_in = None


def _begin_span(
    thread: threading.Thread, hop: spans.Hop, named: Any, explicit: bool, in_thread_context: bool
) -> None:
    """Start and activate the thread's hop span (called from ``_started.set()``)."""
    try:
        if in_thread_context:
            run_in: Any = thread._context  # type: ignore[attr-defined]
            span, token = run_in.run(_start_span, hop, named, thread, explicit)
        else:
            run_in = None
            span, token = _start_span(hop, named, thread, explicit)
        if span is not None:
            _running.started = (span, token, run_in)
            _running.span = span
    except Exception:
        logger.debug("ctxrelay: could not start a thread's hop span", exc_info=True)


def _start_span(
    hop: spans.Hop, named: Any, thread: threading.Thread, explicit: bool
) -> tuple[Any, object]:
    """Start the hop span inside the context the thread runs in.

    With an explicit ``Thread(context=...)`` the span is recorded only if that context
    holds a sampled parent: ``Thread(context=Context())`` started under a span would
    otherwise begin a stray one-span trace of its own.
    """
    if explicit and not parent_allows(root=False):
        return None, None
    name = thread.__dict__.get("_name")
    return spans.start_hop(
        hop, named, len(copy_context()), name if isinstance(name, str) else "Thread"
    )


def _note_failures(thread: threading.Thread) -> None:
    """Have what ``run()`` raises recorded on this thread's hop span (one is recorded).

    ``_bootstrap_inner`` hands what ``run()`` raised to ``self._invoke_excepthook`` (made
    by ``Thread.__init__``); for a thread whose hop span is recorded it is replaced here
    by one that first records the failure on the span.  Per thread and only then: a
    global wrapper around ``threading._make_invoke_excepthook`` cost every thread
    created, spans or not.  ``SystemExit`` is how a thread ends normally
    (``threading.excepthook`` ignores it): not a failure.
    """
    own = thread.__dict__
    invoke = own.get("_invoke_excepthook")
    if invoke is None or getattr(invoke, "__wrapped__", None) is not None:
        return

    def invoke_excepthook(thread: threading.Thread) -> Any:
        try:
            span = getattr(_running, "span", None)
            if span is not None:
                exc = sys.exc_info()[1]
                if exc is not None and not isinstance(exc, SystemExit):
                    spans.record_failure(span, exc)
        except Exception:  # pragma: no cover - defensive
            pass
        return invoke(thread)

    invoke_excepthook.__wrapped__ = invoke  # type: ignore[attr-defined]
    own["_invoke_excepthook"] = invoke_excepthook


def _mark_explicit_context(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """3.14+: remember whether ``context=`` was passed; ``start()`` hides it later."""
    result = wrapped(*args, **kwargs)
    if kwargs.get("context") is not None and instance is not None:
        instance.__dict__[_EXPLICIT] = True
    return result


_START = (
    "_start_joinable_thread"
    if hasattr(threading, "_start_joinable_thread")
    else "_start_new_thread"
)

PATCHES = (
    Patch(NAME, "threading", _START, _capture_at_start),
    Patch(
        NAME,
        "threading",
        "Thread.__init__",
        _mark_explicit_context,
        applies=lambda: _HAS_THREAD_CONTEXT,
    ),
)
