"""Faults: fork, multiprocessing (fork), interpreter exit, instrument/uninstrument storms.

fork and exit run in their own interpreter (``fault_scenarios.py``), with a
``BatchSpanProcessor`` whose exporter appends one JSON line per span to a file, so each
span can be counted exactly once after every process is gone, and a hang shows as a
subprocess timeout instead of a stuck test run.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import Context, ContextVar, copy_context
from pathlib import Path
from typing import Any

import pytest

import ctxrelay
from helpers import baseline

SCENARIOS = Path(__file__).with_name("fault_scenarios.py")
TIMEOUT = 120  # seconds; each scenario takes well under 5 on a loaded 2-core machine


def run_scenario(
    name: str, tmp_path: Path, mode: str = "instrumented"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out = tmp_path / f"{name}.jsonl"
    done = subprocess.run(
        [sys.executable, str(SCENARIOS), name, str(out), mode],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,  # a deadlock fails here
        cwd=SCENARIOS.parent,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    spans = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    ids = [span["id"] for span in spans]
    assert len(ids) == len(set(ids)), "a span was exported twice"
    return report, spans


def names_by_pid(spans: list[dict[str, Any]]) -> dict[int, collections.Counter[str]]:
    found: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for span in spans:
        found[span["pid"]][span["name"]] += 1
    return found


# --- os.fork() -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "instrumented"])
def test_fork_while_work_is_handed_over(mode: str, tmp_path: Path) -> None:
    report, spans = run_scenario("fork", tmp_path, mode)
    assert report["child_status"] == 0, "the child ran its threads and pool, and exited"
    carried = "parent" if mode == "instrumented" else baseline("EMPTY", "parent")
    assert report["parent_seen"] == [carried, carried]
    by_pid = names_by_pid(spans)
    child = by_pid.pop(report["child_pid"])
    (parent,) = by_pid.values()
    background = report["background"]
    assert background > 0
    assert parent["bg"] == background
    assert parent["parent-root"] == 1
    assert child["child-root"] == 1
    # Spans queued in the parent when it forked are exported once, by the parent only.
    assert "bg" not in child and "parent-root" not in child
    if mode == "instrumented":
        assert parent["ThreadPoolExecutor get"] == background + 1  # + the probe's task
        assert sum(n for name, n in parent.items() if name.startswith("Thread ")) == 2
        assert child == {"child-root": 1, "Thread <lambda>": 1, "ThreadPoolExecutor get": 1}
    else:
        assert child == {"child-root": 1}


# --- multiprocessing with the fork start method ------------------------------------


def test_multiprocessing_fork_process_and_pool(tmp_path: Path) -> None:
    report, spans = run_scenario("mp_fork", tmp_path)
    # A forked Process inherits the forking thread's context (fork copies memory):
    # that is Python's doing; ctxrelay then carries it into the child's own threads.
    assert report["process_exit"] == 0
    assert report["process_seen"] == ["mp-parent", "mp-parent"]
    assert report["tasks_seen"] == [[f"task-{i}", f"task-{i}"] for i in range(4)]
    names = collections.Counter(span["name"] for span in spans)
    assert names["mp-root"] == names["mp-process"] == 1
    assert all(names[f"mp-task-{i}"] == 1 for i in range(4))
    # One thread hop and one pool hop per probe (the process and the four tasks).
    assert names["Thread <lambda>"] == names["ThreadPoolExecutor get"] == 5
    # The pool's own handler threads are exempt: no span, no pinned context.
    assert not [n for n in names if "_handle_" in n]


# --- interpreter exit with daemon threads still at work -------------------------------


def test_exit_with_running_daemon_threads_flushes_queued_spans(tmp_path: Path) -> None:
    report, spans = run_scenario("exit", tmp_path)  # exits on its own: no hang
    assert report == {"exiting": True}
    names = collections.Counter(span["name"] for span in spans)
    assert names["exit-root"] == 1
    assert names["ThreadPoolExecutor <lambda>"] == 20
    loops = [span for span in spans if span["name"] == "daemon-loop"]
    assert len(loops) >= 4 * 6, "spans queued before exit were flushed"
    # A finished daemon-loop span joined its thread first: that hop span is there too.
    hops = collections.Counter(
        span["parent"] for span in spans if span["name"] == "Thread short_work"
    )
    assert all(hops[loop["id"]] == 1 for loop in loops)
    assert names["Thread short_work"] >= 20 + len(loops)


# --- instrument()/uninstrument() toggled while work is handed over ---------------------

VAR: ContextVar[str] = ContextVar("toggle_var", default="EMPTY")


def _hook_points() -> dict[str, Any]:
    import asyncio.base_events
    import concurrent.futures.thread as pool_module

    points = {
        "_WorkItem": pool_module._WorkItem,
        "BaseEventLoop.run_in_executor": asyncio.base_events.BaseEventLoop.__dict__[
            "run_in_executor"
        ],
    }
    for name in ("_start_new_thread", "_start_joinable_thread"):  # 3.10-3.12 / 3.13+
        if hasattr(threading, name):
            points[f"threading.{name}"] = getattr(threading, name)
    return points


class Origin(threading.Thread):
    """Keeps handing work over (pool tasks, threads, run_in_executor) until told to stop."""

    def __init__(self, number: int, pool: ThreadPoolExecutor, stop: threading.Event) -> None:
        super().__init__(name=f"origin-{number}")
        self.number, self.pool, self.stop = number, pool, stop
        self.futures: list[Future[str]] = []
        self.thread_seen: list[str] = []
        self.threads = 0

    def run(self) -> None:
        for i in range(100_000):  # bounded; stop comes much sooner
            if self.stop.is_set():
                return
            VAR.set(f"{self.name}-{i}")
            self.futures.append(self.pool.submit(VAR.get))
            if i % 10 == 0:
                thread = threading.Thread(target=lambda: self.thread_seen.append(VAR.get()))
                thread.start()
                self.threads += 1
                thread.join()
            if i % 50 == 0:
                self.thread_seen.append(asyncio.run(self._via_executor()))
                self.threads += 1

    async def _via_executor(self) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, VAR.get)


def _start_all_workers(pool: ThreadPoolExecutor, workers: int) -> None:
    barrier = threading.Barrier(workers + 1)
    # Each submit finds no idle worker (they all wait here) and starts a new one.
    blocked = [Context().run(pool.submit, barrier.wait, TIMEOUT) for _ in range(workers)]
    barrier.wait(TIMEOUT)
    for future in blocked:
        future.result(TIMEOUT)


def test_toggling_a_thousand_times_under_load(monkeypatch) -> None:
    originals = _hook_points()
    crashes: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    stop = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        # All 4 workers start now, in empty contexts: under thread_inherit_context=1 a
        # worker started while ctxrelay is off would keep a copy of the origin whose
        # submit started it (the stale snapshot tests/test_load.py shows), for every task.
        _start_all_workers(pool, 4)
        origins = [Origin(n, pool, stop) for n in range(3)]
        for origin in origins:
            origin.start()
        for _ in range(1_000):
            ctxrelay.instrument()
            _let_work_happen(origins)
            ctxrelay.uninstrument()
            _let_work_happen(origins)
        stop.set()
        for origin in origins:
            origin.join()

    assert not crashes
    tasks = 0
    outcomes: collections.Counter[str] = collections.Counter()
    for origin in origins:
        tasks += len(origin.futures)
        for i, future in enumerate(origin.futures):
            # Each task ran once, with no error; it saw its own value or, while
            # ctxrelay was off, nothing: never another origin's or task's value.
            seen = future.result(timeout=0)
            assert seen in (f"{origin.name}-{i}", "EMPTY")
            outcomes["EMPTY" if seen == "EMPTY" else "carried"] += 1
        assert len(origin.thread_seen) == origin.threads
        assert all(
            seen == "EMPTY" or seen.startswith(f"{origin.name}-") for seen in origin.thread_seen
        )
    assert outcomes["carried"] and outcomes["EMPTY"], "work was handed over in both states"
    print(
        f"\n[faults] 1000 toggles with {tasks} pool tasks ({dict(outcomes)}) and "
        f"{sum(o.threads for o in origins)} threads/executor calls in flight"
    )

    assert _hook_points() == originals
    assert all(_hook_points()[k] is v for k, v in originals.items()), "the very same objects"
    # Off means off (no wrapper left switched on), and a last instrument() still works.
    assert copy_context().run(_carried) == "EMPTY"
    ctxrelay.instrument()
    assert copy_context().run(_carried) == "set"
    ctxrelay.uninstrument()
    assert all(_hook_points()[k] is v for k, v in originals.items())


def _let_work_happen(origins: list[Origin]) -> None:
    """Wait (bounded) until some origin handed more work over: each on/off phase sees work."""
    before = sum(len(o.futures) for o in origins)
    for _ in range(10_000):
        time.sleep(0)
        if sum(len(o.futures) for o in origins) > before:
            return


def _carried() -> str:
    VAR.set("set")
    with ThreadPoolExecutor(1) as pool:
        # The worker starts in an empty context (started by the submit below, it would
        # copy this one on 3.14 with thread_inherit_context=1): only ctxrelay carries.
        _start_all_workers(pool, 1)
        return pool.submit(VAR.get).result()
