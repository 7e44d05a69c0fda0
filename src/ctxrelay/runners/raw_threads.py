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
"""

from __future__ import annotations

import _thread
import logging
import threading
from collections.abc import Callable
from contextvars import Context
from typing import Any

from ctxrelay import relay, spans
from ctxrelay.patching import Patch

NAME = "_thread"
RUNNER = "_thread.start_new_thread"

logger = logging.getLogger("ctxrelay")


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
        finally:
            relay.released(context)
            context = None

    def __repr__(self) -> str:
        # _thread reports an exception as "... in thread started by: <repr>": the user's.
        return repr(self.function)


def relay_start_new_thread(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Around ``_thread.start_new_thread(function, args[, kwargs])``, in the caller."""
    if kwargs or not args or not callable(args[0]):
        return wrapped(*args, **kwargs)
    function = args[0]
    if isinstance(getattr(function, "__self__", None), threading.Thread):
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
