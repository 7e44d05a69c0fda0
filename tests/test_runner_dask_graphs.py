"""Dask graphs and coroutine tasks against real clusters, compared with bare Dask.

An in-process ``LocalCluster`` (``processes=False``): this process is instrumented, so
its workers' ``Worker.execute`` is patched too and graph tasks see the carried values.
Each test runs the same calls bare first, then instrumented, and compares what the
caller gets: results, the collections ``persist`` returns, warnings, exceptions and the
traceback text.  Coroutine functions are also submitted to a cluster of worker
processes that do not run ctxrelay: there the result must be exactly the bare one.
Every call names its client (``scheduler=``): two clusters run in this module, and
``dask.compute`` alone would use the newest.
"""

from __future__ import annotations

import threading
import traceback
import warnings
from collections.abc import Iterator
from contextvars import Context
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402

import ctxrelay  # noqa: E402
import process_support as ps  # noqa: E402

TIMEOUT = 60


@pytest.fixture(scope="module")
def inproc() -> Iterator[Any]:
    """A client of an in-process cluster: its workers run in this (instrumented) process."""
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0"
    )
    try:
        with distributed.Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def processes() -> Iterator[Any]:
    """A client of a one-worker cluster of processes that never run ctxrelay."""
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",
        host="127.0.0.1",
        worker_dashboard_address=None,
    )
    try:
        with distributed.Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@pytest.fixture(autouse=True)
def _reset_vars() -> Iterator[None]:
    yield
    ps.reset_all()


def _values(seen: dict[str, Any]) -> tuple[Any, ...]:
    return (seen["tag"], seen["request_id"], seen["tenant"], seen["secret"])


def _layer_annotations(collection: Any) -> list[Any]:
    return [layer.annotations for layer in collection.__dask_graph__().layers.values()]


def test_persisted_collections_keep_no_carrier(inproc) -> None:
    """``persist`` returns a collection: it must not keep the carrier (the values) in it."""
    da = pytest.importorskip("dask.array")

    def persisted(tag: str) -> tuple[list[Any], tuple[Any, ...]]:
        ps.set_all(f"r-{tag}", "t-1", "s-1")
        array = inproc.persist(da.ones((4, 4), chunks=(2, 2)) + 1)
        total = float(array.sum().compute(scheduler=inproc))
        (seen,) = dask.compute(dask.delayed(ps.seen)(tag), scheduler=inproc)
        return _layer_annotations(array), (total, *_values(seen))

    bare = persisted("bare")
    ctxrelay.instrument(process_vars=ps.DECLARED)
    carried = persisted("carried")
    assert bare == ([None], (32.0, "bare", "-", "-", "-"))
    assert carried == ([None], (32.0, "carried", "r-carried", "t-1", "-"))


