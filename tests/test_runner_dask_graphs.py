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
from test_runner_dask import _cluster  # noqa: E402  (the same cluster of plain worker processes)

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
    with _cluster() as client:
        yield client


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


def _hops(exporter: Any) -> list[Any]:
    return [
        s for s in exporter.get_finished_spans() if s.attributes.get("ctxrelay.runner") == "dask"
    ]


def test_tasks_computing_from_inside_carry_on(inproc, tracer, exporter) -> None:
    """A task's own ``compute`` / ``submit`` (``worker_client``) carries its values on."""
    ps.set_all("r-1", "t-1", "s-1")
    bare = inproc.submit(ps.computes_inside, "bare", pure=False).result(TIMEOUT)
    assert [_values(seen) for seen in bare] == [
        ("bare", "-", "-", "-"),
        ("bare-graph", "-", "-", "-"),
        ("bare-submit", "-", "-", "-"),
    ]
    ctxrelay.instrument(process_vars=ps.DECLARED)
    with tracer.start_as_current_span("root") as root:
        out = inproc.submit(ps.computes_inside, "in", pure=False).result(TIMEOUT)
    assert [_values(seen) for seen in out] == [
        ("in", "r-1", "t-1", "-"),
        ("in-graph", "r-1", "t-1", "-"),
        ("in-submit", "r-1", "t-1", "-"),
    ]
    hops = {s.context.span_id: s for s in _hops(exporter)}
    (outer,) = [s for s in hops.values() if s.name == "dask computes_inside"]
    assert outer.parent.span_id == root.get_span_context().span_id
    inner = [s for s in hops.values() if s.name == "dask seen"]
    assert len(inner) == 2 and {s.parent.span_id for s in inner} == {outer.context.span_id}


def test_retried_task_runs_each_attempt_carried(inproc, tracer, exporter, tmp_path) -> None:
    """``retries=``: the failed attempt's hop is ERROR, the retry's OK, both carried."""
    ps.set_all("r-1", "t-1", "s-1")
    bare = inproc.compute(
        dask.delayed(ps.fails_once, pure=False)(str(tmp_path / "bare")), retries=1
    ).result(TIMEOUT)
    assert _values(bare) == (2, "-", "-", "-")
    ctxrelay.instrument(process_vars=ps.DECLARED)
    with tracer.start_as_current_span("root") as root:
        out = inproc.compute(
            dask.delayed(ps.fails_once, pure=False)(str(tmp_path / "in")), retries=1
        ).result(TIMEOUT)
    assert _values(out) == (2, "r-1", "t-1", "-")
    hops = _hops(exporter)
    assert [(s.name, s.status.status_code.name) for s in hops] == [
        ("dask fails_once", "ERROR"),
        ("dask fails_once", "UNSET"),
    ]
    assert {s.parent.span_id for s in hops} == {root.get_span_context().span_id}


def _annotated_round(client: Any, tag: str) -> list[Any]:
    """The user's own annotations (a callable one, one named ``ctxrelay``): as set."""
    scheduler = client.cluster.scheduler
    ps.set_all("r-1", "t-1", "s-1")
    out = []
    with dask.annotate(priority=7, retries=2, custom=lambda key: ("from", key[:4])):
        layer = dask.delayed(ps.seen)(f"{tag}-layer")
    calls = [
        lambda: client.compute(layer),
        lambda: client.compute(dask.delayed(ps.seen)(f"{tag}-kw"), priority=3, retries=1),
    ]
    for call in calls:
        future = call()
        seen = future.result(TIMEOUT)
        task = scheduler.tasks[future.key]
        own = {k: v for k, v in task.annotations.items() if k != "ctxrelay"}
        out.append((_values(seen)[1:], own, task.retries, task.priority[0]))
    with dask.annotate(ctxrelay="mine"):
        future = client.compute(dask.delayed(ps.seen)(f"{tag}-mine"))
    seen = future.result(TIMEOUT)
    out.append((_values(seen)[1:], scheduler.tasks[future.key].annotations))
    return out


