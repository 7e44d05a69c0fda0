"""``multiprocessing.Pool`` and ``multiprocessing.Process``, real processes, every start method.

Without ctxrelay the declared values are lost (or, in a forked pool worker, the first
submitter's snapshot shows, undeclared values included); with it the two declared
variables cross and ``SECRET`` never does.  A plain forked ``Process`` keeps Python's
semantics: it is a copy of the starting thread, every variable included.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.pool import ThreadPool

import pytest

import ctxrelay
import process_support as ps

METHODS = [
    m for m in ("spawn", "forkserver", "fork") if m in multiprocessing.get_all_start_methods()
]


@pytest.fixture(autouse=True)
def _reset_vars():
    yield
    ps.reset_all()


def _every_pool_method(method: str) -> dict[str, list[dict]]:
    """Each Pool entry point once, from a submitter holding r/t/s (pool started elsewhere)."""
    out: dict[str, list[dict]] = {}
    ctx = multiprocessing.get_context(method)
    # The pool (and, with fork, its workers' snapshot) comes from a different submitter.
    pool = ps.run_as(("first", "first", "first-secret"), lambda: ctx.Pool(2))
    try:

        def calls() -> None:
            out["apply"] = [pool.apply(ps.seen, ("apply",))]
            out["apply_async"] = [pool.apply_async(ps.seen, ("apply_async",)).get(60)]
            out["map"] = pool.map(ps.seen, ["map-1", "map-2", "map-3"], chunksize=2)
            out["map_async"] = pool.map_async(ps.seen, ["map_async"]).get(60)
            out["imap"] = list(pool.imap(ps.seen, ["imap-1", "imap-2"]))
            out["imap_unordered"] = list(pool.imap_unordered(ps.seen, ["imap_u"], chunksize=3))
            out["starmap"] = pool.starmap(ps.seen_pair, [(1, 2), (3, 4)])
            out["starmap_async"] = pool.starmap_async(ps.seen_pair, [(5, 6)]).get(60)

        ps.run_as(("r-1", "t-1", "s-1"), calls)
    finally:
        pool.terminate()
        pool.join()
    return out


@pytest.mark.parametrize("method", METHODS)
def test_pool_every_method_carries_declared_only(method: str) -> None:
    bare = _every_pool_method(method)
    for results in bare.values():
        for seen in results:
            if method == "fork":  # the snapshot of the thread that built the pool
                assert (seen["request_id"], seen["secret"]) == ("first", "first-secret")
            else:
                assert (seen["request_id"], seen["tenant"], seen["secret"]) == ("-", "-", "-")

    ctxrelay.instrument(process_vars=ps.DECLARED)
    carried = _every_pool_method(method)
    assert sorted(carried) == sorted(bare)
    for name, results in carried.items():
        assert results, name
        for seen in results:
            assert (seen["request_id"], seen["tenant"], seen["secret"]) == ("r-1", "t-1", "-"), name


@pytest.mark.parametrize("method", METHODS)
def test_pool_task_values_do_not_reach_the_next_task(method: str) -> None:
    def run() -> list[dict]:
        with multiprocessing.get_context(method).Pool(1) as pool:
            first = ps.run_as(("a", "a", "a"), lambda: pool.apply(ps.set_then_seen, ("x",)))
            second = ps.run_as((None, None, None), lambda: pool.apply(ps.seen))
        return [first, second]

    bare = run()
    assert bare[1]["request_id"] == "leaked-x"
    ctxrelay.instrument(process_vars=ps.DECLARED)
    first, second = run()
    assert (first["request_id"], first["secret"]) == ("a", "-")
    assert (second["request_id"], second["tenant"], second["secret"]) == ("-", "-", "-")


@pytest.mark.parametrize("method", METHODS)
def test_pool_result_exception_unchanged(method: str) -> None:
    def run() -> tuple:
        with multiprocessing.get_context(method).Pool(1) as pool:
            with pytest.raises(ValueError) as failure:
                pool.apply(ps.fail, ("boom",))
            frames = ps.without_tolerated_frame(ps.remote_frames(failure.value))
            return type(failure.value), str(failure.value), pool.map(len, ["ab", "c"]), frames

    bare = run()
    assert any("in fail" in frame for frame in bare[-1])
    ctxrelay.instrument(process_vars=ps.DECLARED)
    assert run() == bare  # the worker's traceback lists the same frames, none of ours
    assert bare[:-1] == (ValueError, "boom", [2, 1])


def _process_sees(method: str) -> dict:
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()

    def start() -> dict:
        process = ctx.Process(target=ps.report_to, args=(queue, "process"))
        process.start()
        seen = queue.get(timeout=60)
        process.join(60)
        assert process.exitcode == 0
        return seen

    return ps.run_as(("r-1", "t-1", "s-1"), start)


@pytest.mark.parametrize("method", METHODS)
def test_process_carries_declared_values(method: str) -> None:
    bare = _process_sees(method)
    ctxrelay.instrument(process_vars=ps.DECLARED)
    carried = _process_sees(method)
    if method == "fork":  # Python's semantics, with or without ctxrelay: a full copy
        assert (bare["request_id"], bare["tenant"], bare["secret"]) == ("r-1", "t-1", "s-1")
        assert (carried["request_id"], carried["tenant"], carried["secret"]) == (
            "r-1",
            "t-1",
            "s-1",
        )
    else:
        assert (bare["request_id"], bare["tenant"], bare["secret"]) == ("-", "-", "-")
        assert (carried["request_id"], carried["tenant"], carried["secret"]) == ("r-1", "t-1", "-")


def test_thread_pool_is_left_to_its_own_runner() -> None:
    ctxrelay.instrument(process_vars=ps.DECLARED)
    ps.set_all("r", "t", "s")
    with ThreadPool(1) as pool:  # threads: the whole context, as the thread_pool runner does
        seen = pool.apply(ps.seen)
        mapped = pool.map(ps.seen, [1])
    assert (seen["request_id"], seen["secret"]) == ("r", "s")
    assert (mapped[0]["request_id"], mapped[0]["secret"]) == ("r", "s")
