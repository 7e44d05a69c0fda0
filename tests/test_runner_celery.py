"""Celery with a real Redis broker and result backend and a real ``celery worker``.

For each worker pool (prefork, threads, solo, gevent): first a worker and a publisher
without ctxrelay (the declared values are lost, a task's values stay for the next task
that runs in the same thread (not under gevent: each task's greenlet starts with an empty
context), the worker's spans are nowhere); then an activated worker
(``CTXRELAY_ENABLED=1``, same ``OTEL_*`` configuration) and an instrumented publisher.
The two declared variables cross (``delay``, ``apply_async``, a chain, a group, a
chord), ``SECRET`` never does, nothing reaches the next task, and the worker's hop spans,
exported over OTLP to a real receiver and flushed when the worker is stopped, sit in the
publisher's trace.  The gevent pool's own risks (tasks at once in greenlets of one
thread, its monkey-patching after start-up) are in tests/test_runner_celery_gevent.py.
"""

from __future__ import annotations

import os

import pytest

celery = pytest.importorskip("celery")
pytest.importorskip("redis")

import ctxrelay  # noqa: E402
import process_support as ps  # noqa: E402
from celery_support import TIMEOUT, Worker  # noqa: E402

POOLS = ["prefork", "threads", "solo", "gevent"]


def _round(app, tracer) -> dict:
    from celery import chain, chord, group

    out = {}
    with tracer.start_as_current_span("publish") as span:
        ps.set_all("r-1", "t-1", "s-1")
        out["delay"] = app.seen.delay("delay").get(TIMEOUT)
        out["apply_async"] = app.set_then_seen.apply_async(("x",)).get(TIMEOUT)
        out["chain"] = chain(app.seen.si("c1"), app.seen.si("c2")).apply_async().get(TIMEOUT)
        out["group"] = group(app.seen.s("g1"), app.seen.s("g2")).apply_async().get(TIMEOUT)
        out["chord"] = chord([app.seen.s("h1")], app.collect.s()).apply_async().get(TIMEOUT)
        try:
            app.fail.delay("boom").get(TIMEOUT)
        except Exception as exc:
            out["fail"] = (type(exc).__name__, str(exc))
        ps.reset_all()
        out["next"] = app.seen.delay("next").get(TIMEOUT)  # after set_then_seen ran there
        context = span.get_span_context()
    out["trace_id"] = format(context.trace_id, "032x")
    out["span_id"] = format(context.span_id, "016x")
    return out


def _carried(out: dict) -> list[dict]:
    return [out["delay"], out["apply_async"], out["chain"], *out["group"],
            *out["chord"]["header"], out["chord"]["body"]]  # fmt: skip


@pytest.mark.parametrize("pool", POOLS)
def test_celery_pool_carries_declared_values_and_trace(
    pool, app, redis, otlp, tracer, tmp_path
) -> None:
    if pool == "gevent":
        pytest.importorskip("gevent", reason="gevent is not installed (the frameworks extra)")
    otlp.clear()
    worker = Worker(redis, pool, otlp, activated=False, log=tmp_path / "bare.log")
    try:
        bare = _round(app, tracer)
    finally:
        worker.stop()
    # Lost (or, after set_then_seen ran, a previous task's value), never the publisher's.
    assert all(seen["request_id"] != "r-1" and seen["trace_id"] != bare["trace_id"]
               for seen in _carried(bare))  # fmt: skip
    # A task's values outlive it in a thread that runs the next task; a gevent task
    # runs in a greenlet of its own, which starts with an empty context.
    assert bare["next"]["request_id"] == ("-" if pool == "gevent" else "leaked-x")
    assert otlp.wait_for(1, timeout=1) == []

    ctxrelay.instrument(process_vars=ps.DECLARED)
    worker = Worker(redis, pool, otlp, activated=True, log=tmp_path / "carried.log")
    try:
        out = _round(app, tracer)
    finally:
        worker.stop()
    for seen in _carried(out):
        assert (seen["request_id"], seen["tenant"]) == ("r-1", "t-1"), seen
        # Never the publisher's SECRET; a value a task set itself stays in a solo or
        # prefork worker's thread, as it does without ctxrelay (Celery's own semantics).
        assert seen["secret"] in ("-", "leaked-x"), seen
        assert seen["trace_id"] == out["trace_id"], seen
    assert out["fail"] == bare["fail"] == ("ValueError", "boom")
    # The declared values the worker set are reset after each task: the next one,
    # published with none set, sees none (without ctxrelay it saw "leaked-x").
    assert (out["next"]["request_id"], out["next"]["tenant"]) == ("-", "-")

    # Hop spans: delay, apply_async, 2 chain steps, 2 group tasks, chord header + body,
    # fail, next = 10, all flushed when the worker was stopped.
    hops = otlp.wait_for(10, where=lambda s: s["attributes"].get("ctxrelay.runner") == "celery")
    hops = [s for s in hops if s["attributes"].get("ctxrelay.runner") == "celery"]
    assert len(hops) == 10, [h["name"] for h in hops]
    assert {h["trace_id"] for h in hops} == {out["trace_id"]}
    direct = [h for h in hops if h["parent_id"] == out["span_id"]]
    assert len(direct) >= 7  # chain step 2 and the chord body are published by the worker
    assert all(h["resource"]["service.name"] == "celery-worker" for h in hops)
    failed = [h["name"] for h in hops if h["status"] == 2]
    assert failed == ["celery fail"]
    assert all(h["attributes"]["process.pid"] for h in hops)
    assert os.environ.get("CTXRELAY_ENABLED") is None
