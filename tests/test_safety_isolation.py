"""Host safety, no context crosses from one request to another and none is pinned.

A thread that serves many pieces of work (a pool's worker, a helper thread of the
stdlib) never captures the context of the request that happened to start it, whatever
is included or excluded: request B never sees request A's values, and A's values are
freed when A is done although the thread lives on.  Same scenario bare and
instrumented (under a sampled span), outcomes compared.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import logging.handlers
import multiprocessing
import queue
import subprocess
import sys
import weakref
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextvars import ContextVar, copy_context
from multiprocessing.pool import ThreadPool
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ctxrelay import attributes
from safety_support import (
    BARE_THREADS_INHERIT,
    HANG,
    Outcome,
    assert_expected,
    assert_same,
    collected,
    differential,
)

REQUEST: ContextVar[tuple[str, Any]] = ContextVar("safety_request")


class Payload:
    """A request's value; weakly referenced to see whether anything keeps it."""


def in_request(name: str, action: Callable[[], Any]) -> tuple[Any, weakref.ref[Payload]]:
    """Run ``action`` as request ``name`` (a context of its own holding a Payload)."""

    def body() -> tuple[Any, weakref.ref[Payload]]:
        payload = Payload()
        REQUEST.set((name, payload))
        return action(), weakref.ref(payload)

    return copy_context().run(body)


def seen() -> str | None:
    return REQUEST.get((None,))[0]


def thread_pool_executor() -> Outcome:
    pool = ThreadPoolExecutor(1)
    try:
        _, ref = in_request("A", lambda: pool.submit(seen).result(HANG))  # starts the worker
        b_saw, _ = in_request("B", lambda: pool.submit(seen).result(HANG))
        return Outcome(value=b_saw, extra={"A pinned": not collected(ref)})
    finally:
        pool.shutdown()


def multiprocessing_thread_pool() -> Outcome:
    holder: list[ThreadPool] = []
    _, ref = in_request("A", lambda: holder.append(ThreadPool(1)))  # its threads start here
    pool = holder.pop()
    try:
        b_saw, _ = in_request("B", lambda: pool.apply_async(seen).get(HANG))
        return Outcome(value=b_saw, extra={"A pinned": not collected(ref)})
    finally:
        pool.terminate()
        pool.join()


def anyio_worker() -> Outcome:
    anyio = pytest.importorskip("anyio")

    async def main() -> Outcome:
        async def request(name: str) -> tuple[Any, weakref.ref[Payload]]:
            payload = Payload()
            REQUEST.set((name, payload))
            return await anyio.to_thread.run_sync(seen), weakref.ref(payload)

        task = asyncio.create_task(request("A"))  # starts anyio's worker thread
        _, ref = await task
        del task  # a finished task keeps its context
        b_saw, _ = await asyncio.create_task(request("B"))
        return Outcome(value=b_saw, extra={"A pinned": not collected(ref)})

    return copy_context().run(asyncio.run, main())


POOLS = {
    "ThreadPoolExecutor": thread_pool_executor,
    "ThreadPool": multiprocessing_thread_pool,
    "anyio.to_thread": anyio_worker,
}

#: instrument() arguments under which the pool's own patch is off.
CONFIGURATIONS = [
    ("EXCLUDE=futures", "ThreadPoolExecutor", {"exclude": ["futures", "asyncio"]}),
    ("INCLUDE=threading", "ThreadPoolExecutor", {"include": ["threading"]}),
    ("INCLUDE=threading", "ThreadPool", {"include": ["threading"]}),
    ("INCLUDE=threading", "anyio.to_thread", {"include": ["threading"]}),
    ("EXCLUDE=thread_pool", "ThreadPool", {"exclude": ["thread_pool"]}),
    ("EXCLUDE=anyio", "anyio.to_thread", {"exclude": ["anyio"]}),
]


@pytest.mark.parametrize(
    ("setting", "pool", "selection"), CONFIGURATIONS, ids=[f"{c[0]}-{c[1]}" for c in CONFIGURATIONS]
)
def test_pool_workers_never_capture_whatever_is_excluded(
    setting: str, pool: str, selection: dict[str, Any]
) -> None:
    bare, instrumented = differential(POOLS[pool], **selection)
    expected_b = "B" if pool == "anyio.to_thread" else None  # anyio copies per call itself
    assert_expected(bare, instrumented, Outcome(value=expected_b, extra={"A pinned": False}))


