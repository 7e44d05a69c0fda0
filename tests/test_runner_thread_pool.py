"""``multiprocessing.pool.ThreadPool``: each task runs in a copy of its caller's context.

Every public method is checked, first without ctxrelay (the task sees nothing), then
with it.  Plus: isolation between tasks (one worker, so tasks share a thread), the
builder's context not pinned by the pool's threads, exceptions unchanged, the hop span,
and the process-based ``Pool`` left alone.
"""

from __future__ import annotations

import contextvars
import gc
import multiprocessing
import operator
import threading
import weakref
from collections.abc import Callable
from multiprocessing.pool import Pool, ThreadPool
from typing import Any

import pytest

import ctxrelay
from ctxrelay import attributes
from helpers import parent_of, spans_named

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("test_tp_tenant", default="<unset>")
scratch: contextvars.ContextVar[str] = contextvars.ContextVar("test_tp_scratch", default="<unset>")

TIMEOUT = 10


def read_tenant(_: Any = None) -> str:
    return tenant.get()


def read_tenant2(_a: Any, _b: Any) -> str:
    return tenant.get()


def _imap(pool: ThreadPool, chunksize: int) -> list[str]:
    return list(pool.imap(read_tenant, range(4), chunksize=chunksize))


METHODS: dict[str, Callable[[ThreadPool], list[str]]] = {
    "apply": lambda p: [p.apply(read_tenant)],
    "apply_async": lambda p: [p.apply_async(read_tenant).get(TIMEOUT)],
    "apply_async_kw": lambda p: [p.apply_async(func=read_tenant).get(TIMEOUT)],
    "map": lambda p: p.map(read_tenant, range(6)),
    "map_chunks": lambda p: p.map(read_tenant, range(6), chunksize=3),
    "map_async": lambda p: p.map_async(read_tenant, range(4)).get(TIMEOUT),
    "imap": lambda p: _imap(p, 1),
    "imap_chunks": lambda p: _imap(p, 2),
    "imap_unordered": lambda p: list(p.imap_unordered(read_tenant, range(4))),
    "starmap": lambda p: p.starmap(read_tenant2, [(1, 2), (3, 4)]),
    "starmap_async": lambda p: p.starmap_async(read_tenant2, [(1, 2), (3, 4)]).get(TIMEOUT),
}


def run_from_request(method: Callable[[ThreadPool], list[str]]) -> list[str]:
    """Build a pool, then call ``method`` from a 'request' that set the tenant."""
    pool = ThreadPool(2)
    try:

        def request() -> list[str]:
            tenant.set("acme")
            return method(pool)

        return contextvars.copy_context().run(request)
    finally:
        pool.terminate()
        pool.join()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_carries_the_callers_context(name: str) -> None:
    method = METHODS[name]
    lost = run_from_request(method)
    assert lost and set(lost) == {"<unset>"}  # the loss, without ctxrelay

    ctxrelay.instrument(spans=False)
    fixed = run_from_request(method)
    assert len(fixed) == len(lost) and set(fixed) == {"acme"}


def test_a_task_never_sees_what_an_earlier_task_set() -> None:
    """One worker thread runs every task: each must start from its caller's values."""

    def task(i: int) -> tuple[str, str]:
        seen = (tenant.get(), scratch.get())
        scratch.set(f"set-by-{i}")
        tenant.set(f"overwritten-by-{i}")
        return seen

    ctxrelay.instrument(spans=False)
    pool = ThreadPool(1)
    try:

        def request() -> None:
            tenant.set("acme")
            expected = ("acme", "<unset>")
            assert pool.apply(task, (0,)) == expected
            assert pool.apply_async(task, (1,)).get(TIMEOUT) == expected
            # chunksize=4: four items share one task (one mapstar call) on one worker
            assert pool.map(task, range(8), chunksize=4) == [expected] * 8
            assert list(pool.imap(task, range(4), chunksize=2)) == [expected] * 4
            assert list(pool.imap_unordered(task, range(3))) == [expected] * 3
            assert tenant.get() == "acme" and scratch.get() == "<unset>"

        contextvars.copy_context().run(request)
    finally:
        pool.terminate()
        pool.join()


def test_each_caller_gets_its_own_values_from_the_same_pool() -> None:
    """Two 'requests' share a long-lived pool: a stale snapshot would mix them up."""
    ctxrelay.instrument(spans=False)
    pool = ThreadPool(1)
    try:

        def request(name: str) -> list[str]:
            tenant.set(name)
            return [pool.apply(read_tenant), *pool.map(read_tenant, range(3))]

        for name in ("first", "second", "third"):
            assert contextvars.copy_context().run(request, name) == [name] * 4
        # A caller with nothing set sees nothing, whoever used the pool before.
        assert contextvars.Context().run(pool.apply, read_tenant) == "<unset>"
    finally:
        pool.terminate()
        pool.join()


class _Payload:
    pass


