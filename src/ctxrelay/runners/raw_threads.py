"""``_thread.start_new_thread`` called directly: carry the caller's context like a Thread.

Read against ``Modules/_threadmodule.c`` of CPython 3.10-3.13: ``start_new_thread(function,
args[, kwargs])`` starts an OS thread that calls ``function(*args, **kwargs)`` in an empty
context, and prints ``Exception ignored in thread started by: <function>`` (through
``sys.unraisablehook``) if it raises anything but ``SystemExit``.  Some libraries and old
code start threads this way, below ``threading``, where the thread patch never sees them.

``threading`` keeps its own reference to the function (``threading._start_new_thread``,
bound when ``threading`` is imported; 3.13 uses ``_start_joinable_thread``), so wrapping
the ``_thread`` module attribute sees only the direct calls.  A thread's ``_bootstrap``
that still arrives here (``threading`` imported after ``instrument()``) is passed through:
the thread patch carries it.

The new thread gets no ``threading.Thread`` object: the hop span's ``thread.name`` is
``thread-<ident>``, and nothing here calls ``threading.current_thread()`` (which would
register a dummy thread for it).

**The report of a raising function is bare Python's.**  ``_thread`` reports what the
callable it was given raised: on 3.10-3.12 through ``sys.unraisablehook`` with
``object=<that callable>`` and ``err_msg="Exception ignored in thread started by"``;
on 3.13+ with ``object=None`` and the callable's repr in ``err_msg`` (read in 3.10.13,
3.11.7, 3.12.1, 3.13.0 and 3.14.7 by running each).  That callable is ctxrelay's
:class:`_RawStart`, whose frame (and the hop's) would also lead the traceback.  So
:class:`_RawStart` makes the report itself, as ``_thread`` would have made it for the
user's function: the same exception object, ``object`` the user's function itself, the
same ``err_msg``, a traceback that starts at the function, the ``sys.unraisablehook``
audit event, and a failing hook or audit hook reported by the default hook as CPython
reports them.  ``SystemExit`` still ends the thread quietly.
"""

from __future__ import annotations

import _thread
import logging
import sys
import threading
import types
from collections.abc import Callable
from contextvars import Context
from typing import Any

from ctxrelay import relay, spans
from ctxrelay.patching import Patch

NAME = "_thread"
RUNNER = "_thread.start_new_thread"

logger = logging.getLogger("ctxrelay")

_MISSING = object()
_STARTED_BY = "Exception ignored in thread started by"
#: 3.13+: ``object=None``, the callable named in ``err_msg`` (PyErr_FormatUnraisable).
_NAMED_IN_MESSAGE = sys.version_info >= (3, 13)
#: ``sys.UnraisableHookArgs``, which ``sys`` does not expose by name (the default hook
#: accepts nothing else).  None elsewhere: the exception then leaves ``_RawStart``, and
#: ``_thread`` reports it with ``_RawStart`` as the callable (its repr is the function's).
_HookArgs: Any = next(
    (
        t
        for t in tuple.__subclasses__()
        if t.__name__ == "UnraisableHookArgs" and t.__module__ == "builtins"
    ),
    None,
)


class _RawStart:
    """The function a raw thread calls: ``function`` once, inside the captured copy."""

    __slots__ = ("context", "function", "hop")

    def __init__(self, function: Callable[..., Any], context: Context, hop: spans.Hop | None):
        self.function = function
        self.context: Context | None = context
        self.hop = hop

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        context, hop = self.context, self.hop
        # The thread keeps this object until it exits: let go of the capture at once.
        self.context = self.hop = None
        if context is None:  # called a second time by someone who kept it
            return self.function(*args, **kwargs)
        try:
            if hop is None:
                return context.run(self.function, *args, **kwargs)
            name = f"thread-{_thread.get_ident()}"
            return context.run(
                relay.run_hop,
                hop=hop,
                fn=self.function,
                args=args,
                kwargs=kwargs,
                context_vars=len(context),
                thread_name=name,
            )
        except SystemExit:
            raise  # how a thread ends quietly: _thread says nothing
        except BaseException as exc:
            failed = exc
        finally:
            relay.released(context)
            context = None
        # Outside the except block, as in bare Python's C report: an exception the hook
        # raises gets no __context__ from the function's.
        unraisable = _as_bare(failed, self.function)
        if unraisable is None:  # _thread reports it, naming this object
            raise failed
        failed = None  # type: ignore[assignment]
        _report(unraisable)
        return None

    def __repr__(self) -> str:
        # _thread reports an exception as "... in thread started by: <repr>": the user's.
        return repr(self.function)


