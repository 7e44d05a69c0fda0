"""``anyio.to_thread.run_sync``: anyio copies the context per call already; ctxrelay adds
the hop span inside anyio's copy (no second copy) and keeps anyio's long-lived worker
threads from pinning the context of the call that started them.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import threading
import weakref
from typing import Any

import pytest

pytest.importorskip("anyio")
import anyio
import anyio.to_thread
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

import ctxrelay
from ctxrelay import attributes
from ctxrelay.runners import _thread_roles
from helpers import parent_of, spans_named

pytestmark = pytest.mark.timeout(60)

VAR: contextvars.ContextVar[Any] = contextvars.ContextVar("test_anyio_var", default="unset")


def in_fresh_context(coro_fn: Any) -> Any:
    """asyncio.run in a copy of the test's context (nothing leaks into other tests)."""
    return contextvars.copy_context().run(asyncio.run, coro_fn())


def work(tracer: trace.Tracer) -> str:
    with tracer.start_as_current_span("work"):
        seen = VAR.get()
        VAR.set("set by work")  # must not leak into the next call
        return seen


def test_hop_span_around_each_call_inside_anyios_copy(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    async def main() -> list[str]:
        VAR.set("caller")
        with tracer.start_as_current_span("caller"):
            return [await anyio.to_thread.run_sync(work, tracer) for _ in range(2)]

    # Without ctxrelay: values already follow (anyio copies), but no hop is recorded.
    assert in_fresh_context(main) == ["caller", "caller"]
    parents = [parent_of(s, exporter).name for s in spans_named(exporter, "work")]
    assert parents == ["caller", "caller"]

    exporter.clear()
    ctxrelay.instrument()
    assert in_fresh_context(main) == ["caller", "caller"]
    (caller,) = spans_named(exporter, "caller")
    hops = spans_named(exporter, "anyio.to_thread")
    assert len(hops) == 2  # one per call: not doubled by the thread or pool patches
    for span in spans_named(exporter, "work"):
        hop = parent_of(span, exporter)
        assert hop.name == "anyio.to_thread work"
        assert hop.attributes[attributes.ATTR_RUNNER] == "anyio.to_thread"
        assert hop.attributes[attributes.CODE_FUNCTION_NAME] == f"{__name__}.work"
        assert hop.attributes[attributes.THREAD_NAME] == "AnyIO worker thread"
        assert hop.attributes[attributes.ATTR_ORIGIN_THREAD_ID] == threading.get_ident()
        assert parent_of(hop, exporter).context.span_id == caller.context.span_id
    # The worker thread itself is anyio's plumbing: no span for its life.
    runners = {s.attributes.get(attributes.ATTR_RUNNER) for s in exporter.get_finished_spans()}
    assert "Thread" not in runners


def test_work_runs_in_anyios_own_copy() -> None:
    """anyio marks its copy "no async library here" (sniffio): ctxrelay must not run the
    work in a second copy of the caller's context, where sniffio would say "asyncio"
    in a worker thread and anyio.from_thread / sniffio users would misbehave."""
    sniffio = pytest.importorskip("sniffio")

    def library() -> str:
        try:
            return sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return "none"

    async def main() -> str:
        with trace.get_tracer("t").start_as_current_span("caller"):  # so a hop is recorded
            return await anyio.to_thread.run_sync(library)

    assert in_fresh_context(main) == "none"
    ctxrelay.instrument()
    assert in_fresh_context(main) == "none"


def test_exception_passes_through_unchanged(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    error = ValueError("boom")
    calls: list[int] = []

    def fail() -> None:
        calls.append(1)
        raise error

    async def main() -> BaseException:
        with tracer.start_as_current_span("caller"):
            try:
                await anyio.to_thread.run_sync(fail)
            except ValueError as exc:
                return exc
        raise AssertionError("no exception")

    ctxrelay.instrument()
    assert in_fresh_context(main) is error
    assert calls == [1]
    (hop,) = spans_named(exporter, "anyio.to_thread fail")
    assert hop.status.status_code is StatusCode.ERROR


class Payload:
    """Something a request keeps in a ContextVar (a user, a span, a listener list)."""


def _payload_pinned_by_idle_worker() -> bool:
    """Run one call from a task that holds a Payload in VAR; once the task is gone, is the
    Payload still alive while anyio's worker thread (idle, kept for 10 s) lives on?"""

    async def main() -> bool:
        async def request() -> weakref.ref[Payload]:
            payload = Payload()
            VAR.set(payload)
            await anyio.to_thread.run_sync(lambda: None)  # starts the worker thread
            return weakref.ref(payload)

        task = asyncio.create_task(request())
        ref = await task
        del task  # a finished task keeps its context
        await asyncio.sleep(0)
        workers = [t for t in threading.enumerate() if t.name == "AnyIO worker thread"]
        assert workers, "the worker should still be idling"
        # The worker reports the result before it drops its locals (the item, with the
        # call's context): without the GIL (3.14t) this thread may look in between.  A
        # context that only a finished call held is gone within moments; a pinned one
        # stays for the worker's life.
        for _ in range(100):
            gc.collect()
            if ref() is None:
                return False
            await asyncio.sleep(0.02)
        return True

    return bool(in_fresh_context(main))


def test_worker_threads_do_not_pin_the_starting_calls_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not _payload_pinned_by_idle_worker()  # without ctxrelay

    ctxrelay.instrument()
    assert not _payload_pinned_by_idle_worker()

    if sys.version_info >= (3, 14):
        # anyio (4.16.0 read) starts its workers with Thread(context=Context()) on 3.14:
        # that explicit context wins over the thread patch, exempt or not.
        return
    # The exemption is what does it: without it, the thread patch would carry the first
    # call's context into WorkerThread.run for the worker's whole life.
    monkeypatch.setattr(_thread_roles, "EXEMPT_CLASSES", set())
    assert _payload_pinned_by_idle_worker()
