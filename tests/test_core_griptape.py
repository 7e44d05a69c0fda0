"""The reference case: a griptape listener added in the main thread, events published
from other threads.  Each runner is shown losing the listener without ctxrelay, then
keeping it with ctxrelay.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from attrs import define
from griptape.events import BaseEvent, EventBus, EventListener

import ctxrelay
from helpers import baseline


@define
class Ping(BaseEvent):
    pass


def publish_and_count() -> int:
    """Runs in the worker: publish one event, report how many listeners it saw."""
    EventBus.publish_event(Ping())
    return len(EventBus.event_listeners)


def via_thread(fn: Callable[[], Any]) -> Any:
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()))
    thread.start()
    thread.join(10)
    return box[0]


class _Subclass(threading.Thread):
    """Overrides run() without calling super(): wrapping Thread.run would miss it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.fn = fn
        self.result: Any = None

    def run(self) -> None:
        self.result = self.fn()


def via_subclass(fn: Callable[[], Any]) -> Any:
    thread = _Subclass(fn)
    thread.start()
    thread.join(10)
    return thread.result


def via_timer(fn: Callable[[], Any]) -> Any:
    box: list[Any] = []
    timer = threading.Timer(0.001, lambda: box.append(fn()))
    timer.start()
    timer.join(10)
    return box[0]


def via_submit(fn: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(2) as pool:
        return pool.submit(fn).result(10)


def via_map(fn: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: fn(), range(4)))
    assert len(set(results)) == 1, results
    return results[0]


def via_run_in_executor(fn: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    return asyncio.run(main())


def via_custom_executor(fn: Callable[[], Any]) -> Any:
    async def main() -> Any:
        with ThreadPoolExecutor(1) as pool:
            return await asyncio.get_running_loop().run_in_executor(pool, fn)

    return asyncio.run(main())


RUNNERS = [
    via_thread,
    via_subclass,
    via_timer,
    via_submit,
    via_map,
    via_run_in_executor,
    via_custom_executor,
]


def scenario(run: Callable[[Callable[[], Any]], Any]) -> tuple[int, bool]:
    """Add a listener here, publish from workers: (listeners seen, every event received)."""
    received: list[BaseEvent] = []
    published: list[int] = []

    def publish() -> int:
        published.append(1)
        return publish_and_count()

    with EventListener(on_event=received.append):
        seen = run(publish)
    return seen, len(received) == len(published) > 0


@pytest.mark.parametrize("run", RUNNERS, ids=lambda r: r.__name__)
def test_listener_lost_without_ctxrelay_and_kept_with_it(run: Callable[..., Any]) -> None:
    # Each scenario in its own copy: the listener list is a ContextVar and must not
    # leak between the two halves of the test (or into other tests).
    before = contextvars.copy_context().run(scenario, run)
    # Without ctxrelay the worker starts with an empty context (3.14 with the flag on:
    # a copy of the starter's, and each pool here is fresh: its worker starts in submit).
    assert before == baseline((0, False), (1, True))

    ctxrelay.instrument(spans=False)
    after = contextvars.copy_context().run(scenario, run)
    assert after == (1, True), "with ctxrelay the listener fires in the worker"


def test_listener_added_in_worker_does_not_leak_back() -> None:
    """The worker runs in a copy: what it changes stays there."""
    ctxrelay.instrument(spans=False)

    def add_in_worker() -> int:
        EventBus.add_event_listener(EventListener(on_event=lambda e: None))
        return len(EventBus.event_listeners)

    def run() -> tuple[int, int]:
        with EventListener(on_event=lambda e: None):
            in_worker = via_thread(add_in_worker)
            return in_worker, len(EventBus.event_listeners)

    assert contextvars.copy_context().run(run) == (2, 1)
