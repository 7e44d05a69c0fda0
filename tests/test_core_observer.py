"""The hand-over observer (``relay.set_observer``): told of every hand-over, in the origin
thread, with the decision made; the work runs as it would without it, even when the
observer raises.  And ``CTXRELAY_HOP_SPANS=all``: hand-overs with no active span record
root hop spans.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool
from typing import Any

import pytest

import ctxrelay
from ctxrelay import relay
from helpers import baseline, spans_named

user: contextvars.ContextVar[str] = contextvars.ContextVar("test_obs_user", default="<unset>")


@pytest.fixture
def seen():
    calls: list[tuple[str, Any, bool, bool, int]] = []

    def observer(runner: str, fn: Any, context: Any, hop: Any) -> None:
        calls.append((runner, fn, context is not None, hop is not None, threading.get_ident()))

    relay.set_observer(observer)
    yield calls
    relay.set_observer(None)


def work() -> str:
    return user.get()


def _every_runner() -> list[str]:
    results = []
    thread_result: list[str] = []
    thread = threading.Thread(target=lambda: thread_result.append(work()))
    thread.start()
    thread.join()
    results += thread_result
    with ThreadPoolExecutor(1) as pool:
        results.append(pool.submit(work).result())
    with ThreadPool(1) as pool:
        results.append(pool.apply(work))
        results += pool.map(lambda _: work(), [0])

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(None, work), await asyncio.to_thread(work)]

    results += asyncio.run(main())
    return results


def test_observer_is_told_of_every_hand_over(seen, tracer) -> None:
    user.set("alice")
    bare = _every_runner()
    assert seen == [], "not instrumented: nothing to observe"
    ctxrelay.instrument()
    with tracer.start_as_current_span("request"):
        carried = _every_runner()

    # 3.14 with thread_inherit_context=1: every pool here is fresh, its workers started
    # in this context (ThreadPool's at construction), so start() copies alice into all.
    assert bare == baseline(["<unset>"] * 4 + ["<unset>", "alice"], ["alice"] * 6)
    assert carried == ["alice"] * 6
    runners = [call[0] for call in seen]
    for runner in ("Thread", "ThreadPoolExecutor", "ThreadPool", "run_in_executor", "to_thread"):
        assert runner in runners, runners
    me = threading.get_ident()
    assert all(call[4] == me for call in seen), "told in the origin thread"
    assert all(call[3] for call in seen), "a span was active: every hand-over traced"
    by_runner = {call[0]: call for call in seen}
    assert by_runner["ThreadPoolExecutor"][1] is work
    assert by_runner["ThreadPoolExecutor"][2], "ctxrelay's own copy"
    assert not by_runner["to_thread"][2], "asyncio.to_thread copies the context itself"


def test_a_failing_observer_changes_nothing(tracer) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("observer bug")

    relay.set_observer(broken)
    try:
        ctxrelay.instrument()
        user.set("bob")
        assert _every_runner() == ["bob"] * 6
    finally:
        relay.set_observer(None)


def test_hop_spans_all_records_hand_overs_with_no_active_span(monkeypatch, exporter) -> None:
    ctxrelay.instrument()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(work).result()
    assert spans_named(exporter, "ThreadPoolExecutor") == [], "default: no span, no hop"

    monkeypatch.setenv("CTXRELAY_HOP_SPANS", "all")
    ctxrelay.instrument()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(work).result()
    (hop,) = spans_named(exporter, "ThreadPoolExecutor")
    assert hop.parent is None, "a new trace: the hop span is its root"


def test_hop_spans_all_as_a_keyword(exporter) -> None:
    ctxrelay.instrument(spans="all")
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    (hop,) = spans_named(exporter, "Thread")
    assert hop.parent is None
