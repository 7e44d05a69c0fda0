"""``ProcessPoolExecutor`` with real worker processes, every start method.

Each test first runs the same work without ctxrelay (the declared values are lost, or a
forked worker shows the snapshot it inherited), then with ``instrument(process_vars=...)``:
the two declared variables cross, the undeclared ``SECRET`` never does.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

import ctxrelay
import process_support as ps

METHODS = [
    m for m in ("spawn", "forkserver", "fork") if m in multiprocessing.get_all_start_methods()
]


def _pool(method: str) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method))


def _submit_and_map(method: str) -> tuple[dict, list[dict]]:
    with _pool(method) as pool:
        one = ps.run_as(("r-1", "t-1", "s-1"), lambda: pool.submit(ps.seen, "submit").result())
        many = ps.run_as(
            ("r-2", "t-2", "s-2"), lambda: list(pool.map(ps.seen_pair, [1, 2], [3, 4]))
        )
    return one, many


@pytest.fixture(autouse=True)
def _reset_vars():
    yield
    ps.reset_all()


@pytest.mark.parametrize("method", METHODS)
def test_declared_values_cross_undeclared_do_not(method: str) -> None:
    bare_one, bare_many = _submit_and_map(method)
    if method == "fork":  # the worker is forked at the first submit: its snapshot shows
        assert (bare_one["request_id"], bare_one["secret"]) == ("r-1", "s-1")
    else:
        assert (bare_one["request_id"], bare_one["tenant"], bare_one["secret"]) == ("-", "-", "-")
    assert all(seen["request_id"] != "r-2" for seen in bare_many)

    ctxrelay.instrument(process_vars=ps.DECLARED)
    one, many = _submit_and_map(method)
    assert (one["request_id"], one["tenant"], one["secret"]) == ("r-1", "t-1", "-")
    assert [(s["tag"], s["request_id"], s["tenant"], s["secret"]) for s in many] == [
        ((1, 3), "r-2", "t-2", "-"),
        ((2, 4), "r-2", "t-2", "-"),
    ]


@pytest.mark.parametrize("method", METHODS)
def test_a_forked_snapshot_never_reaches_a_task(method: str) -> None:
    """The first submitter starts the worker; a second one, with other values, follows."""

    def second_after_first() -> tuple[dict, dict]:
        with _pool(method) as pool:
            first = ps.run_as(
                ("first", "first", "first-secret"), lambda: pool.submit(ps.seen).result()
            )
            # The second submitter set REQUEST_ID only: TENANT must be at its default.
            second = ps.run_as(("second", None, None), lambda: pool.submit(ps.seen).result())
            # A task that sets values leaves nothing for the next task on the worker.
            pool.submit(ps.set_then_seen, "x").result()
            third = ps.run_as((None, None, None), lambda: pool.submit(ps.seen).result())
        return first, second, third

    bare = second_after_first()
    if method == "fork":
        assert bare[1]["tenant"] == "first" and bare[1]["secret"] == "first-secret"  # the leak
    assert bare[2]["request_id"] == "leaked-x"  # without ctxrelay a task's values stay

    ctxrelay.instrument(process_vars=ps.DECLARED)
    first, second, third = second_after_first()
    assert (first["request_id"], first["tenant"], first["secret"]) == ("first", "first", "-")
    assert (second["request_id"], second["tenant"], second["secret"]) == ("second", "-", "-")
    assert (third["request_id"], third["tenant"], third["secret"]) == ("-", "-", "-")
    assert first["pid"] == second["pid"] == third["pid"]  # one worker throughout


@pytest.mark.parametrize("method", METHODS)
def test_result_exception_and_single_run_unchanged(method: str, tmp_path) -> None:
    def outcomes() -> tuple:
        counter = tmp_path / f"runs-{len(list(tmp_path.iterdir()))}"
        with _pool(method) as pool:
            with pytest.raises(ValueError) as failure:
                pool.submit(ps.fail, "boom").result()
            pid = pool.submit(ps.runs_counted, str(counter)).result()
        frames = ps.without_tolerated_frame(ps.remote_frames(failure.value))
        return (
            type(failure.value),
            str(failure.value),
            counter.read_text().count("run"),
            pid > 0,
            frames,
        )

    bare = outcomes()
    assert any("in fail" in frame for frame in bare[-1])
    ctxrelay.instrument(process_vars=ps.DECLARED)
    assert outcomes() == bare  # the worker's traceback lists the same frames, none of ours
    assert bare[:-1] == (ValueError, "boom", 1, True)


def test_submit_span_parents_the_task(tracer) -> None:
    """In the task, the current span's trace is the submitter's (no SDK in the worker:
    the hop is a non-recording span carrying the submitter's span context)."""
    with tracer.start_as_current_span("submit") as span, _pool("spawn") as pool:
        bare = pool.submit(ps.seen).result()
    assert bare["trace_id"] is None

    ctxrelay.instrument(process_vars=ps.DECLARED)
    with tracer.start_as_current_span("submit") as span, _pool("spawn") as pool:
        seen = pool.submit(ps.seen).result()
    assert seen["trace_id"] == format(span.get_span_context().trace_id, "032x")


def test_nothing_declared_still_carries_the_trace(tracer) -> None:
    ctxrelay.instrument()
    ps.REQUEST_ID.set("r-9")
    with tracer.start_as_current_span("submit") as span, _pool("spawn") as pool:
        seen = pool.submit(ps.seen).result()
    assert seen["request_id"] == "-"
    assert seen["trace_id"] == format(span.get_span_context().trace_id, "032x")
