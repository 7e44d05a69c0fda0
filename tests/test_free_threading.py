"""Free-threaded CPython (3.14t): ctxrelay keeps the GIL off, and concurrent hand-overs
from many threads at once lose and mix nothing.

The GIL check runs on free-threaded builds only; the stress test runs everywhere (with
the GIL it is the same workload, only less parallel).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import Context, ContextVar, copy_context
from dataclasses import dataclass, field

import pytest

import ctxrelay
from helpers import FREE_THREADED

TIMEOUT = 60
FREE_THREADED_BUILD = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

# What a fresh interpreter reports: the GIL before and after ctxrelay is in use.
GIL_PROBE = """
import sys
before = sys._is_gil_enabled()
import ctxrelay
imported = sys._is_gil_enabled()
ctxrelay.instrument()
import asyncio, concurrent.futures, multiprocessing.pool, socketserver
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(2) as pool:
    pool.submit(int).result()
instrumented = sys._is_gil_enabled()
print(before, imported, instrumented)
"""


@pytest.mark.skipif(not FREE_THREADED_BUILD, reason="needs a free-threaded build (3.13t/3.14t)")
def test_the_gil_stays_disabled_after_import_and_instrument() -> None:
    # PYTHON_GIL=1 (or -X gil=1) would force it on: the probe runs without either.
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    env.update(OTEL_SDK_DISABLED="true", CTXRELAY_ENABLED="0")
    done = subprocess.run(
        [sys.executable, "-c", GIL_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # A C extension that does not declare free-threading support re-enables the GIL at
    # import, with a RuntimeWarning naming it: none of ctxrelay's dependencies may.
    assert "GIL" not in done.stderr, done.stderr
    assert done.stdout.split() == ["False", "False", "False"]
    if os.environ.get("PYTHON_GIL") != "1":
        # And in this very process, after the whole suite's imports so far.
        ctxrelay.instrument()
        assert FREE_THREADED and not sys._is_gil_enabled()


# --- stress: 8 origins handing work over at once -----------------------------------------

ORIGIN: ContextVar[int] = ContextVar("ft_origin")
ITEM: ContextVar[int] = ContextVar("ft_item")
#: Set inside each piece of work: a later piece on the same worker must not see it.
LEFTOVER: ContextVar[int] = ContextVar("ft_leftover")

ORIGINS = 8
ITEMS = 150  # per origin and way of handing over
WAYS = ("thread", "pool", "bind")


@dataclass
class Tally:
    """Shared by every thread: counted under a lock (no GIL to make ``+=`` safe)."""

    runs: dict[tuple[str, int, int], int] = field(default_factory=dict)
    lost: int = 0
    mixed: int = 0
    leftovers: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, way: str, origin: int, item: int) -> None:
        seen_origin, seen_item = ORIGIN.get(None), ITEM.get(None)
        leftover = LEFTOVER.get(None) is not None
        LEFTOVER.set(item)
        with self.lock:
            key = (way, origin, item)
            self.runs[key] = self.runs.get(key, 0) + 1
            if seen_origin is None or seen_item is None:
                self.lost += 1
            elif (seen_origin, seen_item) != (origin, item):
                self.mixed += 1
            if leftover:
                self.leftovers += 1


def _origin(
    origin: int,
    ways: tuple[str, ...],
    pool: ThreadPoolExecutor,
    tally: Tally,
    go: threading.Barrier,
) -> None:
    ORIGIN.set(origin)
    go.wait(TIMEOUT)  # all origins hand over at the same time
    threads: list[threading.Thread] = []
    futures: list[Future[None]] = []
    bound: list[Callable[[], None]] = []
    for item in range(ITEMS):
        ITEM.set(item)
        if "thread" in ways:
            thread = threading.Thread(target=tally.record, args=("thread", origin, item))
            thread.start()
            threads.append(thread)
        if "pool" in ways:
            futures.append(pool.submit(tally.record, "pool", origin, item))
        if "bind" in ways:
            bound.append(ctxrelay.bind(lambda item=item: tally.record("bind", origin, item)))
    # Bound callables run later, from the pool and from other threads: each call in a
    # fresh copy of what bind() captured.
    futures.extend(pool.submit(Context().run, fn) for fn in bound)
    for thread in threads:
        thread.join(TIMEOUT)
    for future in futures:
        future.result(TIMEOUT)


def _stress(ways: tuple[str, ...]) -> Tally:
    tally = Tally()
    go = threading.Barrier(ORIGINS)
    with ThreadPoolExecutor(8) as pool:
        # Every worker starts now, in an empty context, before any origin submits: what
        # tasks see then depends on the hand-over alone, on every interpreter and flag.
        ready = threading.Barrier(9)
        warm = [Context().run(pool.submit, ready.wait, TIMEOUT) for _ in range(8)]
        ready.wait(TIMEOUT)
        for future in warm:
            future.result(TIMEOUT)
        origins = [
            threading.Thread(target=copy_context().run, args=(_origin, n, ways, pool, tally, go))
            for n in range(ORIGINS)
        ]
        for thread in origins:
            thread.start()
        for thread in origins:
            thread.join(TIMEOUT)
            assert not thread.is_alive()
    return tally


def test_eight_threads_handing_work_over_at_once_lose_and_mix_nothing() -> None:
    # Without ctxrelay the pool's workers (started empty) run every task in their own
    # context: nothing arrives, and each task sees what the previous one left.
    without = _stress(("pool",))
    assert without.lost == ORIGINS * ITEMS
    assert without.leftovers >= ORIGINS * ITEMS - 8
    assert set(without.runs.values()) == {1}

    ctxrelay.instrument(spans=False)
    with_ = _stress(WAYS)
    expected = {(w, o, i) for w in WAYS for o in range(ORIGINS) for i in range(ITEMS)}
    assert set(with_.runs) == expected, "every piece of work ran"
    assert set(with_.runs.values()) == {1}, "and exactly once"
    assert (with_.lost, with_.mixed, with_.leftovers) == (0, 0, 0)


def test_the_same_with_hop_spans_recorded(tracer, exporter) -> None:
    ctxrelay.instrument()
    with tracer.start_as_current_span("request"):
        tally = copy_context().run(_stress, WAYS)
    assert set(tally.runs.values()) == {1}
    assert len(tally.runs) == len(WAYS) * ORIGINS * ITEMS
    assert (tally.lost, tally.mixed, tally.leftovers) == (0, 0, 0)
    hops = [s for s in exporter.get_finished_spans() if s.name != "request"]
    (request,) = [s for s in exporter.get_finished_spans() if s.name == "request"]
    # One hop per thread and per pool task (bind is not a hop; the warm-up is under no
    # span, and the origins' own threads are started outside the request's context).
    assert {s.context.trace_id for s in hops} == {request.context.trace_id}
    assert len(hops) >= 2 * ORIGINS * ITEMS