# --- long-lived stdlib helper threads started inside a request -------------------------


def _feeder_thread() -> Outcome:
    q: Any = multiprocessing.get_context("spawn").Queue()
    try:
        _, ref = in_request("A", lambda: q.put("x"))  # starts the QueueFeederThread
        return Outcome(value=q.get(timeout=HANG), extra={"A pinned": not collected(ref)})
    finally:
        q.close()
        q.join_thread()


def _process_pool_manager() -> Outcome:
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        value, ref = in_request("A", lambda: pool.submit(abs, -3).result(HANG))
        return Outcome(value=value, extra={"A pinned": not collected(ref)})
    finally:
        pool.shutdown()


def _queue_listener() -> Outcome:
    records: queue.Queue[Any] = queue.Queue()
    listener = logging.handlers.QueueListener(records, logging.NullHandler())
    try:
        _, ref = in_request("A", listener.start)  # starts the listener's thread
        return Outcome(extra={"A pinned": not collected(ref)})
    finally:
        listener.stop()


def _thread_pool_threads() -> Outcome:
    """ThreadPool's workers and its three handler threads, all started at construction."""
    holder: list[ThreadPool] = []
    _, ref = in_request("A", lambda: holder.append(ThreadPool(2)))
    pool = holder.pop()
    try:
        return Outcome(
            value=pool.apply_async(abs, (-2,)).get(HANG), extra={"A pinned": not collected(ref)}
        )
    finally:
        pool.terminate()
        pool.join()


HELPERS = {
    "multiprocessing.Queue feeder": _feeder_thread,
    "ProcessPoolExecutor manager": _process_pool_manager,
    "logging QueueListener": _queue_listener,
    "ThreadPool workers and handlers": _thread_pool_threads,
}


@pytest.mark.parametrize("helper", HELPERS)
def test_stdlib_helper_threads_neither_pin_a_request_nor_record_a_hop(
    helper: str, exporter: InMemorySpanExporter
) -> None:
    bare, instrumented = differential(HELPERS[helper])
    assert instrumented.extra == {"A pinned": False}
    if not BARE_THREADS_INHERIT:
        assert_same(bare, instrumented)
    thread_hops = [
        s.name
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get(attributes.ATTR_RUNNER) in ("Thread", "Timer")
    ]
    assert thread_hops == [], "a helper thread recorded a hop (it would stay open for its life)"


# --- importlib.reload of a patched module ----------------------------------------------

_RELOAD = r"""
import gc, importlib, json, sys, weakref
from contextvars import ContextVar, copy_context
import concurrent.futures.thread as pool_module
if sys.argv[1] == "instrumented":
    import ctxrelay
    ctxrelay.instrument()
importlib.reload(pool_module)
REQUEST = ContextVar("request")
class Payload: pass
def seen(): return REQUEST.get((None,))[0]
def in_request(name, action):
    def body():
        payload = Payload()
        REQUEST.set((name, payload))
        return action(), weakref.ref(payload)
    return copy_context().run(body)
pool = pool_module.ThreadPoolExecutor(1)
a_saw, ref = in_request("A", lambda: pool.submit(seen).result(20))
b_saw, _ = in_request("B", lambda: pool.submit(seen).result(20))
gc.collect()
out = {"A saw": a_saw, "B saw": b_saw, "A pinned": ref() is not None}
pool.shutdown()
print(json.dumps(out))
"""


