"""Dask distributed with a real ``LocalCluster`` of worker processes.

Without ctxrelay the task sees none of the submitter's values and is outside its
trace; with ``instrument(process_vars=...)`` the two declared variables cross, ``SECRET``
never does, the task runs in the submitter's trace, and the worker thread that ran it is
left clean (the next task, submitted with nothing set, sees nothing).
"""

from __future__ import annotations

import pytest

distributed = pytest.importorskip("distributed")

import ctxrelay  # noqa: E402
import process_support as ps  # noqa: E402


@pytest.fixture(scope="module")
def client():
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
        out["submit"] = client.submit(ps.seen, f"{tag}-submit", pure=False).result(60)
        out["map"] = client.gather(client.map(ps.seen, [f"{tag}-m1", f"{tag}-m2"], pure=False))
        out["setter"] = client.submit(ps.set_then_seen, f"{tag}-x", pure=False).result(60)
        with pytest.raises(ValueError, match="boom"):
            client.submit(ps.fail, "boom", pure=False).result(60)
        out["trace_id"] = format(span.get_span_context().trace_id, "032x")
    ps.reset_all()
    out["next"] = client.submit(ps.seen, f"{tag}-next", pure=False).result(60)
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
    assert first.result(60)["request_id"] == "r-1"
