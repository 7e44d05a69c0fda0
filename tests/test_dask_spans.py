"""Dask workers' hop spans are exported, in the submitter's trace.

A real ``LocalCluster`` of worker processes started with start-up activation in their
environment (``CTXRELAY_ENABLED=1``, the ``OTEL_*`` of a real OTLP receiver): each worker
configures the SDK and exports.  Submitted without ctxrelay, no task is a hop (nothing
records a ``dask`` span, the values are lost); with ``instrument(process_vars=...)``,
``Client.submit`` and ``Client.map`` tasks each export one ``dask`` hop span from the
worker process, a child of the span current at submit, ERROR for the failing task.
"""

from __future__ import annotations

import os

import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip(
    "opentelemetry.proto", reason="opentelemetry-proto is not installed (the frameworks extra)"
)

import ctxrelay  # noqa: E402
import process_support as ps  # noqa: E402
from otlp_receiver import Receiver  # noqa: E402

TIMEOUT = 60


@pytest.fixture(scope="module")
def otlp():
    with Receiver() as found:
        yield found


@pytest.fixture(scope="module")
def client(otlp):
    # The Nanny spawns the worker processes with this process's environment: activation
    # variables only while the cluster starts (this process itself is not activated).
    activation = {
        **otlp.env(),
        "CTXRELAY_ENABLED": "1",
        "CTXRELAY_PROCESS_VARS": ps.ENV_DECLARED,
        "OTEL_SERVICE_NAME": "dask-worker",
    }
    with pytest.MonkeyPatch.context() as env:
        for name, value in activation.items():
            env.setenv(name, value)
        cluster = distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            worker_dashboard_address=None,
        )
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


@pytest.fixture(autouse=True)
def _reset_vars():
    yield
    ps.reset_all()


def _round(client, tracer, tag: str) -> dict:
    out = {}
    with tracer.start_as_current_span("submit") as span:
        ps.set_all("r-1", "t-1", "s-1")
        out["submit"] = client.submit(ps.seen, f"{tag}-submit", pure=False).result(TIMEOUT)
        out["map"] = client.gather(client.map(ps.seen, [f"{tag}-m1", f"{tag}-m2"], pure=False))
        with pytest.raises(ValueError, match="boom"):
            client.submit(ps.fail, "boom", pure=False).result(TIMEOUT)
        context = span.get_span_context()
    out["trace_id"] = format(context.trace_id, "032x")
    out["span_id"] = format(context.span_id, "016x")
    return out


def _dask_hops(spans: list[dict]) -> list[dict]:
    return [s for s in spans if s["attributes"].get("ctxrelay.runner") == "dask"]


def test_dask_worker_hop_spans_are_exported_in_the_submitters_trace(client, otlp, tracer) -> None:
    otlp.clear()
    bare = _round(client, tracer, "bare")
    assert [seen["request_id"] for seen in (bare["submit"], *bare["map"])] == ["-"] * 3
    assert _dask_hops(otlp.wait_for(1, timeout=2, where=lambda s: bool(_dask_hops([s])))) == []

    ctxrelay.instrument(process_vars=ps.DECLARED)
    out = _round(client, tracer, "carried")
    for seen in (out["submit"], *out["map"]):
        assert (seen["request_id"], seen["tenant"], seen["secret"]) == ("r-1", "t-1", "-")
        assert seen["trace_id"] == out["trace_id"]

    # submit, two map items, the failing task: one hop each, exported by the worker.
    hops = _dask_hops(otlp.wait_for(4, timeout=TIMEOUT, where=lambda s: bool(_dask_hops([s]))))
    assert sorted(h["name"] for h in hops) == ["dask fail", "dask seen", "dask seen", "dask seen"]
    assert {h["trace_id"] for h in hops} == {out["trace_id"]}
    assert {h["parent_id"] for h in hops} == {out["span_id"]}
    assert [h["name"] for h in hops if h["status"] == 2] == ["dask fail"]
    workers = {seen["pid"] for seen in (out["submit"], *out["map"])}
    assert {h["attributes"]["process.pid"] for h in hops} == workers
    assert all(h["attributes"]["ctxrelay.origin.process.pid"] == os.getpid() for h in hops)
    assert all(h["resource"]["service.name"] == "dask-worker" for h in hops)
    assert os.environ.get("CTXRELAY_ENABLED") is None  # this process was never activated

    # The documented limit: compute() of a delayed object carries nothing (the graph goes
    # to the scheduler as an expression; no callable passes through submit/map).
    import dask

    with tracer.start_as_current_span("compute"):
        ps.set_all("r-2", "t-2", "s-2")
        (computed,) = dask.compute(dask.delayed(ps.seen)("delayed"))
    assert (computed["request_id"], computed["tenant"]) == ("-", "-")
