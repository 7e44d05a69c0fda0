"""asyncio ``loop.run_in_executor`` (default and custom thread pools) and ``asyncio.to_thread``.

Read against ``asyncio/base_events.py`` and ``asyncio/threads.py`` of CPython 3.10-3.14.7.

``run_in_executor`` ends in ``executor.submit``, which the futures runner already
carries; this entry only names the hop after the runner the user called, by relaying
the callable first (the pool patch then passes a relayed callable through unchanged:
one copy, one span).  ``asyncio.to_thread`` already runs ``partial(ctx.run, func)``
with its own copy: that copy is used as is, and only the hop span is added.

Executors that are not thread pools (``ProcessPoolExecutor``) are passed through: a
Context cannot be pickled.  So is a coroutine or coroutine function in debug mode:
``run_in_executor`` raises ``TypeError`` for it there, and that check must see the
user's callable, not ctxrelay's.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from ctxrelay import relay
from ctxrelay.patching import Patch

logger = logging.getLogger("ctxrelay")

# 3.14's pool keeps the queued callable in a frame that a failed future's traceback
# keeps (futures.py): the copy must sit in a holder that lets go of it when it runs.
_relayed = relay.relayed_single_use if sys.version_info >= (3, 14) else relay.relayed

NAME = "asyncio"
RUNNER = "run_in_executor"
RUNNER_TO_THREAD = "to_thread"


# asyncio and the thread pool are not imported here: the table imports this module at
# every activation, and the wrapper runs only once asyncio is loaded.
def _is_thread_pool(loop: Any, executor: Any) -> bool:
    from concurrent.futures.thread import ThreadPoolExecutor

    if executor is None:
        executor = getattr(loop, "_default_executor", None)
        if executor is None:  # the loop will create a ThreadPoolExecutor
            return True
    return (
        isinstance(executor, ThreadPoolExecutor)
        and type(executor).__name__ != "InterpreterPoolExecutor"
    )


def _checked_by_asyncio(loop: Any, func: Any) -> bool:
    """In debug mode asyncio rejects coroutines here; let it see the user's callable."""
    from asyncio import coroutines

    return bool(getattr(loop, "_debug", False)) and (
        coroutines.iscoroutine(func) or coroutines.iscoroutinefunction(func)
    )


def relay_run_in_executor(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if len(args) >= 2 and not kwargs:
        try:
            relay_it = _is_thread_pool(instance, args[0]) and not _checked_by_asyncio(
                instance, args[1]
            )
        except Exception:  # a loop or executor that answers attribute lookups oddly
            logger.debug("ctxrelay: run_in_executor passed through", exc_info=True)
            relay_it = False
        if relay_it:
            func = args[1]
            runner = RUNNER_TO_THREAD if relay.runs_in_own_context(func) else RUNNER
            return wrapped(args[0], _relayed(runner, func), *args[2:])
    return wrapped(*args, **kwargs)


PATCHES = (
    Patch(NAME, "asyncio.base_events", "BaseEventLoop.run_in_executor", relay_run_in_executor),
)