def test_the_pools_threads_do_not_pin_the_builders_context() -> None:
    """Workers and handlers start when the pool is built, and live as long as it does."""
    holder: contextvars.ContextVar[Any] = contextvars.ContextVar("test_tp_holder")
    ctxrelay.instrument(spans=False)
    release = threading.Event()

    def build(
        extra_thread: bool,
    ) -> tuple[ThreadPool, weakref.ref[_Payload], threading.Thread | None]:
        payload = _Payload()
        holder.set(payload)
        pool = ThreadPool(2)
        thread = None
        if extra_thread:  # control: an ordinary thread does carry (and keep) the context
            thread = threading.Thread(target=release.wait, args=(TIMEOUT,))
            thread.start()
        return pool, weakref.ref(payload), thread

    for extra_thread in (True, False):
        pool, ref, thread = contextvars.Context().run(build, extra_thread)
        try:
            assert pool.apply(read_tenant) == "<unset>"  # the pool works meanwhile
            gc.collect()
            if extra_thread:
                assert ref() is not None  # the check below can see a pinned context
                release.set()
                assert thread is not None
                thread.join(TIMEOUT)
                gc.collect()
            assert ref() is None
        finally:
            pool.terminate()
            pool.join()


class Boom(Exception):
    pass


def test_exceptions_reach_the_caller_unchanged(exporter: Any, tracer: Any) -> None:
    raised = Boom("no")

    def fail(_: Any = None) -> None:
        raise raised

    ctxrelay.instrument()
    pool = ThreadPool(1)
    calls: list[int] = []

    def count(x: int) -> int:
        calls.append(x)
        return x

    try:
        with tracer.start_as_current_span("caller"):
            with pytest.raises(Boom) as info:
                pool.apply(fail)
            assert info.value is raised
            with pytest.raises(Boom) as info:
                pool.map(fail, range(3), chunksize=3)
            assert info.value is raised
            assert pool.map(count, range(5), chunksize=2) == list(range(5))
    finally:
        pool.terminate()
        pool.join()
    assert sorted(calls) == list(range(5))  # every item ran exactly once
    failed = [s for s in spans_named(exporter, "ThreadPool fail") if not s.status.is_ok]
    assert len(failed) == 2


def test_hop_span_is_a_child_of_the_span_current_at_hand_over(exporter: Any, tracer: Any) -> None:
    def work(_: Any = None) -> str:
        with tracer.start_as_current_span("work"):
            return tenant.get()

    ctxrelay.instrument()
    pool = ThreadPool(2)
    try:
        with tracer.start_as_current_span("caller"):
            assert pool.apply(work) == "<unset>"
        with tracer.start_as_current_span("mapper"):
            assert pool.map(work, range(4), chunksize=2) == ["<unset>"] * 4
    finally:
        pool.terminate()
        pool.join()

    hops = spans_named(exporter, "ThreadPool work")
    assert len(hops) == 3  # one for apply, one per chunk of the map
    for hop in hops:
        assert hop.attributes[attributes.ATTR_RUNNER] == "ThreadPool"
        assert hop.attributes[attributes.CODE_FUNCTION_NAME].endswith(work.__qualname__)
        assert hop.attributes[attributes.ATTR_ORIGIN_THREAD_NAME] == threading.current_thread().name
    parents = sorted(parent_of(h, exporter).name for h in hops)  # type: ignore[union-attr]
    assert parents == ["caller", "mapper", "mapper"]
    works = spans_named(exporter, "work")
    assert len(works) == 5
    hop_ids = {h.context.span_id for h in hops}
    assert all(w.parent is not None and w.parent.span_id in hop_ids for w in works)


def test_no_active_span_means_no_hop_span(exporter: Any) -> None:
    ctxrelay.instrument()
    pool = ThreadPool(1)
    try:
        assert pool.map(read_tenant, range(3)) == ["<unset>"] * 3
    finally:
        pool.terminate()
        pool.join()
    assert spans_named(exporter, "ThreadPool") == []


def test_the_process_pool_is_left_alone() -> None:
    """A Context cannot be pickled: the thread_pool entry leaves the process-based Pool
    alone (the multiprocessing entry carries declared values: test_runner_multiprocessing)."""
    ctxrelay.instrument(exclude=["multiprocessing"])
    assert hasattr(ThreadPool.__dict__["apply_async"], "__wrapped__")  # the thread pool is
    for attr in ("apply_async", "_guarded_task_generation"):
        assert not hasattr(Pool.__dict__[attr], "__wrapped__")
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(operator.neg, (3,)) == -3
        assert pool.map(operator.neg, range(3)) == [0, -1, -2]
        assert list(pool.imap(abs, [-1, -2])) == [1, 2]


def test_uninstrument_restores_the_pool_class() -> None:
    before = dict(ThreadPool.__dict__)
    ctxrelay.instrument()
    assert hasattr(ThreadPool.__dict__["apply_async"], "__wrapped__")
    ctxrelay.uninstrument()
    assert dict(ThreadPool.__dict__) == before
    assert run_from_request(METHODS["map"]) == ["<unset>"] * 6
