"""The carrier: what crosses, what never does, bad input, the size bound."""

from __future__ import annotations

import multiprocessing
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor

import pytest

import ctxrelay
import process_support as ps
from ctxrelay import carrier, config


@pytest.fixture(autouse=True)
def _reset_vars():
    yield
    ps.reset_all()


@pytest.fixture
def spawn_pool():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _warnings_of(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_unresolvable_path_warns_once_and_the_task_runs(spawn_pool) -> None:
    carrier._warned.clear()
    ctxrelay.instrument(process_vars=[*ps.DECLARED, "process_support:NOPE", "no_such_mod:X"])
    ps.set_all("r", "t", "s")

    def twice():
        return [spawn_pool.submit(ps.seen).result() for _ in range(2)]

    seen, messages = _warnings_of(twice)
    assert [(s["request_id"], s["tenant"], s["secret"]) for s in seen] == [("r", "t", "-")] * 2
    assert len([m for m in messages if "process_support:NOPE" in m]) == 1
    assert len([m for m in messages if "no_such_mod:X" in m]) == 1


def test_unpicklable_value_warns_once_and_the_task_runs_without_it(spawn_pool) -> None:
    carrier._warned.clear()
    # Without ctxrelay an unpicklable *argument* fails the task; a ContextVar's value
    # is not the task's: it must never make the task fail.
    ctxrelay.instrument(process_vars=ps.DECLARED)
    ps.REQUEST_ID.set(threading.Lock())  # type: ignore[arg-type]
    ps.TENANT.set("t")

    def twice():
        return [spawn_pool.submit(ps.seen).result() for _ in range(2)]

    seen, messages = _warnings_of(twice)
    assert [(s["request_id"], s["tenant"]) for s in seen] == [("-", "t")] * 2
    assert len([m for m in messages if "process_support:REQUEST_ID" in m]) == 1


def test_values_past_the_size_bound_stay_behind(spawn_pool) -> None:
    carrier._warned.clear()
    ctxrelay.instrument(process_vars=ps.DECLARED)
    ps.REQUEST_ID.set("small")
    ps.TENANT.set("x" * (carrier.MAX_BYTES + 1))
    seen, messages = _warnings_of(lambda: spawn_pool.submit(ps.seen).result())
    assert (seen["request_id"], seen["tenant"]) == ("small", "-")
    assert any("process_support:TENANT" in m and str(carrier.MAX_BYTES) in m for m in messages)


def test_contextvar_objects_are_declared_by_their_module_path(spawn_pool) -> None:
    ctxrelay.instrument(process_vars=[ps.REQUEST_ID, ps.TENANT])
    ps.set_all("r", "t", "s")
    seen = spawn_pool.submit(ps.seen).result()
    assert (seen["request_id"], seen["tenant"], seen["secret"]) == ("r", "t", "-")


def test_env_setting_declares_and_bad_entries_warn(monkeypatch, spawn_pool) -> None:
    monkeypatch.setenv("CTXRELAY_PROCESS_VARS", ps.ENV_DECLARED + ",not a path")
    config._warned.clear()
    _, messages = _warnings_of(ctxrelay.instrument)
    assert len([m for m in messages if "CTXRELAY_PROCESS_VARS" in m]) == 1
    assert "module:attribute" in messages[0]
    ps.set_all("r", "t", "s")
    seen = spawn_pool.submit(ps.seen).result()
    assert (seen["request_id"], seen["tenant"], seen["secret"]) == ("r", "t", "-")


def test_uninstrument_stops_the_crossing(spawn_pool) -> None:
    ctxrelay.instrument(process_vars=ps.DECLARED)
    ctxrelay.uninstrument()
    ps.set_all("r", "t", "s")
    assert spawn_pool.submit(ps.seen).result()["request_id"] == "-"


def test_carrier_is_plain_data() -> None:
    ctxrelay.instrument(process_vars=ps.DECLARED)
    ps.set_all("r", "t", "s")
    found = carrier.capture("test")
    assert found["vars"] == {"process_support:REQUEST_ID": "r", "process_support:TENANT": "t"}
    assert "unset" not in found


def test_the_trace_headers_are_what_the_propagator_injects(tracer) -> None:
    """Without a span or baggage the default propagators inject nothing (and are not
    asked); a propagator of the user's is always asked, span or not."""
    from opentelemetry import baggage, propagate
    from opentelemetry import context as otel_context

    class StaticHeader:  # a user's propagator that injects from outside the context
        fields = frozenset({"x-static"})

        def inject(self, carrier_, context=None, setter=None) -> None:
            carrier_["x-static"] = "1"

        def extract(self, carrier_, context=None, getter=None):
            return context or otel_context.get_current()

    assert "trace" not in carrier.capture("test")
    with tracer.start_as_current_span("parent") as span:
        headers = carrier.capture("test")["trace"]
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert headers["traceparent"].split("-")[1] == trace_id
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        assert carrier.capture("test")["trace"] == {"baggage": "tenant=acme"}
    finally:
        otel_context.detach(token)

    default = propagate.get_global_textmap()
    propagate.set_global_textmap(StaticHeader())  # type: ignore[arg-type]
    try:
        assert carrier.capture("test")["trace"] == {"x-static": "1"}
    finally:
        propagate.set_global_textmap(default)
    assert "trace" not in carrier.capture("test")