def test_persist_of_a_dataframe_warns_as_bare(inproc) -> None:
    """dask-expr warns once about annotations on a collection it builds: none may appear."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    dd = pytest.importorskip("dask.dataframe")
    collection = pytest.importorskip("dask.dataframe.dask_expr._collection")

    def persisted() -> tuple[int, list[str]]:
        ps.set_all("r-1", "t-1", "s-1")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame = dd.from_pandas(pd.DataFrame({"a": range(10)}), npartitions=2)
            total = int(inproc.persist(frame).a.sum().compute(scheduler=inproc))
        return total, [str(w.message) for w in caught]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(collection, "_WARN_ANNOTATIONS", True)
        bare = persisted()
        ctxrelay.instrument(process_vars=ps.DECLARED)
        carried = persisted()
    assert bare == (45, [])
    assert carried == bare


def _coroutine_round(client: Any, tag: str) -> dict[str, Any]:
    ps.set_all("r-1", "t-1", "s-1")
    out = {
        "submit": client.submit(ps.seen_async, f"{tag}-submit", pure=False).result(TIMEOUT),
        "map": client.gather(client.map(ps.seen_async, [f"{tag}-m1", f"{tag}-m2"], pure=False)),
    }
    ps.reset_all()
    out["next"] = client.submit(ps.seen_async, f"{tag}-next", pure=False).result(TIMEOUT)
    return out


def test_coroutine_functions_are_awaited_as_bare(inproc) -> None:
    """Dask awaits a coroutine function on the worker: instrumented, it still does."""
    bare = _coroutine_round(inproc, "bare")
    assert _values(bare["submit"]) == ("bare-submit", "-", "-", "-")
    ctxrelay.instrument(process_vars=ps.DECLARED)
    out = _coroutine_round(inproc, "carried")
    assert [_values(seen) for seen in (out["submit"], *out["map"])] == [
        ("carried-submit", "r-1", "t-1", "-"),
        ("carried-m1", "r-1", "t-1", "-"),
        ("carried-m2", "r-1", "t-1", "-"),
    ]
    assert _values(out["next"]) == ("carried-next", "-", "-", "-")


def test_coroutine_functions_on_workers_without_ctxrelay(processes) -> None:
    """Where the worker does not run ctxrelay, the coroutine task runs exactly as bare."""
    bare = _coroutine_round(processes, "x")
    ctxrelay.instrument(process_vars=ps.DECLARED)
    out = _coroutine_round(processes, "x")
    strip = {"pid"}
    assert [
        {k: v for k, v in seen.items() if k not in strip} for seen in (out["submit"], *out["map"])
    ] == [
        {k: v for k, v in seen.items() if k not in strip} for seen in (bare["submit"], *bare["map"])
    ]


def _failure_text(call: Any) -> tuple[str, str, str]:
    try:
        call()
    except Exception as exc:  # what the caller reads of it
        return type(exc).__name__, str(exc), "".join(traceback.format_exception(exc))
    raise AssertionError("did not raise")


def _failures(client: Any) -> list[tuple[str, str, str]]:
    ps.set_all("r-1", "t-1", "s-1")
    return [
        _failure_text(lambda: dask.delayed(ps.fail)("graph boom").compute(scheduler=client)),
        _failure_text(lambda: client.get({"fails": (ps.fail, "get boom")}, "fails")),
        _failure_text(lambda: client.compute(dask.delayed(ps.fail)("compute boom"), sync=True)),
        _failure_text(lambda: client.submit(ps.seen, allow_other_workers=True)),
    ]


def test_failures_reach_the_caller_as_bare(inproc) -> None:
    """Exception type, message and the whole traceback text the caller gets: as bare."""
    bare = _failures(inproc)
    assert [kind for kind, _, _ in bare] == ["ValueError"] * 4
    ctxrelay.instrument(process_vars=ps.DECLARED)
    carried = _failures(inproc)
    for before, after in zip(bare, carried, strict=True):
        assert after == before
        assert "ctxrelay" not in after[2]


def test_concurrent_graphs_see_their_own_values(inproc) -> None:
    """Threads computing graphs at once: each task sees its own thread's values only."""
    ctxrelay.instrument(process_vars=ps.DECLARED)
    seen: dict[int, set[tuple[str, str]]] = {}

    def computes(i: int) -> None:
        ps.set_all(f"r-{i}", f"t-{i}", "s")
        results = [
            dask.compute(dask.delayed(ps.seen)(f"{i}-{j}"), scheduler=inproc)[0] for j in range(5)
        ] + [inproc.compute(dask.delayed(ps.seen)(f"{i}-c")).result(TIMEOUT)]
        seen[i] = {(r["request_id"], r["tenant"]) for r in results}

    threads = [threading.Thread(target=Context().run, args=(computes, i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert seen == {i: {(f"r-{i}", f"t-{i}")} for i in range(4)}
    (after,) = dask.compute(dask.delayed(ps.seen)("after"), scheduler=inproc)
    assert _values(after) == ("after", "-", "-", "-")
