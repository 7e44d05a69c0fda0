"""Cost of carrying 3 small declared ContextVars across processes, side by side with bare.

Two scenarios, each run in one process with the configurations interleaved round by
round (the order rotating each round, a warm-up after each switch), so a burst of load
on the shared machine hits all alike:

* ``ProcessPoolExecutor(1, spawn)``: ``submit(noop).result()`` round trip, bare, with
  ctxrelay and nothing declared (the control: what instrumenting alone does to the
  round trip's wake-ups), and with 3 declared variables.  The same round trip counted
  in instructions, both processes, is ``instructions.py --only process_round_trip``:
  a figure the machine's scheduling cannot move.
* Celery: ``noop.delay().get()`` round trip through a real ``redis-server`` (started
  here on 127.0.0.1, no persistence) and a real ``celery worker -P solo``; the worker
  has ctxrelay active (``CTXRELAY_ENABLED=1``, the 3 variables declared) for the
  carried configuration and is plain for bare: two workers, one queue each.

Prints the median per-round round trip of each configuration and the overhead as a
share of the bare round trip (target: under 5%).  No spans are recorded (no active
span at submit): this is the cost of the carrier itself.  Usage:
``python benchmarks/processes.py [--rounds N] [--per-round N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ctxrelay

#: The declared variables live in a small module both sides import by name.
VARS_MODULE = "import contextvars\nA, B, C = (contextvars.ContextVar(n) for n in 'abc')\n"
DECLARED = ["bench_vars:A", "bench_vars:B", "bench_vars:C"]
WORKDIR = Path(tempfile.mkdtemp(prefix="ctxrelay-bench-"))


def noop() -> None:
    return None


class OneSlot:
    """The cheapest picklable wrapper of a callable, carrying nothing: one slot and a
    two-item ``__reduce__`` (``instructions.py --only task_pickle,task_unpickle``)."""

    __slots__ = ("fn",)

    def __init__(self, fn: object) -> None:
        self.fn = fn

    def __reduce__(self) -> tuple[object, ...]:
        return (OneSlot, (self.fn,))


def _set_small_values() -> None:
    (WORKDIR / "bench_vars.py").write_text(VARS_MODULE)
    sys.path.insert(0, str(WORKDIR))
    import bench_vars

    bench_vars.A.set("req-0123456789")
    bench_vars.B.set("tenant-acme")
    bench_vars.C.set(42)


def _rounds(run_bare, run_carried, rounds: int, per_round: int) -> tuple[float, float, float]:
    bare, carried, diffs = [], [], []
    for index in range(rounds):
        pair = (run_bare, run_carried) if index % 2 == 0 else (run_carried, run_bare)
        first, second = (run(per_round) for run in pair)
        b, c = (first, second) if index % 2 == 0 else (second, first)
        bare.append(b)
        carried.append(c)
        diffs.append(c - b)
    return statistics.median(bare), statistics.median(carried), statistics.median(diffs)


def bench_process_pool(rounds: int, per_round: int) -> dict[str, float]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(noop).result()  # worker started

        def timed(n: int) -> float:
            for _ in range(20):  # after a switch: the pool's threads and caches settle
                pool.submit(noop).result()
            start = time.perf_counter_ns()
            for _ in range(n):
                pool.submit(noop).result()
            return (time.perf_counter_ns() - start) / n / 1e3

        configurations = {
            "bare": lambda: ctxrelay.uninstrument(),
            "nothing declared": lambda: ctxrelay.instrument(process_vars=[], spans=False),
            "carried": lambda: ctxrelay.instrument(process_vars=DECLARED, spans=False),
        }
        names = list(configurations)
        times: dict[str, list[float]] = {name: [] for name in names}
        try:
            for index in range(rounds):
                for name in names[index % 3 :] + names[: index % 3]:
                    ctxrelay.uninstrument()
                    configurations[name]()
                    times[name].append(timed(per_round))
        finally:
            ctxrelay.uninstrument()
    out = {name: statistics.median(values) for name, values in times.items()}
    for name in names[1:]:
        out[f"{name} - bare"] = statistics.median(
            [c - b for c, b in zip(times[name], times["bare"], strict=True)]
        )
    return out


CELERY_APP = textwrap.dedent(
    """
    import os
    from celery import Celery
    app = Celery("bench", broker=os.environ["BENCH_REDIS"], backend=os.environ["BENCH_REDIS"])
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                    broker_connection_retry_on_startup=True, worker_prefetch_multiplier=1)

    @app.task(name="noop")
    def noop():
        return None
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_celery(rounds: int, per_round: int) -> tuple[float, float, float] | str:
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(redis_server):
        return "skipped: redis-server is not installed (make redis)"
    try:
        import celery  # noqa: F401
    except ImportError:
        return "skipped: celery is not installed (the frameworks extra)"
    workdir = WORKDIR
    (workdir / "bench_celery_app.py").write_text(CELERY_APP)
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    workers = []
    try:
        time.sleep(0.5)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CTXRELAY_", "OTEL_"))}
        env.update(BENCH_REDIS=url, PYTHONPATH=str(workdir), OTEL_TRACES_EXPORTER="none")
        celery_bin = str(Path(sys.executable).parent / "celery")
        for queue, extra in (
            ("bare", {}),
            ("carried", {"CTXRELAY_ENABLED": "1", "CTXRELAY_PROCESS_VARS": ",".join(DECLARED)}),
        ):  # fmt: skip
            log = open(workdir / f"{queue}.log", "wb")
            workers.append(
                (subprocess.Popen(
                    [celery_bin, "-A", "bench_celery_app", "worker", "-P", "solo", "-Q", queue,
                     "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
                     "-n", f"{queue}@%h"],
                    cwd=workdir, env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT,
                ), log, workdir / f"{queue}.log")
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not all(b"ready." in path.read_bytes() for _, _, path in workers):
            if time.monotonic() > deadline:
                return "failed: the celery workers did not start"
            time.sleep(0.1)
        os.environ["BENCH_REDIS"] = url
        import bench_celery_app

        task = bench_celery_app.noop

        def timed(queue: str, n: int) -> float:
            start = time.perf_counter_ns()
            for _ in range(n):
                task.apply_async(queue=queue).get(timeout=30)
            return (time.perf_counter_ns() - start) / n / 1e3

        def bare(n: int) -> float:
            ctxrelay.uninstrument()
            return timed("bare", n)

        def carried(n: int) -> float:
            ctxrelay.instrument(process_vars=DECLARED, spans=False)
            return timed("carried", n)

        timed("bare", 5)
        timed("carried", 5)
        try:
            return _rounds(bare, carried, rounds, per_round)
        finally:
            ctxrelay.uninstrument()
    finally:
        for proc, log, _ in workers:
            proc.terminate()
            proc.wait(30)
            log.close()
        redis.terminate()
        redis.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args()
    _set_small_values()
    print("Crossing processes: 3 small declared ContextVars, round trip per task (median)")
    print(f"load average (1, 5, 15 min) at the start: {os.getloadavg()}")
    pool = bench_process_pool(args.rounds, args.per_round)
    celery = bench_celery(args.rounds, args.per_round // 2)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    bare = pool["bare"]
    print(
        f"\n{'ProcessPoolExecutor(1, spawn) submit(noop).result()':<56}"
        f" {'round trip':>12} {'- bare':>10}"
    )
    for name in ("bare", "nothing declared", "carried"):
        extra = "" if name == "bare" else f"{pool[name + ' - bare'] / bare * 100:>+9.1f}%"
        print(f"  {name:<54} {pool[name]:>10.1f}µs {extra}")
    round_share = pool["carried - bare"] / bare * 100
    verdict = "target met" if round_share < 5 else "target (<5%) missed"
    print(f"  round trip, carried vs bare: {round_share:+.1f}%  ({verdict})")
    name = "Celery solo worker, delay().get() (Redis)"
    if isinstance(celery, str):
        print(f"\n{name:<56} {celery}")
    else:
        bare_c, carried_c, diff = celery
        share = diff / bare_c * 100
        verdict = "target met" if share < 5 else "target (<5%) missed"
        print(
            f"\n{name:<56} bare {bare_c:.1f}µs carried {carried_c:.1f}µs {share:+.1f}%  ({verdict})"
        )
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
