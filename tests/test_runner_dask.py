"""Dask distributed with a real ``LocalCluster`` of worker processes.

Without ctxrelay the task sees none of the submitter's values and is outside its
trace; with ``instrument(process_vars=...)`` the two declared variables cross, ``SECRET``
never does, the task runs in the submitter's trace, and the worker thread that ran it is
left clean (the next task, submitted with nothing set, sees nothing).

The workers' hop spans are exported: a second cluster's worker processes start with
start-up activation in their environment (``CTXRELAY_ENABLED=1``, the ``OTEL_*`` of a
real OTLP receiver), so each worker configures the SDK and exports; ``Client.submit``
and ``Client.map`` tasks each export one ``dask`` hop span from the worker process, a
child of the span current at submit, ERROR for the failing task.

Graphs (``dask.compute()`` of delayed objects, ``Client.compute``, ``Client.persist``)
carry the values through a task annotation, which the worker enters only where ctxrelay
is active: the activated cluster's tasks see them; the first cluster's workers are not
activated and run those tasks as before, without them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

import ctxrelay  # noqa: E402
import process_support as ps  # noqa: E402

TIMEOUT = 60


@contextmanager
def _cluster(environment: dict[str, str] | None = None) -> Iterator[Any]:
    """A client of a one-worker LocalCluster of processes on 127.0.0.1.

    The Nanny spawns the worker processes with this process's environment:
    ``environment`` is set only while the cluster starts (this process itself is never
    activated).
    """
    with pytest.MonkeyPatch.context() as env:
        for name, value in (environment or {}).items():
            env.setenv(name, value)
        cluster = distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            worker_dashboard_address=None,
        )
    try:
        with distributed.Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def client():
    with _cluster() as found:
        yield found


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
        out["setter"] = client.submit(ps.set_then_seen, f"{tag}-x", pure=False).result(TIMEOUT)
        with pytest.raises(ValueError, match="boom"):
            client.submit(ps.fail, "boom", pure=False).result(TIMEOUT)
        out["trace_id"] = format(span.get_span_context().trace_id, "032x")
    ps.reset_all()
    out["next"] = client.submit(ps.seen, f"{tag}-next", pure=False).result(TIMEOUT)
    return out


def test_dask_carries_declared_values_and_trace(client, tracer) -> None:
    bare = _round(client, tracer, "bare")
    for seen in (bare["submit"], *bare["map"]):
        assert seen["request_id"] != "r-1" and seen["trace_id"] != bare["trace_id"]
    assert bare["next"]["request_id"] == "-"  # Dask runs each task in a copy of its own

    ctxrelay.instrument(process_vars=ps.DECLARED)
    out = _round(client, tracer, "carried")
    for seen in (out["submit"], *out["map"], out["setter"]):
        assert (seen["request_id"], seen["tenant"]) == ("r-1", "t-1"), seen
        assert seen["secret"] != "s-1", seen
        assert seen["trace_id"] == out["trace_id"], seen
    # The worker thread is left as it was: nothing the carried tasks set stays there.
    assert (out["next"]["request_id"], out["next"]["tenant"]) == ("-", "-")
    assert out["next"]["trace_id"] is None


def test_graphs_reach_unactivated_workers_unchanged(client, tracer) -> None:
    """The documented limit: a worker without ctxrelay runs an annotated graph as before."""
    import dask

    ctxrelay.instrument(process_vars=ps.DECLARED)
    with tracer.start_as_current_span("compute"):
        ps.set_all("r-2", "t-2", "s-2")
        (computed,) = dask.compute(dask.delayed(ps.seen)("delayed"))
        with pytest.raises(ValueError, match="boom"):
            dask.delayed(ps.fail)("boom").compute()
    assert (computed["tag"], computed["request_id"], computed["tenant"]) == ("delayed", "-", "-")


def test_pure_tasks_keep_their_key(client) -> None:
    """Pure tasks: the same call is one key, however the submitters' values differ."""
    ps.set_all("r-1", "t-1", "s-1")
    bare = [client.submit(ps.seen_pair, 1, 2).key, client.submit(ps.seen_pair, 1, 2).key]
    ctxrelay.instrument(process_vars=ps.DECLARED)
    first = client.submit(ps.seen_pair, 3, 4)
    ps.set_all("r-2", "t-2", "s-2")
    second = client.submit(ps.seen_pair, 3, 4)
    assert bare[0] == bare[1]
    assert first.key == second.key  # one key: Dask computes it once (the first's values)
    assert first.key.startswith("seen_pair-")
    assert first.result(TIMEOUT)["request_id"] == "r-1"


# --- the workers' hop spans, exported ------------------------------------------------


@pytest.fixture(scope="module")
def otlp():
    pytest.importorskip(
        "opentelemetry.proto", reason="opentelemetry-proto is not installed (the frameworks extra)"
    )
    from otlp_receiver import Receiver

    with Receiver() as found:
        yield found


@pytest.fixture(scope="module")
def activated(otlp):
    environment = {
        **otlp.env(),
        "CTXRELAY_ENABLED": "1",
        "CTXRELAY_PROCESS_VARS": ps.ENV_DECLARED,
        "OTEL_SERVICE_NAME": "dask-worker",
    }
    with _cluster(environment) as found:
        yield found