def test_users_annotations_are_left_as_they_are(inproc) -> None:
    bare = _annotated_round(inproc, "bare")
    ctxrelay.instrument(process_vars=ps.DECLARED)
    carried = _annotated_round(inproc, "in")
    assert [row[1:] for row in carried] == [row[1:] for row in bare]
    assert bare[0][1] == {"priority": 7, "retries": 2, "custom": ("from", "seen")}
    assert [row[0] for row in carried] == [("r-1", "t-1", "-")] * 2 + [("-", "-", "-")]


def test_asynchronous_client_tasks_see_their_own_values() -> None:
    """``Client(asynchronous=True)``: concurrent asyncio tasks, each with its values."""
    import asyncio

    async def one(client: Any, i: int) -> set[tuple[Any, ...]]:
        ps.set_all(f"r-{i}", f"t-{i}", "s")
        got = [
            await client.compute(dask.delayed(ps.seen)(f"{i}-graph")),
            await client.submit(ps.seen, f"{i}-submit", pure=False),
            await client.submit(ps.seen_async, f"{i}-async", pure=False),
        ]
        return {_values(seen)[1:] for seen in got}

    async def main() -> list[set[tuple[Any, ...]]]:
        async with distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            dashboard_address="127.0.0.1:0",
            asynchronous=True,
        ) as cluster:
            async with distributed.Client(cluster, asynchronous=True) as client:
                ctxrelay.instrument(process_vars=ps.DECLARED)
                found = await asyncio.gather(*(one(client, i) for i in range(3)))
                ps.reset_all()
                after = await client.compute(dask.delayed(ps.seen)("after"))
                return [*found, {_values(after)[1:]}]

    assert asyncio.run(main()) == [{(f"r-{i}", f"t-{i}", "-")} for i in range(3)] + [
        {("-", "-", "-")}
    ]


# A main module the workers cannot import (``python -c``, a notebook, a REPL): a class
# defined there pickles by reference to ``__main__``, which Dask replaces by its value
# (cloudpickle) for what it ships, and so must the carrier, or the worker cannot read it.
_MAIN_SCRIPT = """
import os, sys
import dask, distributed
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
import ctxrelay, process_support as ps

class Tag:
    def __init__(self, v):
        self.v = v
    def __repr__(self):
        return f"Tag({self.v})"

def look():
    context = trace.get_current_span().get_span_context()
    return [str(ps.REQUEST_ID.get()), ps.TENANT.get(), context.is_valid]

trace.set_tracer_provider(TracerProvider())
workers = {"CTXRELAY_ENABLED": "1", "CTXRELAY_PROCESS_VARS": ps.ENV_DECLARED,
           "OTEL_TRACES_EXPORTER": "none"}
os.environ.update(workers)  # the Nanny starts the workers with it: they run ctxrelay
cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
    dashboard_address="127.0.0.1:0", host="127.0.0.1", worker_dashboard_address=None)
for name in workers:
    os.environ.pop(name)
with distributed.Client(cluster) as client:
    if sys.argv[1] == "instrumented":
        ctxrelay.instrument(process_vars=ps.DECLARED)
    ps.REQUEST_ID.set(Tag(1))
    ps.TENANT.set("t-1")
    with trace.get_tracer("t").start_as_current_span("root"):
        print(client.submit(look, pure=False).result(60))
        print(dask.compute(dask.delayed(look, pure=False)())[0])
cluster.close()
"""


def _run_main_script(mode: str) -> list[str]:
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    environment = {**os.environ, "PYTHONPATH": tests}
    for name in [n for n in environment if n.startswith(("CTXRELAY_", "OTEL_"))]:
        del environment[name]
    done = subprocess.run(
        [sys.executable, "-c", _MAIN_SCRIPT, mode],
        cwd=tests,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()[-2:]


def test_values_of_classes_defined_in_an_unimportable_main() -> None:
    """Graphs carry what ``submit`` carries, a ``__main__`` class's value included."""
    assert _run_main_script("bare") == ["['-', '-', False]"] * 2
    assert _run_main_script("instrumented") == ["['Tag(1)', 't-1', True]"] * 2
