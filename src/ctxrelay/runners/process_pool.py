"""``concurrent.futures.ProcessPoolExecutor``: each task carries its submitter's declared values.

Read against ``concurrent/futures/process.py`` of CPython 3.11.7 (``submit`` and ``map``
are the same in 3.10-3.14).

``submit(fn, /, *args, **kwargs)`` runs in the caller and pickles ``fn`` with its
arguments into the call queue; ``map`` calls ``submit`` once per chunk with
``partial(_process_chunk, fn)``.  So only ``submit`` is wrapped: ``fn`` becomes a
:class:`ctxrelay.carrier.Task` holding the carrier (for ``map``, the user's function
inside the chunk partial, so every item is a hop of its own, named after it).  The
worker unpickles the task and runs it in a fresh context: the declared values and the
submitter's trace, never the snapshot a forked worker inherited.  All three start
methods (``fork``, ``forkserver``, ``spawn``) take this path.

With nothing declared and no trace to carry, ``fn`` is submitted unchanged.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from ctxrelay import relay
from ctxrelay.patching import Patch

NAME = "process_pool"
RUNNER = "ProcessPoolExecutor"
_MODULE = "concurrent.futures.process"


def _carried(fn: Any) -> Any:
    if type(fn) is functools.partial and len(fn.args) == 1 and not fn.keywords:
        if fn.func is getattr(sys.modules.get(_MODULE), "_process_chunk", None):
            inner = _carried(fn.args[0])
            return fn if inner is fn.args[0] else functools.partial(fn.func, inner)
    return relay.carried_task(RUNNER, fn)


def relay_submit(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Around ``ProcessPoolExecutor.submit(fn, /, *args, **kwargs)``, in the caller."""
    if args:
        return wrapped(_carried(args[0]), *args[1:], **kwargs)
    return wrapped(*args, **kwargs)


PATCHES = (Patch(NAME, _MODULE, "ProcessPoolExecutor.submit", relay_submit),)
