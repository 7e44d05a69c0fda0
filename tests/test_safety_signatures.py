"""Host safety, wrapper signatures: every callable ctxrelay puts in front of user code
accepts any argument name the user's function accepts (``self``, ``fn``, ``func`` ...).

Same call bare and instrumented (under a sampled span, where the span wrappers run).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool
from typing import Any

import pytest

try:  # a framework extra: the light CI legs run without it
    import blinker
except ImportError:  # pragma: no cover
    blinker = None

import ctxrelay
from safety_support import HANG, Outcome, assert_same, differential


def keywords(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    return args, sorted(kwargs.items())


def _outcome(call: Any) -> Outcome:
    try:
        return Outcome(value=call())
    except TypeError as exc:
        return Outcome(exception=exc)


def submit_self() -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(keywords, 1, self=2).result(HANG)


def submit_fn_keyword() -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(keywords, 1, fn=4, func=5, context=6).result(HANG)


def submit_fn_only_as_keyword() -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn=keywords).result(HANG)  # TypeError in 3.10-3.14, bare too


def thread_pool_self() -> Any:
    with ThreadPool(1) as pool:
        return pool.apply_async(keywords, (1,), {"self": 2, "func": 3}).get(HANG)


def thread_self() -> Any:
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda **kw: result.append(keywords(**kw)), kwargs={"self": 1, "fn": 2}
    )
    thread.start()
    thread.join(HANG)
    return result


def bound_self() -> Any:
    return ctxrelay.bind(keywords)(1, self=2, fn=3)


def to_thread_self() -> Any:
    async def main() -> Any:
        return await asyncio.to_thread(keywords, 1, self=2, func=3)

    return asyncio.run(main())


def listener_self() -> Any:
    signal = blinker.Signal()
    signal.connect(keywords)
    return [value for _, value in signal.send("sender", self=1, fn=2)]


CALLS = {
    "submit(fn, 1, self=2)": submit_self,
    "submit(fn, fn=, func=, context=)": submit_fn_keyword,
    "submit(fn=...)": submit_fn_only_as_keyword,
    "ThreadPool.apply_async(kwds={'self': ...})": thread_pool_self,
    "Thread(kwargs={'self': ...})": thread_self,
    "bind(fn)(self=...)": bound_self,
    "to_thread(fn, self=...)": to_thread_self,
}
if blinker is not None:
    CALLS["listener(self=...)"] = listener_self


@pytest.mark.parametrize("call", CALLS)
def test_any_argument_name_reaches_the_users_function(call: str) -> None:
    bare, instrumented = differential(lambda: _outcome(CALLS[call]))
    assert_same(bare, instrumented)
    if call != "submit(fn=...)":
        assert bare.exception is None, bare.exception
