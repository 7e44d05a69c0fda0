"""asyncio ``loop.run_in_executor`` (default and custom thread pools) and ``asyncio.to_thread``.

Read against ``asyncio/base_events.py`` and ``asyncio/threads.py`` of CPython 3.10-3.14.7.

``run_in_executor`` ends in ``executor.submit``, which the futures runner already
carries; this entry only names the hop after the runner the user called, by relaying
the callable first (the pool patch then passes a relayed callable through unchanged:
one copy, one span).  ``asyncio.to_thread`` already runs ``partial(ctx.run, func)``
with its own copy: that copy is used as is, and only the hop span is added.

Executors that are not thread pools (``ProcessPoolExecutor``) are passed through: a
Context cannot be pickled.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ctxrelay import relay
from ctxrelay.patching import Patch

NAME = "asyncio"
RUNNER = "run_in_executor"
RUNNER_TO_THREAD = "to_thread"

# 3.14's pool keeps the queued callable in a frame that a failed future's traceback
# keeps (futures.py): the copy must sit in a holder that lets go of it when it runs.
_hand_over = relay.hand_over_single_use if sys.version_info >= (3, 14) else relay.hand_over


def _is_thread_pool(loop: Any, executor: Any) -> bool:
    if executor is None:
        executor = getattr(loop, "_default_executor", None)
        if executor is None:  # the loop will create a ThreadPoolExecutor
            return True
    return (
        isinstance(executor, ThreadPoolExecutor)
        and type(executor).__name__ != "InterpreterPoolExecutor"
    )


def relay_run_in_executor(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if len(args) >= 2 and not kwargs and _is_thread_pool(instance, args[0]):
        func = args[1]
        runner = RUNNER_TO_THREAD if relay.runs_in_own_context(func) else RUNNER
        return wrapped(args[0], _hand_over(runner, func), *args[2:])
    return wrapped(*args, **kwargs)


def _exempt_shutdown_thread(base_events: Any) -> None:
    # asyncio.run() ends with shutdown_default_executor(), which joins the pool from a
    # thread of its own: internal plumbing, not the application's work.
    shutdown = getattr(base_events.BaseEventLoop, "_do_shutdown", None)
    if shutdown is not None:
        relay.exempt_thread_target(shutdown)


PATCHES = (
    Patch(
        NAME,
        "asyncio.base_events",
        "BaseEventLoop.run_in_executor",
        relay_run_in_executor,
        on_apply=_exempt_shutdown_thread,
    ),
)
