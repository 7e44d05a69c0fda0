"""Random nesting: threads inside pool tasks inside threads inside executors, to depth 5.

Hypothesis draws a tree of hand-overs (each edge one runner: ``Thread``, ``Timer``,
``ThreadPoolExecutor.submit``/``.map``, ``loop.run_in_executor``, ``asyncio.to_thread``).
Every node appends its id to a ContextVar path and opens a span, then hands its
children over, siblings running at the same time.  The test proves:

* every node sees exactly its own chain of origins (no value lost, none from a
  sibling or from an earlier task on a reused worker);
* the span tree follows the hand-over tree: node span -> hop span named after the
  runner -> the parent node's span, in one trace.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace

import ctxrelay
from helpers import BASELINE_THREAD_INHERITS

PATH: ContextVar[tuple[str, ...]] = ContextVar("nesting_path", default=())

#: runner drawn by hypothesis -> the prefix of the hop span ctxrelay records for it
HOP_PREFIX = {
    "thread": "Thread ",
    "timer": "Timer ",
    "pool": "ThreadPoolExecutor ",
    "pool_map": "ThreadPoolExecutor ",
    "run_in_executor": "run_in_executor ",
    "to_thread": "to_thread ",
}

Tree = tuple[str, tuple["Tree", ...]]  # (runner that hands this node over, children)
Join = Callable[[], None]


def trees(depth: int) -> st.SearchStrategy[Tree]:
    runner = st.sampled_from(sorted(HOP_PREFIX))
    if depth <= 1:
        return st.tuples(runner, st.just(()))
    return st.tuples(runner, st.lists(trees(depth - 1), max_size=2).map(tuple))


forests = st.lists(trees(5), min_size=1, max_size=2).map(tuple)


def hand_off(runner: str, fn: Callable[[], None]) -> Join:
    """Start ``fn`` on ``runner`` now; return what waits for it (and re-raises)."""
    if runner in ("thread", "timer"):
        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                fn()
            except BaseException as exc:  # re-raised in the origin by join()
                errors.append(exc)

        thread = (
            threading.Timer(0, guarded) if runner == "timer" else threading.Thread(target=guarded)
        )
        thread.start()

        def join() -> None:
            thread.join()
            if errors:
                raise errors[0]

        return join
    if runner in ("pool", "pool_map"):
        # A pool per hand-over: a task waiting on a task of its own pool could deadlock.
        pool = ThreadPoolExecutor(1)
        if runner == "pool":
            future = pool.submit(fn)
            wait = future.result
        else:
            results = pool.map(lambda _: fn(), [0])
            wait = functools.partial(list, results)

        def join_pool() -> None:
            try:
                wait()
            finally:
                pool.shutdown()

        return join_pool

    async def via_loop() -> None:
        if runner == "to_thread":
            await asyncio.to_thread(fn)
        else:
            await asyncio.get_running_loop().run_in_executor(None, fn)

    # asyncio.run blocks this origin until the hop is done (siblings run one by one).
    asyncio.run(via_loop())
    return lambda: None


def visit(
    node_id: str, children: tuple[Tree, ...], seen: dict[str, tuple[str, ...]], tracer: trace.Tracer
) -> None:
    PATH.set((*PATH.get(), node_id))
    with tracer.start_as_current_span(f"node {node_id}"):
        seen[node_id] = PATH.get()
        joins = [
            hand_off(
                runner, functools.partial(visit, f"{node_id}.{i}", grandchildren, seen, tracer)
            )
            for i, (runner, grandchildren) in enumerate(children)
        ]
        for join in joins:
            join()


def expected_paths(forest: tuple[Tree, ...]) -> dict[str, tuple[str, ...]]:
    """node id -> the ids of the node and all its origins, root first."""
    paths: dict[str, tuple[str, ...]] = {}

    def walk(node_id: str, children: tuple[Tree, ...], prefix: tuple[str, ...]) -> None:
        paths[node_id] = (*prefix, node_id)
        for i, (_, grandchildren) in enumerate(children):
            walk(f"{node_id}.{i}", grandchildren, paths[node_id])

    walk("root", forest, ())
    return paths


def runners_by_node(forest: tuple[Tree, ...]) -> dict[str, str]:
    found: dict[str, str] = {}

    def walk(node_id: str, children: tuple[Tree, ...]) -> None:
        for i, (runner, grandchildren) in enumerate(children):
            found[f"{node_id}.{i}"] = runner
            walk(f"{node_id}.{i}", grandchildren)

    walk("root", forest)
    return found


def hand_over_spans(finished) -> list:
    """Every span that is not a node's: the hop spans.

    Nothing else may appear: ``asyncio.run``'s executor-shutdown helper thread (started
    under the node's span) is exempt, like pool workers.
    """
    return [s for s in finished if not s.name.startswith("node ")]


def run_forest(forest: tuple[Tree, ...], tracer: trace.Tracer) -> dict[str, tuple[str, ...]]:
    seen: dict[str, tuple[str, ...]] = {}
    copy_context().run(visit, "root", forest, seen, tracer)
    return seen


def test_without_ctxrelay_a_nested_leaf_loses_its_origins(tracer) -> None:
    forest = (("thread", (("pool", (("run_in_executor", ()),)),)),)
    seen = run_forest(forest, tracer)
    if BASELINE_THREAD_INHERITS:
        # 3.14 with the flag on: start() copies, and each node's pool is fresh (its
        # worker starts in the submit): the whole path arrives.  Warm pools would not
        # (tests/test_load.py); nor would spans: no hop in between (test_core_py314.py).
        assert seen == expected_paths(forest)
        return
    # Each hop starts from an empty context: every node sees only itself.
    assert seen["root.0.0.0"] == ("root.0.0.0",)
    assert seen != expected_paths(forest)


@settings(
    max_examples=25,
    deadline=None,  # threads: wall time depends on the machine's load, not the code
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=False,
)
@given(forest=forests)
def test_every_node_sees_its_own_origins_and_spans_follow_the_hand_overs(
    forest: tuple[Tree, ...], exporter, tracer
) -> None:
    ctxrelay.instrument()
    exporter.clear()
    try:
        seen = run_forest(forest, tracer)
    finally:
        ctxrelay.uninstrument()

    assert seen == expected_paths(forest)

    finished = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    nodes = {s.name.removeprefix("node "): s for s in finished if s.name.startswith("node ")}
    assert set(nodes) == set(seen)
    trace_ids = {s.context.trace_id for s in finished}
    assert len(trace_ids) == 1
    runners = runners_by_node(forest)
    for node_id, span in nodes.items():
        if node_id == "root":
            continue
        hop = by_id[span.parent.span_id]
        assert hop.name.startswith(HOP_PREFIX[runners[node_id]]), (node_id, hop.name)
        parent_id = node_id.rsplit(".", 1)[0]
        assert hop.parent.span_id == nodes[parent_id].context.span_id
    # one hop span per hand-over: none lost, none doubled (to_thread/run_in_executor
    # also pass through the pool patch)
    assert len(hand_over_spans(finished)) == len(runners)


@pytest.mark.parametrize("runner", sorted(HOP_PREFIX))
def test_depth_five_chain_of_one_runner(runner: str, exporter, tracer) -> None:
    """The deepest chain for each runner alone (hypothesis mixes them)."""
    ctxrelay.instrument()
    forest: tuple[Tree, ...] = ((runner, ()),)
    for _ in range(4):
        forest = ((runner, forest),)
    seen = run_forest(forest, tracer)
    leaf = "root" + ".0" * 5
    assert seen[leaf] == expected_paths(forest)[leaf]
    finished = exporter.get_finished_spans()
    assert len(hand_over_spans(finished)) == 5
    assert len([s for s in finished if s.name.startswith("node ")]) == 6
