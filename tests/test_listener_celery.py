"""Celery signals: send (= send_robust) logs a failing receiver and returns its exception."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("celery", reason="celery is not installed (the frameworks extra)")
from celery import signals
from celery.utils.dispatch import Signal

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


def test_send_spans_order_results(exporter, tracer):
    sig = Signal(name="order_shipped")
    calls: list[str] = []

    def first(sender=None, **kwargs):
        calls.append("first")
        return 1

    def second(sender=None, **kwargs):
        calls.append("second")
        return 2

    sig.connect(first)
    sig.connect(second)
    plain = sig.send(sender="worker", parcel=1)
    plain_calls = list(calls)

    ctxrelay.instrument()
    calls.clear()
    with tracer.start_as_current_span("task") as task:
        traced = sig.send(sender="worker", parcel=1)
        robust = sig.send_robust(sender="worker", parcel=1)  # the alias is patched too
    assert calls == plain_calls * 2 == ["first", "second"] * 2
    assert traced == plain == robust and traced[0][0] is first
    dispatches = [
        s for s in exporter.get_finished_spans() if s.name == "celery dispatch order_shipped"
    ]
    assert len(dispatches) == 2
    assert all(d.parent.span_id == task.get_span_context().span_id for d in dispatches)
    assert len(listeners(exporter, "celery")) == 4


def test_builtin_signal(exporter):
    seen: list[object] = []

    def on_success(sender=None, result=None, **kwargs):
        seen.append(result)

    signals.task_success.connect(on_success)
    try:
        ctxrelay.instrument()
        signals.task_success.send(sender=None, result="abc")
    finally:
        signals.task_success.disconnect(on_success)
    assert seen == ["abc"]
    assert_listener_tree(exporter, "celery", "task_success", [on_success])


def test_task_context_signals_are_not_traced(exporter, tracer):
    """task_prerun receivers set the context the task runs in (ctxrelay's Celery runner,
    OpenTelemetry's Celery instrumentation): a dispatch span around them would undo it."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    def on_prerun(sender=None, task_id=None, **kwargs):
        span = tracer.start_span("set by the receiver")
        otel_context.attach(trace.set_span_in_context(span))

    signals.task_prerun.connect(on_prerun)
    try:
        ctxrelay.instrument()
        with tracer.start_as_current_span("outer"):
            token = otel_context.attach(otel_context.get_current())
            signals.task_prerun.send(sender=None, task_id="abc", task=None, args=(), kwargs={})
            after = trace.get_current_span()
            otel_context.detach(token)
    finally:
        signals.task_prerun.disconnect(on_prerun)
    assert after.name == "set by the receiver"
    assert listeners(exporter, "celery") == []


def test_failing_receiver_is_logged_and_returned_like_celery(exporter, caplog):
    sig = Signal(name="flaky")
    boom = RuntimeError("receiver failed")
    calls: list[str] = []

    def bad(sender=None, **kwargs):
        calls.append("bad")
        raise boom

    def after(sender=None, **kwargs):
        calls.append("after")
        return "ok"

    sig.connect(bad)
    sig.connect(after)
    with caplog.at_level(logging.ERROR):
        plain = sig.send(sender=None)
    plain_log = [r.getMessage() for r in caplog.records]
    caplog.clear()
    calls.clear()

    ctxrelay.instrument()
    with caplog.at_level(logging.ERROR):
        traced = sig.send(sender=None)
    traced_log = [r.getMessage() for r in caplog.records]

    assert calls == ["bad", "after"]
    assert traced == plain == [(bad, boom), (after, "ok")] and traced[0][0] is bad
    assert traced_log == plain_log and "Signal handler" in plain_log[0] and "bad" in plain_log[0]
    bad_span, after_span = listeners(exporter, "celery")
    assert_failed(bad_span, boom)
    assert after_span.status.is_unset
    assert only_dispatch(exporter, "celery").status.is_unset


def test_listener_in_a_worker_thread_nests_under_the_hop(exporter, tracer):
    sig = Signal(name="in_pool")

    def receiver(sender=None, **kwargs):
        with tracer.start_as_current_span("work"):
            pass

    sig.connect(receiver)

    def publish():
        sig.send(sender=None)

    (_listener_span,) = assert_dispatch_follows_the_hop(exporter, tracer, publish, "celery")


def test_payloads_only_with_opt_in_and_no_receivers(exporter):
    sig = Signal(name="secretive")

    def receiver(sender=None, **kwargs):
        pass

    ctxrelay.instrument()
    sig.send(sender=None, api_key="celery-secret")  # no receivers yet: nothing recorded
    assert exporter.get_finished_spans() == ()
    sig.connect(receiver)
    sig.send(sender=None, api_key="celery-secret")
    assert_not_recorded(exporter, "celery-secret")
    assert payloads(exporter) == []
    ctxrelay.instrument(record_payloads=True)
    sig.send(sender=None, api_key="celery-secret")
    assert "celery-secret" in payloads(exporter)[0]
    assert all(
        keys.ATTR_SENDER not in s.attributes for s in exporter.get_finished_spans()
    )  # sender=None
