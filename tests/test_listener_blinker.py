"""blinker (and so Flask) signals: a dispatch span per send, a span per receiver."""

from __future__ import annotations

import asyncio
import gc

import pytest

pytest.importorskip("blinker", reason="blinker is not installed (the frameworks extra)")
import blinker

import ctxrelay
from ctxrelay import attributes as keys
from listener_helpers import (
    assert_dispatch_follows_the_hop,
    assert_failed,
    assert_listener_tree,
    assert_not_recorded,
    dispatches,
    is_child,
    listeners,
    only_dispatch,
    payloads,
)


class _OrderedSet(dict):
    """The part of ``set`` blinker uses, in insertion order."""

    def add(self, item):
        self[item] = None

    def discard(self, item):
        self.pop(item, None)

    def copy(self):
        return _OrderedSet(self)

    def __or__(self, other):
        merged = _OrderedSet(self)
        merged.update(other)
        return merged


class Ordered(blinker.Signal):
    # blinker's order is "undefined" (a set); an ordered set_class makes it checkable.
    set_class = _OrderedSet


def make_receivers(calls: list[str]):
    def first(sender, **kwargs):
        calls.append("first")
        return 1

    def second(sender, **kwargs):
        calls.append("second")
        return 2

    def third(sender, **kwargs):
        calls.append("third")
        return 3

    return first, second, third


def test_spans_order_results_and_exactly_once(exporter, tracer):
    sig = blinker.Namespace().signal("order-placed")
    calls: list[str] = []
    receivers = make_receivers(calls)
    for receiver in receivers:
        sig.connect(receiver)

    plain = sig.send("shop", order=7)  # without ctxrelay: the reference behaviour
    plain_calls = list(calls)
    assert exporter.get_finished_spans() == ()

    ctxrelay.instrument()
    calls.clear()
    with tracer.start_as_current_span("request") as request:
        traced = sig.send("shop", order=7)

    assert calls == plain_calls  # same order, each receiver exactly once
    assert traced == plain
    assert all(r is o for (r, _), (o, _) in zip(traced, plain, strict=True))
    by_name = {fn.__name__: fn for fn in receivers}
    dispatch, _ = assert_listener_tree(
        exporter, "blinker", "order-placed", [by_name[c] for c in calls]
    )
    assert dispatch.parent.span_id == request.get_span_context().span_id
    assert dispatch.attributes[keys.ATTR_SENDER] == "builtins.str"
    assert keys.THREAD_NAME in dispatch.attributes


def test_exception_propagates_unchanged_and_marks_the_span(exporter):
    sig = Ordered()
    calls: list[str] = []
    boom = ValueError("receiver failed")

    def ok(sender):
        calls.append("ok")

    def bad(sender):
        calls.append("bad")
        raise boom

    def never(sender):
        calls.append("never")

    for receiver in (ok, bad, never):
        sig.connect(receiver)

    with pytest.raises(ValueError) as plain:
        sig.send(None)
    plain_calls = list(calls)

    ctxrelay.instrument()
    calls.clear()
    with pytest.raises(ValueError) as traced:
        sig.send(None)

    assert traced.value is boom and plain.value is boom
    assert calls == plain_calls == ["ok", "bad"]
    dispatch = only_dispatch(exporter, "blinker")
    ok_span, bad_span = listeners(exporter, "blinker")
    assert ok_span.status.is_ok
    assert_failed(bad_span, boom)
    assert_failed(dispatch, boom)
    assert dispatch.attributes[keys.ATTR_LISTENERS] == 2


def test_listener_in_a_worker_thread_nests_under_the_hop(exporter, tracer):
    sig = Ordered()

    def receiver(sender):
        with tracer.start_as_current_span("work"):
            pass

    sig.connect(receiver)

    def publish():
        sig.send("job")

    (listener,) = assert_dispatch_follows_the_hop(exporter, tracer, publish, "blinker")
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert is_child(finished["work"], listener)
    hop = finished["ThreadPoolExecutor publish"]
    assert listener.attributes[keys.THREAD_NAME] == hop.attributes[keys.THREAD_NAME]


def test_payload_values_only_with_opt_in(exporter):
    sig = blinker.Namespace().signal("login")

    def on_login(sender, **kwargs):
        pass

    sig.connect(on_login)

    ctxrelay.instrument()
    sig.send(None, password="hunter2-secret")
    assert len(dispatches(exporter, "blinker")) == 1
    assert_not_recorded(exporter, "hunter2-secret")
    assert payloads(exporter) == []

    exporter.clear()
    ctxrelay.instrument(record_payloads=True)
    sig.send(None, password="hunter2-secret")
    (payload,) = payloads(exporter)
    assert "hunter2-secret" in payload and len(payload) <= keys.MAX_ATTRIBUTE_LENGTH


def test_connect_disconnect_and_weak_receivers_keep_working(exporter):
    ctxrelay.instrument()
    sig = Ordered()
    calls: list[str] = []

    def strong(sender):
        calls.append("strong")

    def weak(sender):
        calls.append("weak")

    sig.connect(strong)
    sig.connect(weak)  # weak=True by default
    sig.send(None)
    sig.disconnect(strong)  # identity of the connected function is untouched
    del weak
    gc.collect()
    assert sig.send(None) == []
    assert calls == ["strong", "weak"]
    assert not sig.receivers


def test_send_async_times_each_async_receiver(exporter):
    sig = Ordered()
    calls: list[str] = []

    async def slow(sender):
        await asyncio.sleep(0)
        calls.append("slow")
        return "s"

    async def fast(sender):
        calls.append("fast")
        return "f"

    sig.connect(slow)
    sig.connect(fast)
    ctxrelay.instrument()
    result = asyncio.run(sig.send_async(None))
    assert result == [(slow, "s"), (fast, "f")] and result[0][0] is slow
    assert calls == ["slow", "fast"]
    assert_listener_tree(exporter, "blinker", "Ordered", [slow, fast])


def test_off_no_listener_and_no_receivers(exporter, tracer):
    sig = Ordered()
    calls: list[str] = []
    sig.connect(lambda sender: calls.append("x"), weak=False)

    ctxrelay.instrument(listener_spans=False)
    sig.send(None)
    assert calls == ["x"] and exporter.get_finished_spans() == ()

    ctxrelay.instrument()
    Ordered().send(None)  # nobody listens: nothing recorded
    assert exporter.get_finished_spans() == ()
    sig.send(None)  # no active span: the dispatch is a root span of its own
    assert only_dispatch(exporter, "blinker").parent is None


def test_flask_signal(exporter):
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)
    app.add_url_rule("/", "index", lambda: "ok")
    started: list[object] = []

    def on_request_started(sender, **extra):
        started.append(sender)

    flask.request_started.connect(on_request_started, app)
    try:
        ctxrelay.instrument()
        assert app.test_client().get("/").data == b"ok"
    finally:
        flask.request_started.disconnect(on_request_started, app)
    assert started == [app]
    dispatch, _ = assert_listener_tree(exporter, "blinker", "request-started", [on_request_started])
    assert dispatch.attributes[keys.ATTR_SENDER] == "flask.app.Flask"
