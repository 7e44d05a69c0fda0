"""ctxrelay's own frames, left out of the tracebacks a caller gets.

Between a runner and the user's function ctxrelay adds a frame or two (the relayed
callable, a carrier's run).  A failed task's traceback must list what it lists without
ctxrelay: a pool's ``future.result()``, ``run_in_executor``, and the text a process
pool or a Dask worker formats on the other side.  Kept apart from :mod:`ctxrelay.relay`
because process workers import :mod:`ctxrelay.carrier` alone, uninstrumented.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["hide_own_frames", "own_frames", "without_own_frames"]

#: Code of ctxrelay's own frames between a runner and the user's function, registered
#: with :func:`own_frames`.
_OWN_CODES: set[types.CodeType] = set()


def own_frames(*functions: Callable[..., Any]) -> None:
    """Mark the frames of ``functions`` as ctxrelay's (see :func:`without_own_frames`)."""
    for fn in functions:
        _OWN_CODES.add(fn.__code__)


def without_own_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without its leading ctxrelay frames: where the user's function begins.

    A traceback entry of a frame that called the user's function comes before the
    function's own; a report that bare Python makes from C (``_thread``'s "Exception
    ignored in thread started by") starts at the function.  Never raises.
    """
    try:
        while tb is not None and tb.tb_frame.f_code in _OWN_CODES:
            tb = tb.tb_next
    except Exception:  # pragma: no cover - defensive
        pass
    return tb


#: 3.11+: a bare ``raise`` re-raises with the exception's ``__traceback__`` as it is
#: then; 3.10 re-raises the traceback it caught.
_RAISE_READS_TRACEBACK = sys.version_info >= (3, 11)


def hide_own_frames(exc: BaseException) -> None:
    """Leave ctxrelay's frames out of ``exc``'s traceback, before a bare ``raise``.

    Called in the except block of the outermost ctxrelay frame between a runner and the
    user's function: the traceback the caller gets then lists the frames it lists
    without ctxrelay.  The exception object, its type, message, ``__cause__`` and
    ``__context__`` are untouched.  On 3.10 the frame calling this stays (its entry
    is the one being re-raised); the ones inside it go.  Never raises.
    """
    try:
        tb = exc.__traceback__
        inner = without_own_frames(tb)
        if inner is tb or tb is None:
            return
        if _RAISE_READS_TRACEBACK:
            exc.__traceback__ = inner
        else:
            tb.tb_next = inner
    except Exception:  # pragma: no cover - defensive
        pass
