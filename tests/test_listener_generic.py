"""ctxrelay.trace_dispatch: the same spans for a bus ctxrelay does not know."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import ctxrelay
from ctxrelay import attributes as keys
from ctxrelay import table
from ctxrelay.listeners import generic
from listener_helpers import (
    assert_failed,
    assert_listener_tree,
    assert_not_recorded,
    dispatches,
    is_child,
    listeners,
    only_dispatch,
    payloads,
)


class Bus:
    """A tiny bus: listeners in a list, dispatch calls each in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: list = []

    def listeners_for(self, topic: str) -> list:
        return list(self.subscribers)

    def publish(self, topic: str, payload: object = None) -> list:
        return [(fn, fn(payload)) for fn in self.listeners_for(topic)]

    async def apublish(self, topic: str, payload: object = None) -> list:
        return [(fn, await fn(payload)) for fn in self.listeners_for(topic)]


class Scheduler:
    """A bus that hands each listener to a pool (like pyee's ExecutorEventEmitter)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.subscribers: list = []
        self.futures: list = []

    def _run_one(self, listener, payload) -> None:
        self.futures.append(self.pool.submit(listener, payload))

    def emit(self, topic: str, payload: object = None) -> None:
        for listener in self.subscribers:
            self._run_one(listener, payload)


@pytest.fixture(autouse=True)
def _declared():
    """Declare the test buses once; leave the generic table as it was afterwards."""
    before = list(generic.PATCHES)
    ctxrelay.trace_dispatch(
        __name__,
        "Bus.publish",
        bus="tinybus",
        event=0,
        listeners_from="Bus.listeners_for",
        returns_pairs=True,
        payload=lambda bus, args, kwargs: args[1:],
    )
    ctxrelay.trace_dispatch(
        __name__,
        "Bus.apublish",
        bus="tinybus",
        event=0,
        listeners_from="Bus.listeners_for",
        returns_pairs=True,
    )
    ctxrelay.trace_dispatch(
        __name__,
        "Scheduler.emit",
        bus="scheduler",
        event="topic",
        listener_call="Scheduler._run_one",
    )
    yield
    ctxrelay.uninstrument()
    generic.PATCHES[:] = before


def _subscribers(calls: list[str]):
    def first(payload):
        calls.append("first")
        return 1

    def second(payload):
        calls.append("second")
        return 2

    return [first, second]


def test_declared_bus_gets_dispatch_and_listener_spans(exporter, tracer):
    bus = Bus("orders")
    calls: list[str] = []
    bus.subscribers = _subscribers(calls)
    plain = bus.publish("created", {"id": 1})
    assert exporter.get_finished_spans() == ()  # declared but not instrumented: nothing

    ctxrelay.instrument()
    calls.clear()
    with tracer.start_as_current_span("request") as request:
        traced = bus.publish("created", {"id": 1})
    assert calls == ["first", "second"]
    assert traced == plain and traced[0][0] is bus.subscribers[0]  # listeners, not proxies
    dispatch, _ = assert_listener_tree(exporter, "tinybus", "created", bus.subscribers)
    assert dispatch.parent.span_id == request.get_span_context().span_id
    assert bus.listeners_for("x") == bus.subscribers  # outside a dispatch: plain listeners

    ctxrelay.uninstrument()
    exporter.clear()
    assert bus.publish("created") == plain
    assert exporter.get_finished_spans() == ()
    assert "tinybus" in table.names()  # CTXRELAY_INCLUDE/_EXCLUDE know it


def test_exception_and_async_dispatch(exporter):
    bus = Bus("b")
    boom = LookupError("nope")

    async def ok(payload):
        await asyncio.sleep(0)
        return "ok"

    async def bad(payload):
        raise boom

    bus.subscribers = [ok, bad]
    ctxrelay.instrument()
    with pytest.raises(LookupError) as raised:
        asyncio.run(bus.apublish("evt"))
    assert raised.value is boom
    ok_span, bad_span = listeners(exporter, "tinybus")
    assert ok_span.status.is_unset
    assert_failed(bad_span, boom)
    assert_failed(only_dispatch(exporter, "tinybus"), boom)


def test_listener_call_hook_times_the_listener_in_the_pool(exporter, tracer):
    seen: list[str] = []

    def listener(payload):
        with tracer.start_as_current_span("work"):
            seen.append(payload)

    ctxrelay.instrument()
    with ThreadPoolExecutor(1) as pool:
        scheduler = Scheduler(pool)
        scheduler.subscribers = [listener]
        with tracer.start_as_current_span("request") as request:
            scheduler.emit(topic="tick", payload="p")
        scheduler.futures[0].result()
    assert seen == ["p"] and scheduler.subscribers == [listener]
    dispatch = only_dispatch(exporter, "scheduler")
    assert dispatch.name == "scheduler dispatch tick"
    (listener_span,) = listeners(exporter, "scheduler")
    hop = next(s for s in exporter.get_finished_spans() if keys.ATTR_RUNNER in s.attributes)
    work = next(s for s in exporter.get_finished_spans() if s.name == "work")
    assert dispatch.parent.span_id == request.get_span_context().span_id
    assert (
        is_child(hop, dispatch) and is_child(listener_span, hop) and is_child(work, listener_span)
    )


def test_declared_after_instrument_applies_at_once_and_only_once(exporter):
    ctxrelay.instrument()
    before = len(generic.PATCHES)
    # the same declaration again: no second wrapper, so no nested dispatch span
    ctxrelay.trace_dispatch(
        __name__,
        "Bus.publish",
        bus="tinybus",
        event=0,
        listeners_from="Bus.listeners_for",
        returns_pairs=True,
    )
    assert len(generic.PATCHES) == before
    bus = Bus("b")
    bus.subscribers = _subscribers([])
    bus.publish("e")
    assert len(dispatches(exporter, "tinybus")) == 1

    class Late(Bus):
        def publish(self, topic, payload=None):
            return super().publish(topic, payload)

    globals()["Late"] = Late
    try:
        late = Late("late")
        late.subscribers = _subscribers([])
        late.publish("e")
        assert len(dispatches(exporter, "latebus")) == 0
        ctxrelay.trace_dispatch(__name__, "Late.publish", bus="latebus")  # already instrumented
        late.publish("e")
        assert only_dispatch(exporter, "latebus").name == "latebus dispatch late"  # its .name
    finally:
        ctxrelay.uninstrument()
        del globals()["Late"]


def test_payloads_only_with_opt_in(exporter):
    bus = Bus("b")
    bus.subscribers = _subscribers([])
    ctxrelay.instrument()
    bus.publish("e", "generic-secret")
    assert_not_recorded(exporter, "generic-secret")
    ctxrelay.instrument(record_payloads=True)
    bus.publish("e", "generic-secret")
    assert "generic-secret" in payloads(exporter)[0]


def test_off_unsampled_and_suppressed_record_nothing(exporter, tracer):
    bus = Bus("b")
    calls: list[str] = []
    bus.subscribers = _subscribers(calls)

    ctxrelay.instrument(listener_spans=False)
    bus.publish("e")
    assert exporter.get_finished_spans() == ()

    ctxrelay.instrument()
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("t")
    with unsampled.start_as_current_span("not sampled"):
        bus.publish("e")
    token = otel_context.attach(
        otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
    )
    try:
        bus.publish("e")
    finally:
        otel_context.detach(token)
    assert exporter.get_finished_spans() == ()
    assert calls == ["first", "second"] * 3  # the listeners ran every time

    bus.publish("e")  # no active span: a root dispatch span
    assert only_dispatch(exporter, "tinybus").parent is None