def _as_bare(exc: BaseException, function: Any) -> Any:
    """The hook's argument ``_thread`` makes when ``function`` itself raised ``exc``.

    None if it cannot be made here (then ``_thread`` reports ``exc`` itself).
    """
    if _HookArgs is None:
        return None
    try:
        tb = relay.without_own_frames(exc.__traceback__)
        exc.__traceback__ = tb  # as bare: the traceback the hook is given
        if _NAMED_IN_MESSAGE:
            try:
                message: str | None = f"{_STARTED_BY} {function!r}"
            except Exception:  # CPython drops a message it cannot format
                message = None
            return _HookArgs((type(exc), exc, tb, message, None))
        return _HookArgs((type(exc), exc, tb, _STARTED_BY, function))
    except Exception:  # pragma: no cover - defensive
        logger.debug("ctxrelay: could not report a raw thread's exception", exc_info=True)
        return None


def _report(unraisable: Any) -> None:
    """``sys.unraisablehook(unraisable)`` as CPython calls it from C; never raises."""
    hook: Any = getattr(sys, "unraisablehook", _MISSING)
    if hook is _MISSING:  # deleted from sys
        _default_hook(unraisable)
        return
    try:
        sys.audit("sys.unraisablehook", hook, unraisable)  # even for None, as CPython
    except BaseException as failed:
        _default_hook(_HookArgs(_own_failure(failed, "Exception ignored in audit hook", None)))
        return
    if hook is None:
        _default_hook(unraisable)
        return
    try:
        hook(unraisable)
    except BaseException as failed:
        _default_hook(
            _HookArgs(_own_failure(failed, "Exception ignored in sys.unraisablehook", hook))
        )


def _own_failure(failed: BaseException, message: str, obj: Any) -> tuple[Any, ...]:
    """A hook's failure as CPython reports it: the traceback starts in the hook."""
    tb = failed.__traceback__
    if tb is not None and tb.tb_frame.f_code is _report.__code__:  # the call here
        tb = tb.tb_next
        failed.__traceback__ = tb
    return (type(failed), failed, tb, message, obj)


def _default_hook(unraisable: Any) -> None:
    try:
        sys.__unraisablehook__(unraisable)
    except BaseException:  # CPython ignores the default hook's own failure
        pass


relay.own_frames(_RawStart.__call__)


def relay_start_new_thread(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``_thread.start_new_thread(function, args[, kwargs])``, in the caller."""
    if kwargs or not args or not callable(args[0]):
        return wrapped(*args, **kwargs)
    function = args[0]
    # Only a bound method is looked at: a user's callable may answer attribute lookups
    # in any way (a __getattr__ raising something other than AttributeError).
    if type(function) is types.MethodType and isinstance(function.__self__, threading.Thread):
        return wrapped(*args)  # a threading.Thread's _bootstrap: the thread patch's
    try:
        context, hop = relay.hand_over(RUNNER, function)
        start = _RawStart(function, context, hop)  # type: ignore[arg-type]
    except Exception:  # never break the host app: the thread starts uncarried
        logger.debug("ctxrelay: could not carry a raw thread start", exc_info=True)
        return wrapped(*args)
    context = hop = None
    return wrapped(start, *args[1:])


PATCHES = (Patch(NAME, "_thread", "start_new_thread", relay_start_new_thread),)
