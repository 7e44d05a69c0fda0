"""pyee: EventEmitter, ExecutorEventEmitter (handlers in a pool), AsyncIOEventEmitter."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("pyee", reason="pyee is not installed (the frameworks extra)")
from pyee import EventEmitter
from pyee.asyncio import AsyncIOEventEmitter
from pyee.executor import ExecutorEventEmitter

import ctxrelay
from ctxrelay import attributes as keys
from listener_helpers import (
    assert_failed,
    assert_listener_tree,
    assert_not_recorded,
    is_child,
    listeners,
    only_dispatch,
    payloads,
)


def test_emit_spans_order_and_exactly_once(exporter, tracer):
    ee = EventEmitter()
    calls: list[str] = []

    def first(value):
        calls.append(f"first {value}")

    def second(value):
        calls.append(f"second {value}")

    ee.on("data", first)
    ee.on("data", second)
    assert ee.emit("data", 1) is True
    plain_calls = list(calls)

    ctxrelay.instrument()
    calls.clear()
    with tracer.start_as_current_span("request") as request:
        assert ee.emit("data", 1) is True
    assert calls == plain_calls == ["first 1", "second 1"]
    dispatch, _ = assert_listener_tree(exporter, "pyee", "data", [first, second])
    assert dispatch.parent.span_id == request.get_span_context().span_id

    exporter.clear()
    assert ee.emit("nobody-listens") is False  # no handler: nothing recorded
    assert exporter.get_finished_spans() == ()
    assert ee.listeners("data") == [first, second]  # registrations untouched


def test_emit_exception_and_unhandled_error_event(exporter):
    ee = EventEmitter()
    boom = ValueError("handler failed")
    calls: list[str] = []

    @ee.on("data")
    def bad():
        calls.append("bad")
        raise boom

    @ee.on("data")
    def never():
        calls.append("never")

    ctxrelay.instrument()
    with pytest.raises(ValueError) as raised:
        ee.emit("data")
    assert raised.value is boom and calls == ["bad"]
    (span,) = listeners(exporter, "pyee")
    assert_failed(span, boom)
    with pytest.raises(ValueError) as raised:  # unhandled "error" raises, as without ctxrelay
        ee.emit("error", boom)
    assert raised.value is boom


def test_once_handler_runs_once(exporter):
    ee = EventEmitter()
    calls: list[int] = []

    @ee.once("tick")
    def on_tick(n):
        calls.append(n)

    ctxrelay.instrument()
    ee.emit("tick", 1)
    ee.emit("tick", 2)
    assert calls == [1]
    assert len(listeners(exporter, "pyee")) == 1


def test_executor_emitter_handler_span_in_the_pool_thread(exporter, tracer):
    results: list[tuple[str, object]] = []
    done = threading.Event()

    def handler(value):
        with tracer.start_as_current_span("handle") as span:
            results.append((threading.current_thread().name, span))
        done.set()

    # Without ctxrelay the handler's span in the pool thread is a new trace.
    with ExecutorEventEmitter() as ee:
        ee.on("job", handler)
        with tracer.start_as_current_span("request"):
            ee.emit("job", 1)
    assert done.wait(5)
    assert [s.parent for s in exporter.get_finished_spans() if s.name == "handle"] == [None]

    exporter.clear()
    done.clear()
    ctxrelay.instrument()
    with ExecutorEventEmitter() as ee:
        ee.on("job", handler)
        with tracer.start_as_current_span("request") as request:
            ee.emit("job", 2)
    assert done.wait(5)

    finished = exporter.get_finished_spans()
    dispatch = only_dispatch(exporter, "pyee")
    (listener,) = listeners(exporter, "pyee")
    hop = next(s for s in finished if s.attributes.get(keys.ATTR_RUNNER) == "ThreadPoolExecutor")
    assert dispatch.parent.span_id == request.get_span_context().span_id
    assert is_child(hop, dispatch)  # the pool hand-over happened inside the dispatch
    assert is_child(listener, hop)  # and the handler ran, timed, in the pool thread
    assert is_child(next(s for s in finished if s.name == "handle"), listener)
    assert listener.attributes[keys.THREAD_NAME] == results[-1][0] != "MainThread"


def test_executor_emitter_exception_goes_to_error_event(exporter):
    boom = RuntimeError("in the pool")
    errors: list[BaseException] = []
    done = threading.Event()

    def bad():
        raise boom

    def on_error(exc):
        errors.append(exc)
        done.set()

    ctxrelay.instrument()
    with ExecutorEventEmitter() as ee:
        ee.on("job", bad)
        ee.on("error", on_error)
        ee.emit("job")
        # Inside the block: pyee re-emits "error" through the pool, closed on exit.
        assert done.wait(5)
    assert errors == [boom] and errors[0] is boom
    failed = [s for s in listeners(exporter, "pyee") if s.name == "pyee listener bad"]
    assert len(failed) == 1
    assert_failed(failed[0], boom)


def test_asyncio_emitter_coroutine_handler_span_covers_the_task(exporter, tracer):
    calls: list[str] = []
    errors: list[BaseException] = []
    boom = KeyError("async")

    async def slow(value):
        await asyncio.sleep(0)
        with tracer.start_as_current_span("inside"):
            calls.append(f"slow {value}")

    def sync(value):
        calls.append(f"sync {value}")

    async def bad(value):
        raise boom

    async def main():
        ee = AsyncIOEventEmitter()
        ee.on("msg", slow)
        ee.on("msg", sync)
        ee.on("msg", bad)
        ee.on("error", errors.append)
        with tracer.start_as_current_span("request"):
            ee.emit("msg", 1)
        await ee.wait_for_complete()

    ctxrelay.instrument()
    asyncio.run(main())
    assert sorted(calls) == ["slow 1", "sync 1"] and errors == [boom]
    dispatch = next(s for s in exporter.get_finished_spans() if s.name == "pyee dispatch msg")
    found = [s for s in listeners(exporter, "pyee") if s.attributes[keys.ATTR_EVENT] == "msg"]
    slow_span, sync_span, bad_span = found
    assert [s.name for s in (slow_span, sync_span, bad_span)] == [
        "pyee listener slow",
        "pyee listener sync",
        "pyee listener bad",
    ]
    assert all(is_child(s, dispatch) for s in (slow_span, sync_span, bad_span))
    inside = next(s for s in exporter.get_finished_spans() if s.name == "inside")
    assert is_child(inside, slow_span)
    assert slow_span.end_time >= inside.end_time > dispatch.end_time  # the task outlived emit()
    assert_failed(bad_span, boom)
    # pyee emits "error" from the failed task's done-callback, after emit() returned:
    # a dispatch of its own, in the same trace, not a fourth listener of "msg".
    error_dispatch = next(
        s for s in exporter.get_finished_spans() if s.name == "pyee dispatch error"
    )
    assert error_dispatch.context.trace_id == dispatch.context.trace_id
    assert dispatch.attributes[keys.ATTR_LISTENERS] == 3


def test_payloads_only_with_opt_in(exporter):
    ee = EventEmitter()
    ee.on("login", lambda user, password: None)
    ctxrelay.instrument()
    ee.emit("login", "ann", password="pyee-secret")
    assert_not_recorded(exporter, "pyee-secret")
    assert payloads(exporter) == []
    ctxrelay.instrument(record_payloads=True)
    ee.emit("login", "ann", password="pyee-secret")
    assert "pyee-secret" in payloads(exporter)[0]
