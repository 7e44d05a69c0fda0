"""``threading.Thread`` and ``threading.Timer``: carry the context of whoever calls ``start()``.

Read against ``threading.py`` of CPython 3.10-3.13 and 3.14.7 (``Thread(context=)``,
``sys.flags.thread_inherit_context``).

Why these hook points, and not ``Thread.start``/``Thread.run``:

* The code that runs in the new thread is ``Thread._bootstrap_inner``; it calls
  ``self.run()``, whatever a subclass made of it (``Timer`` and user subclasses
  override ``run`` without calling ``super()``: wrapping ``Thread.run`` misses them).
* The hand-over happens inside ``start()``, which calls the module global
  ``_start_new_thread`` (3.10-3.12) or ``_start_joinable_thread`` (3.13+) with
  ``self._bootstrap``; wrapping that global sees every started thread, in the caller.
* OpenTelemetry's threading instrumentor and Sentry patch ``Thread.start``/``run``;
  OpenTelemetry's ``unwrap`` strips whatever is outermost there.  Hooking elsewhere
  keeps ctxrelay and them independent in any order.
"""

from __future__ import annotations

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

NAME = "threading"
logger = logging.getLogger("ctxrelay")

#: Where the capture for a thread waits between ``start()`` and its first instruction:
#: ``(context or None, hop or None, what the span is named after, explicit context=,
#: whether the copy was put in thread._context instead (3.14))``.
_CARRIED = "_ctxrelay_carried"
#: 3.14+: set when ``Thread(context=...)`` was given explicitly (it wins).
_EXPLICIT = "_ctxrelay_explicit_context"

_HAS_THREAD_CONTEXT = sys.version_info >= (3, 14)

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


def _forget(thread: threading.Thread | None) -> None:
    if thread is not None:
        try:
            thread.__dict__.pop(_CARRIED, None)
            started = thread.__dict__.get("_started")
            if type(started) is _StartsTheSpan:
                thread.__dict__["_started"] = started.original
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


