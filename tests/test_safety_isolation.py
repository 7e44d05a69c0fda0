"""Host safety, no context crosses from one request to another and none is pinned.

A thread that serves many pieces of work (a pool's worker, a helper thread of the
stdlib) never captures the context of the request that happened to start it, whatever
is included or excluded: request B never sees request A's values, and A's values are
freed when A is done although the thread lives on.  Same scenario bare and
instrumented (under a sampled span), outcomes compared.
"""

from __future__ import annotations

import asyncio
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
