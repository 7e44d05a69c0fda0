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

import sys
import threading
from contextvars import Context
from typing import Any

from ctxrelay import relay, spans
from ctxrelay.patching import Patch

NAME = "threading"

#: Where the capture for a thread waits between ``start()`` and its first instruction.
_CARRIED = "_ctxrelay_carried"
#: 3.14+: set when ``Thread(context=...)`` was given explicitly (it wins).
_EXPLICIT = "_ctxrelay_explicit_context"

_HAS_THREAD_CONTEXT = sys.version_info >= (3, 14)


def needs_carry(
    *,
    has_thread_context: bool,
    explicit_context: bool,
    inherit_flag: bool,
    skipping_vars: bool = False,
) -> bool:
    """Whether ctxrelay must put a copy of the caller's context into a starting thread.

    Before 3.14 always.  On 3.14+ an explicit ``context=`` wins (ctxrelay only records
    the hop span), and ``start()`` already copies the caller's context when
    ``sys.flags.thread_inherit_context`` is on: no second copy then, unless
    ``CTXRELAY_SKIP_VARS`` names variables that CPython's full copy would carry.
    """
    if not has_thread_context:
        return True
    if explicit_context:
        return False
    return not inherit_flag or skipping_vars


def runner_of(thread: threading.Thread) -> str:
    # A runner that starts a thread per piece of work (socketserver) names the hop.
    named = relay.thread_runner_name()
    if named is not None:
        return named
    return "Timer" if isinstance(thread, threading.Timer) else "Thread"


def _capture_at_start(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``_start_new_thread(self._bootstrap, ())``: runs in the caller of ``start()``."""
    function = args[0] if args else kwargs.get("function")
    thread = getattr(function, "__self__", None)
    if not isinstance(thread, threading.Thread):
        return wrapped(*args, **kwargs)
    explicit = bool(thread.__dict__.pop(_EXPLICIT, False))
    inherit_flag = bool(getattr(sys.flags, "thread_inherit_context", False))
    if relay.thread_is_exempt(thread):
        if inherit_flag and not explicit:
            # With thread_inherit_context=1, start() has just given this pool worker a
            # copy of whoever made the pool grow (a submitter, or the pool's builder):
            # it would keep that for its whole life, a stale snapshot under every task
            # that the pool does not carry.  It starts empty, as with the flag off.
            _set_thread_context(thread, Context())
        return wrapped(*args, **kwargs)
    try:
        carry = needs_carry(
            has_thread_context=_HAS_THREAD_CONTEXT,
            explicit_context=explicit,
            inherit_flag=inherit_flag,
            skipping_vars=relay.skips_vars(),
        )
        context = relay.capture() if carry else None
        if _HAS_THREAD_CONTEXT and context is not None:
            # 3.14's _bootstrap_inner runs self.run() inside self._context, which
            # start() has just set to an empty Context() (or, with the flag on, to a
            # full copy that CTXRELAY_SKIP_VARS must filter): replace it by the copy.
            _set_thread_context(thread, context)
            context = None
        hop = spans.Hop(runner_of(thread)) if spans.should_record() else None
        # An explicit context= may hold no span at all (Context()): whether the hop has
        # a parent is only known inside it, in the new thread (see _record_run).
        thread.__dict__[_CARRIED] = (context, hop, explicit)
    except Exception:  # pragma: no cover - defensive: the thread still starts
        thread.__dict__.pop(_CARRIED, None)
    try:
        return wrapped(*args, **kwargs)
    except BaseException:
        thread.__dict__.pop(_CARRIED, None)  # "can't start new thread": let go of it
        raise


def _run_in_carried(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``Thread._bootstrap_inner``: runs in the new thread, before anything else."""
    try:
        carried = instance.__dict__.pop(_CARRIED, None) if instance is not None else None
        if carried is None:  # started before instrument(), or exempt (a pool's worker)
            return wrapped(*args, **kwargs)
        context, hop, explicit = carried
        del carried
        if hop is not None:
            _record_run(instance, hop, context, explicit)
        if context is None:
            return wrapped(*args, **kwargs)
        try:
            return context.run(wrapped, *args, **kwargs)
        finally:
            # An excepthook that keeps the exception keeps this frame (the traceback's
            # frames link back to it): it must not pin the carried context.
            context = None
    finally:
        if _HAS_THREAD_CONTEXT and instance is not None:
            # 3.14 keeps the context a thread ran in on the instance (thread._context)
            # after run() returned: a finished thread that the application still
            # references (a list of threads, a kept exception's frames) would pin the
            # carried copy, or CPython's own with thread_inherit_context=1.  Nothing
            # reads it once the thread has run (start() refuses a second start).
            _set_thread_context(instance, None)


def _set_thread_context(thread: threading.Thread, context: Context | None) -> None:
    try:
        thread._context = context  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - a subclass with slots or a property
        pass


def _record_run(thread: threading.Thread, hop: spans.Hop, context: Any, explicit: bool) -> None:
    """Put a span around this thread's ``run()`` for its lifetime.

    ``_bootstrap_inner`` hands exceptions from ``run()`` to ``threading.excepthook``,
    so the span must sit around ``run()`` itself to see them: the bound ``run`` is
    shadowed on the instance (whatever a subclass made of it) and put back after.

    With an explicit ``Thread(context=...)`` the span is recorded only if that context
    holds a sampled parent: ``Thread(context=Context())`` started under a span would
    otherwise begin a stray one-span trace of its own.
    """
    run = thread.run
    # Name the span after what the user wrote: the target, a Timer's function, or run().
    target = thread.__dict__.get("_target") or getattr(thread, "function", None) or run
    name = thread.name
    had_own = "run" in thread.__dict__
    size = len(context) if context is not None else None

    def run_with_span() -> None:
        try:
            if explicit and not _has_parent():
                run()
            else:
                relay.run_hop(hop, run, (), {}, size, name, target)
        finally:
            if had_own:
                thread.__dict__["run"] = run
            else:
                thread.__dict__.pop("run", None)

    try:
        thread.__dict__["run"] = run_with_span
    except Exception:  # pragma: no cover - a class without an instance __dict__
        pass


def _has_parent() -> bool:
    try:
        return spans.parent_allows(root=False)
    except Exception:  # pragma: no cover - defensive: record the hop as before
        return True


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
    would keep their capture on the instance for their whole life, unused."""
    for thread in threading_module.enumerate():
        thread.__dict__.pop(_CARRIED, None)


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
