"""ctxrelay's Celery runner beside ``opentelemetry-instrumentation-celery``, both on.

A real Redis broker and backend and a real ``celery worker`` (prefork and solo), with
OpenTelemetry's Celery instrumentation on in the publisher (this process) and in the
worker.  First without ctxrelay: the instrumentation carries the trace, the declared
values are lost.  Then with ctxrelay too: the values cross, the trace is still one trace
(the instrumentation's publish span -> its run span in the worker, no second
propagation), ctxrelay records no hop span of its own beside the instrumentation's run
span (no double spans), and every task runs once with the same result.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("celery")
pytest.importorskip("redis")
otel_celery = pytest.importorskip(
    "opentelemetry.instrumentation.celery",
    reason="opentelemetry-instrumentation-celery is not installed (the frameworks extra)",
)

import ctxrelay  # noqa: E402
import process_support as ps  # noqa: E402
from celery_support import TIMEOUT, Worker  # noqa: E402

POOLS = ["prefork", "solo"]


@pytest.fixture
def app(app):
    """conftest's app, with OpenTelemetry's Celery instrumentation on here (the publisher)."""
    instrumentor = otel_celery.CeleryInstrumentor()
    instrumentor.instrument()
    yield app
    instrumentor.uninstrument()


def _round(app, tracer, count_file: Path) -> dict:
    out = {}
    with tracer.start_as_current_span("publish") as span:
        ps.set_all("r-1", "t-1", "s-1")
        out["delay"] = app.seen.delay("delay").get(TIMEOUT)
        out["apply_async"] = app.seen.apply_async(("apply",)).get(TIMEOUT)
        out["runs_pid"] = app.runs_counted.delay(str(count_file)).get(TIMEOUT)
        try:
            app.fail.delay("boom").get(TIMEOUT)
        except Exception as exc:
            out["fail"] = (type(exc).__name__, str(exc))
        context = span.get_span_context()
    ps.reset_all()
    out["trace_id"] = format(context.trace_id, "032x")
    out["runs"] = count_file.read_text().count("run\n")
    return out


@pytest.mark.parametrize("pool", POOLS)
def test_celery_runner_coexists_with_opentelemetry_instrumentation_celery(
    pool, app, redis, otlp, tracer, exporter, tmp_path
) -> None:
    otel_env = {"CTXRELAY_TEST_OTEL_CELERY": "1"}

    # Without ctxrelay: OpenTelemetry's instrumentation carries the trace, not the values.
    worker = Worker(redis, pool, otlp, activated=False, log=tmp_path / "bare.log", **otel_env)
    try:
        bare = _round(app, tracer, tmp_path / "bare.count")
    finally:
        worker.stop()
    for seen in (bare["delay"], bare["apply_async"]):
        assert seen["trace_id"] == bare["trace_id"]
        assert (seen["request_id"], seen["tenant"]) == ("-", "-")

    # With ctxrelay as well (an activated worker, an instrumented publisher).
    otlp.clear()
    exporter.clear()
    ctxrelay.instrument(process_vars=ps.DECLARED)
    try:
        worker = Worker(redis, pool, otlp, activated=True, log=tmp_path / "on.log", **otel_env)
        try:
            out = _round(app, tracer, tmp_path / "on.count")
        finally:
            worker.stop()
    finally:
        ctxrelay.uninstrument()
    for seen in (out["delay"], out["apply_async"]):
        assert (seen["request_id"], seen["tenant"], seen["secret"]) == ("r-1", "t-1", "-")
        assert seen["trace_id"] == out["trace_id"]
    # Each task ran once, with the result and the exception it has without ctxrelay.
    assert out["runs"] == bare["runs"] == 1
    assert out["fail"] == bare["fail"] == ("ValueError", "boom")
    assert isinstance(out["runs_pid"], int) and isinstance(bare["runs_pid"], int)

    # One trace: the instrumentation's publish spans here, its run spans in the worker,
    # each run span a child of its publish span; no ctxrelay hop beside them.
    published = {
        s.name: s
        for s in exporter.get_finished_spans()
        if s.name.startswith("apply_async/") and s.context.trace_id == int(out["trace_id"], 16)
    }
    assert set(published) == {"apply_async/seen", "apply_async/runs_counted", "apply_async/fail"}
    runs = otlp.wait_for(4, where=lambda s: s["name"].startswith("run/"))
    runs = [s for s in runs if s["name"].startswith("run/")]
    assert sorted(s["name"] for s in runs) == [
        "run/fail", "run/runs_counted", "run/seen", "run/seen"
    ], [s["name"] for s in runs]  # fmt: skip
    assert {s["trace_id"] for s in runs} == {out["trace_id"]}
    publish_ids = {format(s.context.span_id, "016x") for s in exporter.get_finished_spans()
                   if s.name.startswith("apply_async/")}  # fmt: skip
    assert all(s["parent_id"] in publish_ids for s in runs)
    assert [s["status"] for s in runs if s["name"] == "run/fail"] == [2]
    assert not [s for s in otlp.spans if s["attributes"].get("ctxrelay.runner") == "celery"]
