"""PyPubSub: pub.sendMessage (a bound method captured at import) reaches Topic.publish."""

from __future__ import annotations

import uuid

import pytest

pytest.importorskip("pubsub", reason="pypubsub is not installed (the frameworks extra)")
from pubsub import pub

import ctxrelay
from ctxrelay import attributes as keys
from listener_helpers import (
    assert_dispatch_follows_the_hop,
    assert_failed,
    assert_listener_tree,
    assert_not_recorded,
    listeners,
    only_dispatch,
    payloads,
)


@pytest.fixture
def topic():
    name = f"orders{uuid.uuid4().hex[:8]}"
    yield name
    pub.unsubAll()
    pub.getDefaultTopicMgr().delTopic(name)


def test_send_message_spans_order_and_parent_topics(exporter, tracer, topic):
    calls: list[str] = []

    def on_parent(amount):
        calls.append(f"parent {amount}")

    def first(amount):
        calls.append(f"first {amount}")

    def second(amount):
        calls.append(f"second {amount}")

    pub.subscribe(on_parent, topic)
    pub.subscribe(first, f"{topic}.paid")
    pub.subscribe(second, f"{topic}.paid")
    pub.sendMessage(f"{topic}.paid", amount=5)
    plain_calls = list(calls)

    ctxrelay.instrument()
    calls.clear()
    with tracer.start_as_current_span("request") as request:
        assert pub.sendMessage(f"{topic}.paid", amount=5) is None
    # pubsub delivers to the parent topic's listeners first, then the topic's own
    assert calls == plain_calls == ["parent 5", "first 5", "second 5"]
    dispatch, _ = assert_listener_tree(
        exporter, "pubsub", f"{topic}.paid", [on_parent, first, second]
    )
    assert dispatch.parent.span_id == request.get_span_context().span_id

    exporter.clear()
    pub.sendMessage(f"{topic}.refunded", amount=1)  # only the parent topic listens
    assert only_dispatch(exporter, "pubsub").attributes[keys.ATTR_LISTENERS] == 1


def test_exception_aborts_without_handler_and_continues_with_one(exporter, topic):
    boom = ValueError("listener failed")
    calls: list[str] = []

    def bad(x):
        calls.append("bad")
        raise boom

    def good(x):
        calls.append("good")

    pub.subscribe(bad, topic)
    pub.subscribe(good, topic)
    with pytest.raises(ValueError) as plain:
        pub.sendMessage(topic, x=1)
    plain_calls = list(calls)

    ctxrelay.instrument()
    calls.clear()
    with pytest.raises(ValueError) as traced:
        pub.sendMessage(topic, x=1)
    assert plain.value is traced.value is boom
    assert calls == plain_calls == ["bad"]
    (bad_span,) = listeners(exporter, "pubsub")
    assert_failed(bad_span, boom)
    assert_failed(only_dispatch(exporter, "pubsub"), boom)

    handled: list[str] = []

    class Handler:
        def __call__(self, listener_id, topic_obj):
            handled.append(listener_id)

    exporter.clear()
    calls.clear()
    pub.setListenerExcHandler(Handler())
    try:
        pub.sendMessage(topic, x=2)
    finally:
        pub.setListenerExcHandler(None)
    assert calls == ["bad", "good"] and len(handled) == 1
    bad_span, good_span = listeners(exporter, "pubsub")
    assert_failed(bad_span, boom)
    assert good_span.status.is_unset
    assert only_dispatch(exporter, "pubsub").status.is_unset


def test_listener_in_a_worker_thread_nests_under_the_hop(exporter, tracer, topic):
    def listener(x):
        with tracer.start_as_current_span("work"):
            pass

    pub.subscribe(listener, topic)

    def publish():
        pub.sendMessage(topic, x=1)

    (_listener_span,) = assert_dispatch_follows_the_hop(exporter, tracer, publish, "pubsub")


def test_payloads_only_with_opt_in_and_off_switch(exporter, topic):
    calls: list[str] = []

    def on_login(token):
        calls.append(token)

    pub.subscribe(on_login, topic)
    ctxrelay.instrument()
    pub.sendMessage(topic, token="pubsub-secret")
    assert_not_recorded(exporter, "pubsub-secret")
    assert payloads(exporter) == []

    ctxrelay.instrument(record_payloads=True)
    pub.sendMessage(topic, token="pubsub-secret")
    assert "pubsub-secret" in payloads(exporter)[0]

    exporter.clear()
    ctxrelay.instrument(listener_spans=False)
    pub.sendMessage(topic, token="t")
    assert exporter.get_finished_spans() == ()
    assert calls == ["pubsub-secret", "pubsub-secret", "t"]
