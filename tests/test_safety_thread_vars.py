"""Host safety, variables that belong to their thread are never carried into another.

Each entry of ``ctxrelay.left_behind.THREAD_OWNED`` is exercised with the real library:
the same scenario bare and instrumented (under a sampled span), outcomes compared.
"""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

import pytest

from ctxrelay import left_behind
from safety_support import (
    BARE_THREADS_INHERIT,
    HANG,
    Outcome,
    assert_expected,
    differential,
)

anyio = pytest.importorskip("anyio")
sniffio = pytest.importorskip("sniffio")
from anyio.from_thread import start_blocking_portal  # noqa: E402


def test_every_entry_names_a_real_contextvar() -> None:
    for entry in left_behind.THREAD_OWNED:
        target: Any = importlib.import_module(entry.module)
        for part in entry.attribute.split("."):
            target = getattr(target, part)
        assert isinstance(target, ContextVar), entry


def _library_seen_in(start: Any) -> Outcome:
    """From async code under anyio (which sets sniffio's variable), ask in another thread."""

    def ask() -> str:
        try:
            return sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return "none"

    async def main() -> Any:
        return start(ask)

    return Outcome(value=anyio.run(main))


def _in_thread(fn: Any) -> Any:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join(HANG)
    return result[0]


def _in_pool(fn: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(HANG)


@pytest.mark.parametrize("start", [_in_thread, _in_pool], ids=["Thread", "submit"])
def test_another_thread_is_not_inside_the_event_loop(start: Any) -> None:
    bare, instrumented = differential(lambda: _library_seen_in(start))
    assert_expected(bare, instrumented, Outcome(value="none"))


def test_a_blocking_portal_starts_in_a_thread_started_from_async_code() -> None:
    """anyio's own test_from_async: the new thread starts an event loop of its own."""

    async def add(a: int, b: int) -> int:
        return a + b

    def in_thread() -> Any:
        try:
            with start_blocking_portal() as portal:
                return portal.call(add, 1, 2)
        except RuntimeError as exc:  # "Already running asyncio in this thread"
            return f"RuntimeError: {exc}"

    def scenario() -> Outcome:
        async def main() -> Any:
            return _in_thread(in_thread)

        return Outcome(value=anyio.run(main))

    bare, instrumented = differential(scenario)
    assert_expected(bare, instrumented, Outcome(value=3))


VAR: ContextVar[str] = ContextVar("safety_thread_vars", default="unset")


def test_the_rest_of_the_context_is_still_carried() -> None:
    """Leaving one variable behind keeps every other one (the point of ctxrelay)."""

    def scenario() -> Outcome:
        async def main() -> Any:
            VAR.set("request")
            return _in_thread(lambda: (VAR.get(), sniffio.current_async_library_cvar.get()))

        return Outcome(value=anyio.run(main))

    bare, instrumented = differential(scenario)
    if not BARE_THREADS_INHERIT:
        assert bare.value == ("unset", None)
    assert instrumented.value == ("request", None)
