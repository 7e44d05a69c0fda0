"""Django signals: send, send_robust, asend, asend_robust (no database needed)."""

from __future__ import annotations

import asyncio
import logging

import pytest

pytest.importorskip("django", reason="django is not installed (the frameworks extra)")
import django
from django.conf import settings

if not settings.configured:
    settings.configure()
django.setup()

from django.core.signals import request_started  # noqa: E402
from django.dispatch import Signal  # noqa: E402

import ctxrelay  # noqa: E402
from ctxrelay import attributes as keys  # noqa: E402
from ctxrelay.listeners._dispatch import Traced  # noqa: E402
from listener_helpers import (  # noqa: E402
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

order_paid = Signal()  # found by its module-level name: "order_paid"


@pytest.fixture
def calls():
    return []


@pytest.fixture
def receivers(calls):
    def first(sender, **kwargs):
        calls.append("first")
        return "one"

    def second(sender, **kwargs):
        calls.append("second")
        return "two"

    order_paid.connect(first)
    order_paid.connect(second)
    yield first, second
    order_paid.disconnect(first)
    order_paid.disconnect(second)


def test_send_spans_order_results(exporter, tracer, calls, receivers):
    plain = order_paid.send(sender=object, amount=3)
    plain_calls = list(calls)

    ctxrelay.instrument()
    calls.clear()
    with tracer.start_as_current_span("request") as request:
        traced = order_paid.send(sender=object, amount=3)

    assert calls == plain_calls == ["first", "second"]
    assert traced == plain and [r for r, _ in traced] == list(receivers)
    assert all(r is o for (r, _), (o, _) in zip(traced, plain, strict=True))
    dispatch, _ = assert_listener_tree(exporter, "django", "order_paid", list(receivers))
    assert dispatch.parent.span_id == request.get_span_context().span_id
    assert dispatch.attributes[keys.ATTR_SENDER] == "builtins.object"


def test_builtin_signal_name(exporter):
    seen: list[object] = []

    def on_started(sender, **kwargs):
        seen.append(sender)

    request_started.connect(on_started)
    try:
        ctxrelay.instrument()
        request_started.send(sender=None, environ={})
    finally:
        request_started.disconnect(on_started)
    assert seen == [None]
    dispatch = only_dispatch(exporter, "django")
    assert dispatch.name == "django dispatch request_started"
    # Django connects its own receivers (reset_queries, close_old_connections) too.
    names = [s.attributes[keys.CODE_FUNCTION_NAME] for s in listeners(exporter, "django")]
    assert keys.callable_name(on_started) in names
    assert (
        dispatch.attributes[keys.ATTR_LISTENERS] == len(names) == len(request_started.receivers) + 1
    )


def test_send_stops_on_exception_like_django(exporter, calls, receivers):
    boom = RuntimeError("receiver failed")

    def bad(sender, **kwargs):
        calls.append("bad")
        raise boom

    order_paid.disconnect(receivers[1])
    order_paid.connect(bad)
    order_paid.connect(receivers[1])
    try:
        with pytest.raises(RuntimeError) as plain:
            order_paid.send(sender=None)
        plain_calls = list(calls)
        ctxrelay.instrument()
        calls.clear()
        with pytest.raises(RuntimeError) as traced:
            order_paid.send(sender=None)
    finally:
        order_paid.disconnect(bad)
    assert plain.value is traced.value is boom
    assert calls == plain_calls == ["first", "bad"]
    first_span, bad_span = listeners(exporter, "django")
    assert first_span.status.is_ok
    assert_failed(bad_span, boom)
    assert_failed(only_dispatch(exporter, "django"), boom)


def test_send_robust_collects_and_logs_like_django(exporter, calls, receivers, caplog):
    boom = ValueError("robust failure")

    def bad(sender, **kwargs):
        calls.append("bad")
        raise boom

    order_paid.connect(bad)
    try:
        with caplog.at_level(logging.ERROR, logger="django.dispatch"):
            plain = order_paid.send_robust(sender=None)
        plain_log = [r.getMessage() for r in caplog.records]
        plain_calls = list(calls)
        caplog.clear()
        calls.clear()
        ctxrelay.instrument()
        with caplog.at_level(logging.ERROR, logger="django.dispatch"):
            traced = order_paid.send_robust(sender=None)
        traced_log = [r.getMessage() for r in caplog.records]
    finally:
        order_paid.disconnect(bad)
    assert calls == plain_calls == ["first", "second", "bad"]
    assert traced == plain and traced[2] == (bad, boom) and traced[2][0] is bad
    assert traced_log == plain_log and len(plain_log) == 1
    *_, bad_span = listeners(exporter, "django")
    assert_failed(bad_span, boom)
    assert only_dispatch(exporter, "django").status.is_unset  # the send itself succeeded


def test_asend_and_async_receivers(exporter, calls, receivers):
    async def late(sender, **kwargs):
        await asyncio.sleep(0)
        calls.append("late")
        return "async"

    order_paid.connect(late)
    try:
        ctxrelay.instrument()
        result = asyncio.run(order_paid.asend(sender=None))
        assert calls == ["first", "second", "late"]
        assert result == [(receivers[0], "one"), (receivers[1], "two"), (late, "async")]
        assert all(type(r) is not Traced for r, _ in result)
        dispatch = only_dispatch(exporter, "django")
        spans_by_fn = {
            s.attributes[keys.CODE_FUNCTION_NAME]: s for s in listeners(exporter, "django")
        }
        assert set(spans_by_fn) == {keys.callable_name(f) for f in (*receivers, late)}
        assert all(is_child(s, dispatch) for s in spans_by_fn.values())
        # sync receivers ran in asgiref's sync_to_async thread: recorded there
        sync_thread = spans_by_fn[keys.callable_name(receivers[0])].attributes[keys.THREAD_ID]
        assert sync_thread != dispatch.attributes[keys.THREAD_ID]

        exporter.clear()
        calls.clear()
        result = order_paid.send(sender=None)  # async receivers via async_to_sync
        assert [r for r, _ in result] == [*receivers, late] and result[2][0] is late
        assert len(listeners(exporter, "django")) == 3
    finally:
        order_paid.disconnect(late)


def test_asend_robust_collects(exporter, calls, receivers):
    boom = KeyError("k")

    async def bad(sender, **kwargs):
        raise boom

    order_paid.connect(bad)
    try:
        plain = asyncio.run(order_paid.asend_robust(sender=None))
        ctxrelay.instrument()
        traced = asyncio.run(order_paid.asend_robust(sender=None))
    finally:
        order_paid.disconnect(bad)
    assert traced == plain and traced[-1] == (bad, boom) and traced[-1][0] is bad
    (bad_span,) = [s for s in listeners(exporter, "django") if s.name == "django listener bad"]
    assert_failed(bad_span, boom)


def test_listener_in_a_worker_thread_nests_under_the_hop(exporter, tracer, receivers):
    def audit(sender, **kwargs):
        with tracer.start_as_current_span("audit"):
            pass

    def publish():
        order_paid.send(sender=None)

    order_paid.connect(audit)
    children = assert_dispatch_follows_the_hop(exporter, tracer, publish, "django", "audit")
    audit_span = next(s for s in exporter.get_finished_spans() if s.name == "audit")
    assert len(children) == 3
    assert is_child(audit_span, children[2])
    order_paid.disconnect(audit)


def test_payloads_only_with_opt_in_and_no_span_without_receivers(exporter, receivers):
    ctxrelay.instrument()
    order_paid.send(sender=None, card="4111-secret")
    assert_not_recorded(exporter, "4111-secret")
    assert payloads(exporter) == []

    exporter.clear()
    Signal().send(sender=None)  # no receivers: Django returns at once, nothing recorded
    assert exporter.get_finished_spans() == ()

    ctxrelay.instrument(record_payloads=True)
    order_paid.send(sender=None, card="4111-secret")
    assert "4111-secret" in payloads(exporter)[0]
    assert len(dispatches(exporter, "django")) == 1


def test_weak_receiver_and_disconnect_keep_working(exporter):
    import gc

    ctxrelay.instrument()
    sig = Signal()
    calls: list[str] = []

    def temporary(sender, **kwargs):
        calls.append("temporary")

    sig.connect(temporary)
    sig.send(sender=None)
    assert sig.disconnect(temporary) is True  # disconnect finds the user's function
    sig.connect(temporary)
    del temporary
    gc.collect()
    assert sig.send(sender=None) == []
    assert calls == ["temporary"]