def _spans_round(client, tracer, tag: str) -> dict:
    import dask

    out = {}
    with tracer.start_as_current_span("submit") as span:
        ps.set_all("r-1", "t-1", "s-1")
        out["submit"] = client.submit(ps.seen, f"{tag}-submit", pure=False).result(TIMEOUT)
        out["map"] = client.gather(client.map(ps.seen, [f"{tag}-m1", f"{tag}-m2"], pure=False))
        with pytest.raises(ValueError, match="boom"):
            client.submit(ps.fail, "boom", pure=False).result(TIMEOUT)
        # Graphs: dask.compute (Client.get), Client.compute, Client.persist.
        (out["delayed"],) = dask.compute(dask.delayed(ps.seen)(f"{tag}-delayed"))
        out["compute"] = client.compute(dask.delayed(ps.seen)(f"{tag}-compute")).result(TIMEOUT)
        out["persist"] = client.persist(dask.delayed(ps.seen)(f"{tag}-persist")).compute()
        with pytest.raises(ValueError, match="graph boom"):
            dask.delayed(ps.fail)("graph boom").compute()
        context = span.get_span_context()
    out["trace_id"] = format(context.trace_id, "032x")
    out["span_id"] = format(context.span_id, "016x")
    ps.reset_all()
    (out["next"],) = dask.compute(dask.delayed(ps.seen)(f"{tag}-next"))
    return out


_CARRIED = ("submit", "map", "delayed", "compute", "persist")


def _seen_of(out: dict) -> list[dict]:
    return [seen for name in _CARRIED for seen in (out[name] if name == "map" else [out[name]])]


def _dask_hops(spans: list[dict]) -> list[dict]:
    return [s for s in spans if s["attributes"].get("ctxrelay.runner") == "dask"]


def test_dask_worker_hop_spans_are_exported_in_the_submitters_trace(
    activated, otlp, tracer
) -> None:
    otlp.clear()
    bare = _spans_round(activated, tracer, "bare")
    assert [seen["request_id"] for seen in _seen_of(bare)] == ["-"] * 6
    assert {seen["trace_id"] for seen in _seen_of(bare)} == {None}
    assert _dask_hops(otlp.wait_for(1, timeout=2, where=lambda s: bool(_dask_hops([s])))) == []

    ctxrelay.instrument(process_vars=ps.DECLARED)
    out = _spans_round(activated, tracer, "carried")
    for seen in _seen_of(out):
        assert (seen["request_id"], seen["tenant"], seen["secret"]) == ("r-1", "t-1", "-"), seen
        assert seen["trace_id"] == out["trace_id"], seen
    assert [seen["tag"] for seen in _seen_of(out)][-3:] == [
        "carried-delayed",
        "carried-compute",
        "carried-persist",
    ]
    # The worker is left as it was: the next graph, computed with nothing set, sees nothing.
    assert (out["next"]["request_id"], out["next"]["tenant"], out["next"]["trace_id"]) == (
        "-",
        "-",
        None,
    )

    # One hop each: submit, two map items, a failing task, three graphs, a failing graph.
    hops = _dask_hops(otlp.wait_for(8, timeout=TIMEOUT, where=lambda s: bool(_dask_hops([s]))))
    assert sorted(h["name"] for h in hops) == ["dask fail"] * 2 + ["dask seen"] * 6
    assert {h["trace_id"] for h in hops} == {out["trace_id"]}
    assert {h["parent_id"] for h in hops} == {out["span_id"]}
    assert [h["name"] for h in hops if h["status"] == 2] == ["dask fail"] * 2
    workers = {seen["pid"] for seen in _seen_of(out)}
    assert {h["attributes"]["process.pid"] for h in hops} == workers
    assert all(h["attributes"]["ctxrelay.origin.process.pid"] == os.getpid() for h in hops)
    assert all(h["resource"]["service.name"] == "dask-worker" for h in hops)
    assert os.environ.get("CTXRELAY_ENABLED") is None  # this process was never activated


def test_coroutine_tasks_are_carried_to_activated_worker_processes(activated, otlp, tracer) -> None:
    """``async def`` submitted: awaited on the worker as bare, with the values and a hop."""

    def submits(tag: str) -> list[dict]:
        ps.set_all("r-1", "t-1", "s-1")
        with tracer.start_as_current_span("submit") as span:
            futures = [activated.submit(ps.seen_async, f"{tag}-submit", pure=False)]
            futures += activated.map(ps.seen_async, [f"{tag}-m1", f"{tag}-m2"], pure=False)
            out = activated.gather(futures)
        ps.reset_all()
        return [*out, {"trace_id": format(span.get_span_context().trace_id, "032x")}]

    bare = submits("bare")
    assert [(s["tag"], s["request_id"], s["trace_id"]) for s in bare[:3]] == [
        ("bare-submit", "-", None),
        ("bare-m1", "-", None),
        ("bare-m2", "-", None),
    ]
    ctxrelay.instrument(process_vars=ps.DECLARED)
    otlp.clear()
    out = submits("carried")
    trace_id = out[-1]["trace_id"]
    assert [
        (s["tag"], s["request_id"], s["tenant"], s["secret"], s["trace_id"]) for s in out[:3]
    ] == [
        ("carried-submit", "r-1", "t-1", "-", trace_id),
        ("carried-m1", "r-1", "t-1", "-", trace_id),
        ("carried-m2", "r-1", "t-1", "-", trace_id),
    ]
    hops = _dask_hops(otlp.wait_for(3, timeout=TIMEOUT, where=lambda s: bool(_dask_hops([s]))))
    assert sorted(h["name"] for h in hops) == ["dask seen_async"] * 3
    assert {h["trace_id"] for h in hops} == {trace_id}
