"""Griptape EventBus: a dispatch span per publish_event, a span per EventListener reached."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from attrs import define, field
from griptape.drivers.event_listener.base_event_listener_driver import BaseEventListenerDriver
from griptape.events import BaseEvent, EventBus, EventListener

import ctxrelay
from ctxrelay import attributes as keys
from helpers import baseline
from listener_helpers import (
    assert_failed,
    assert_listener_tree,
    assert_not_recorded,
    is_child,
    listeners,
    only_dispatch,
    payloads,
)


@define
class Ping(BaseEvent):
    note: str = field(default="", kw_only=True)


@define
class Pong(BaseEvent):
    pass


@define
class RecordingDriver(BaseEventListenerDriver):
    """A real griptape driver (publishes through griptape's own futures executor)."""

    batched: bool = field(default=False, kw_only=True)
    sent: list = field(factory=list, kw_only=True)

    def try_publish_event_payload(self, event_payload: dict) -> None:
        self.sent.append(event_payload["type"])

    def try_publish_event_payload_batch(self, event_payload_batch: list[dict]) -> None:
        self.sent.extend(p["type"] for p in event_payload_batch)


@pytest.fixture(autouse=True)
def _empty_bus():
    EventBus.clear_event_listeners()
    yield
    EventBus.clear_event_listeners()


def test_spans_order_filter_and_exactly_once(exporter, tracer):
    calls: list[str] = []

    def first(event):
        calls.append("first")
        return event

    def only_pongs(event):
        calls.append("only_pongs")

    def last(event):
        calls.append("last")

    EventBus.add_event_listeners(
        [EventListener(first), EventListener(only_pongs, event_types=[Pong]), EventListener(last)]
    )
    EventBus.publish_event(Ping())
    plain_calls = list(calls)

    ctxrelay.instrument()
    calls.clear()
    with tracer.start_as_current_span("agent run") as run:
        assert EventBus.publish_event(Ping()) is None
    assert calls == plain_calls == ["first", "last"]
    dispatch, _ = assert_listener_tree(
        exporter, "griptape", "Ping", [first, last]
    )  # filtered: no span
    assert dispatch.parent.span_id == run.get_span_context().span_id

    exporter.clear()
    EventBus.clear_event_listeners()
    EventBus.add_event_listener(EventListener(only_pongs, event_types=[Pong]))
    EventBus.publish_event(Ping())  # no listener takes a Ping (e.g. a streamed chunk): no span
    assert exporter.get_finished_spans() == ()


def test_exception_stops_the_bus_and_raises(exporter):
    boom = ValueError("listener failed")
    calls: list[str] = []

    def bad(event):
        calls.append("bad")
        raise boom

    def never(event):
        calls.append("never")

    EventBus.add_event_listeners([EventListener(bad), EventListener(never)])
    with pytest.raises(ValueError) as plain:
        EventBus.publish_event(Ping())
    ctxrelay.instrument()
    with pytest.raises(ValueError) as traced:
        EventBus.publish_event(Ping())
    assert plain.value is traced.value is boom and calls == ["bad", "bad"]
    (bad_span,) = listeners(exporter, "griptape")
    assert_failed(bad_span, boom)
    assert_failed(only_dispatch(exporter, "griptape"), boom)


def test_driver_listener(exporter):
    driver = RecordingDriver()
    calls: list[str] = []

    def on_event(event):
        calls.append("on_event")
        return event

    EventBus.add_event_listeners(
        [
            EventListener(on_event, event_listener_driver=driver),
            EventListener(event_listener_driver=driver),
        ]
    )
    ctxrelay.instrument()
    EventBus.publish_event(Ping())
    assert calls == ["on_event"] and driver.sent == ["Ping", "Ping"]
    with_fn, driver_only = listeners(exporter, "griptape")
    assert with_fn.attributes[keys.CODE_FUNCTION_NAME] == keys.callable_name(on_event)
    assert driver_only.attributes[keys.CODE_FUNCTION_NAME] == keys.callable_name(
        RecordingDriver.publish_event
    )
    for span in (with_fn, driver_only):
        assert span.attributes[keys.ATTR_LISTENER_DRIVER] == f"{__name__}.RecordingDriver"
    # the driver's own pool hand-over nests under the listener that made it
    hops = [s for s in exporter.get_finished_spans() if keys.ATTR_RUNNER in s.attributes]
    assert hops and all(is_child(h, with_fn) or is_child(h, driver_only) for h in hops)


def test_listener_fires_in_a_worker_thread_only_with_ctxrelay(exporter, tracer):
    """The reference case: EventBus listeners live in a ContextVar."""
    seen: list[str] = []

    def on_event(event):
        seen.append(threading.current_thread().name)

    EventBus.add_event_listener(EventListener(on_event))

    def publish():
        EventBus.publish_event(Ping())

    with (
        tracer.start_as_current_span("request"),
        ThreadPoolExecutor(1, thread_name_prefix="w") as pool,
    ):
        pool.submit(publish).result()
    # Without ctxrelay the worker's bus has no listener at all (3.14 with the flag on:
    # this fresh pool's worker starts in the submit, with a copy of the caller's).
    assert seen == baseline([], ["w_0"])
    seen.clear()

    ctxrelay.instrument()
    with (
        tracer.start_as_current_span("request") as request,
        ThreadPoolExecutor(1, thread_name_prefix="w") as pool,
    ):
        pool.submit(publish).result()
    assert len(seen) == 1 and seen[0].startswith("w")
    hop = next(s for s in exporter.get_finished_spans() if s.name == "ThreadPoolExecutor publish")
    dispatch = only_dispatch(exporter, "griptape")
    (listener_span,) = listeners(exporter, "griptape")
    assert hop.parent.span_id == request.get_span_context().span_id
    assert is_child(dispatch, hop) and is_child(listener_span, dispatch)
    assert listener_span.attributes[keys.THREAD_NAME] == seen[0]


def test_payloads_only_with_opt_in(exporter):
    EventBus.add_event_listener(EventListener(lambda event: None))
    ctxrelay.instrument()
    EventBus.publish_event(Ping(note="griptape-secret"))
    assert_not_recorded(exporter, "griptape-secret")
    assert payloads(exporter) == []
    ctxrelay.instrument(record_payloads=True)
    EventBus.publish_event(Ping(note="griptape-secret"))
    assert "griptape-secret" in payloads(exporter)[0]