def _capture_at_start(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``_start_new_thread(self._bootstrap, ())``: runs in the caller of ``start()``.

    Everything before the real call is guarded: on any failure the thread starts as it
    would without ctxrelay (nothing carried, one debug log).
    """
    thread = None
    try:
        function = args[0] if args else kwargs.get("function")
        if type(function) is types.MethodType and isinstance(function.__self__, threading.Thread):
            thread = function.__self__
            if not _HAS_THREAD_CONTEXT and relay._only_copy and not spans.settings.hops:
                # What _take_capture amounts to before 3.14 with hop spans off, nothing to
                # leave behind and nobody observing: a copy (one Python frame per start).
                if _thread_roles.is_exempt(thread):
                    thread = None
                else:
                    thread.__dict__[_CARRIED] = (copy_context(), None, None, False, False)
            else:
                thread = _capture(thread)
    except Exception:
        logger.debug("ctxrelay: could not capture for a thread; it starts uncarried", exc_info=True)
        _forget(thread)
        thread = None
    try:
        return wrapped(*args, **kwargs)
    except BaseException:
        _forget(thread)  # "can't start new thread": let go of the capture
        raise


def _capture(thread: threading.Thread) -> threading.Thread | None:
    """The capture for ``thread``; None when it is exempt (it starts uncarried)."""
    explicit = bool(thread.__dict__.pop(_EXPLICIT, False))
    inherit_flag = bool(getattr(sys.flags, "thread_inherit_context", False))
    if _thread_roles.is_exempt(thread):
        if inherit_flag and not explicit:
            # With thread_inherit_context=1, start() has just given this pool worker a
            # copy of whoever made the pool grow (a submitter, or the pool's builder):
            # it would keep that for its whole life, a stale snapshot under every task
            # the pool does not carry.  It starts empty, as with the flag off.
            _set_thread_context(thread, Context())
        return None
    _take_capture(thread, explicit, inherit_flag)
    return thread


def _take_capture(thread: threading.Thread, explicit: bool, inherit_flag: bool) -> None:
    carry = needs_carry(
        has_thread_context=_HAS_THREAD_CONTEXT,
        explicit_context=explicit,
        inherit_flag=inherit_flag,
        leaving_vars_behind=relay.leaves_vars_behind(),
    )
    named = _named(thread)
    context, hop = relay.hand_over(runner_of(thread), named, carry=carry)
    in_thread_context = False
    if _HAS_THREAD_CONTEXT and context is not None:
        # 3.14's _bootstrap_inner runs self.run() inside self._context, which
        # start() has just set to an empty Context() (or, with the flag on, to a
        # full copy that CTXRELAY_SKIP_VARS must filter): replace it by the copy.
        _set_thread_context(thread, context)
        context = None
        in_thread_context = True
    if context is not None or hop is not None or _HAS_THREAD_CONTEXT:
        # An explicit context= may hold no span at all (Context()): whether the hop has
        # a parent is only known inside it, in the new thread (see _start_span).
        # 3.14: marked even with nothing to carry (CPython's own copy under the flag),
        # so that _run_in_carried drops thread._context once the thread has run.
        thread.__dict__[_CARRIED] = (context, hop, named, explicit, in_thread_context)
        if hop is not None:
            _note_failures(thread)
            started = thread.__dict__.get("_started")
            if type(started) is threading.Event:
                # 3.14: the run happens in thread._context, the span starts there too
                thread.__dict__["_started"] = _StartsTheSpan(
                    started, thread, hop, named, explicit, _HAS_THREAD_CONTEXT
                )


def _set_thread_context(thread: threading.Thread, context: Context | None) -> None:
    try:
        thread._context = context  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - a subclass with slots or a property
        pass


def _run_in_carried(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``Thread._bootstrap_inner``: runs in the new thread, before anything else.

    Nothing may raise before ``wrapped`` runs: ``start()`` waits for the flag that
    ``_bootstrap_inner`` sets, so a failure here would hang the caller.
    """
    try:
        carried = instance.__dict__.pop(_CARRIED, None)
    except Exception:  # pragma: no cover - defensive
        carried = None
    if _HAS_THREAD_CONTEXT:
        try:
            return _bootstrap_314(wrapped, args, kwargs, instance, carried)
        finally:
            # 3.14 keeps the context a thread ran in on the instance (thread._context)
            # after run() returned: a finished thread that the application still
            # references (a list of threads, a kept exception's frames) would pin the
            # carried copy, or CPython's own with thread_inherit_context=1.  Nothing
            # reads it once the thread has run (start() refuses a second start).
            carried = None
            if instance is not None:
                relay.released(instance.__dict__.get("_context"))
                _set_thread_context(instance, None)
    if carried is None:  # started before instrument(), or exempt (a pool's worker)
        return wrapped(*args, **kwargs)
    context, hop, named, explicit, _ = carried
    del carried
    try:
        if hop is None:  # nothing to end afterwards: the thread runs in the copy, that is all
            return context.run(wrapped, *args, **kwargs)
        return context.run(_bootstrap, wrapped, args, kwargs, instance, hop, named, explicit, False)
    finally:
        relay.released(context)
        # An excepthook that keeps the exception keeps this frame (the traceback's
        # frames link back to it): it must not pin the carried context.
        context = None


def _bootstrap_314(
    wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any], thread: Any, carried: Any
) -> Any:
    """3.14: the run happens in ``thread._context`` (the copy, when one was carried)."""
    if carried is None:
        return wrapped(*args, **kwargs)
    _, hop, named, explicit, _ = carried
    carried = None
    return _bootstrap(wrapped, args, kwargs, thread, hop, named, explicit, True)


def _bootstrap(
    wrapped: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    thread: threading.Thread,
    hop: spans.Hop | None,
    named: Any,
    explicit: bool,
    in_thread_context: bool,
) -> Any:
    """``_bootstrap_inner``, and the end of the thread's hop span if one was started.

    The span starts when ``_bootstrap_inner`` sets ``_started`` (:class:`_StartsTheSpan`)
    and ends when it returns: nothing of ctxrelay sits between ``_bootstrap_inner`` and
    ``run()`` (no instance ``run`` attribute, no frame in the traceback
    ``threading.excepthook`` receives); the failure hook below records what ``run()``
    raised.
    """
    _running.armed = thread if hop is not None else None
    try:
        return wrapped(*args, **kwargs)
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


def _drop_pending_captures(threading_module: Any) -> None:
    """After ``_bootstrap_inner`` is unwrapped: threads started but not yet running
    would keep their capture on the instance for their whole life, unused (on 3.14,
    in ``thread._context``: it starts empty instead, as an uncarried thread does)."""
    for thread in threading_module.enumerate():
        try:
            carried = thread.__dict__.pop(_CARRIED, None)
            if carried is not None and carried[4]:
                _set_thread_context(thread, Context())
        except Exception:  # pragma: no cover - defensive
            pass


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
        "Thread._bootstrap_inner",
        _run_in_carried,
        on_remove=_drop_pending_captures,
    ),
    Patch(
        NAME,
        "threading",
        "Thread.__init__",
        _mark_explicit_context,
        applies=lambda: _HAS_THREAD_CONTEXT,
    ),
)