def _reload_run(mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _RELOAD, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_reloading_a_patched_module_leaks_nothing_between_requests() -> None:
    bare = _reload_run("bare")
    instrumented = _reload_run("instrumented")
    if not BARE_THREADS_INHERIT:
        assert bare == {"A saw": None, "B saw": None, "A pinned": False}
    # With ctxrelay each request's task sees its own request, and nothing pins A.
    assert instrumented == {"A saw": "A", "B saw": "B", "A pinned": False}


# --- long-lived worker threads of the libraries around ctxrelay --------------------------
# Each is started by whichever request first needs one and then serves every later job
# (the library carries the context per job itself, or runs each job in an empty one).


def _trio_thread_cache() -> Outcome:
    """``trio.to_thread.run_sync``: the value set in a trio task, the call made, the value
    replaced: nothing else refers to it (bare, and with ctxrelay)."""
    trio = pytest.importorskip("trio")
    thread_cache = pytest.importorskip("trio._core._thread_cache")
    saved = thread_cache.THREAD_CACHE
    # trio's cache is one per process and its workers idle for 10 s: a fresh one makes
    # this run start its own worker (the first requester is the one that could be pinned)
    thread_cache.THREAD_CACHE = thread_cache.ThreadCache()

    async def main() -> Outcome:
        payload = Payload()
        REQUEST.set(("A", payload))
        await trio.to_thread.run_sync(seen)  # starts the worker
        REQUEST.set(("A", Payload()))
        ref = weakref.ref(payload)
        referrers = len(gc.get_referrers(payload))
        del payload
        b_saw: list[Any] = []

        async def request_b() -> None:
            REQUEST.set(("B", Payload()))
            b_saw.append(await trio.to_thread.run_sync(seen))  # the same worker

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request_b)
        return Outcome(
            value=b_saw[0], extra={"A pinned": not collected(ref), "referrers": referrers}
        )

    try:
        return copy_context().run(trio.run, main)
    finally:
        thread_cache.THREAD_CACHE = saved


def _distributed_pool() -> Outcome:
    threadpoolexecutor = pytest.importorskip("distributed.threadpoolexecutor")
    pool = threadpoolexecutor.ThreadPoolExecutor(1)
    try:
        _, ref = in_request("A", lambda: pool.submit(seen).result(HANG))  # starts the worker
        b_saw, _ = in_request("B", lambda: pool.submit(seen).result(HANG))
        return Outcome(value=b_saw, extra={"A pinned": not collected(ref)})
    finally:
        pool.shutdown()


def _sentry_worker() -> Outcome:
    worker_module = pytest.importorskip("sentry_sdk.worker")
    worker = worker_module.BackgroundWorker()
    saw: queue.Queue[str | None] = queue.Queue()
    try:
        _, ref = in_request("A", lambda: worker.submit(lambda: saw.put(seen())))  # starts it
        saw.get(timeout=HANG)
        in_request("B", lambda: worker.submit(lambda: saw.put(seen())))
        return Outcome(value=saw.get(timeout=HANG), extra={"A pinned": not collected(ref)})
    finally:
        worker.kill()


def _celery_timer() -> Outcome:
    timer2 = pytest.importorskip("celery.utils.timer2")
    timer = timer2.Timer()
    saw: queue.Queue[str | None] = queue.Queue()
    try:
        _, ref = in_request("A", lambda: timer.call_after(0, lambda: saw.put(seen())))
        saw.get(timeout=HANG)
        in_request("B", lambda: timer.call_after(0, lambda: saw.put(seen())))
        return Outcome(value=saw.get(timeout=HANG), extra={"A pinned": not collected(ref)})
    finally:
        timer.stop()


LIBRARY_WORKERS = {
    "trio thread cache": (_trio_thread_cache, "B"),  # trio copies per job itself
    "distributed ThreadPoolExecutor": (_distributed_pool, None),
    "sentry BackgroundWorker": (_sentry_worker, None),
    "celery timer2.Timer": (_celery_timer, None),
}


@pytest.mark.parametrize("library", LIBRARY_WORKERS)
def test_library_worker_threads_never_capture_a_requesters_context(
    library: str, exporter: InMemorySpanExporter
) -> None:
    scenario, b_sees = LIBRARY_WORKERS[library]
    bare, instrumented = differential(scenario)
    extra: dict[str, Any] = {"A pinned": False}
    if library == "trio thread cache":
        extra["referrers"] = 0
    assert_expected(bare, instrumented, Outcome(value=b_sees, extra=extra))
    thread_hops = [
        s.name
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get(attributes.ATTR_RUNNER) in ("Thread", "Timer")
    ]
    assert thread_hops == [], "a worker thread recorded a hop (it would stay open for its life)"
