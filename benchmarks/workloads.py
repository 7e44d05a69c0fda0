"""One repetition of every benchmark scenario, under ONE configuration, in this process.

Run by ``benchmarks/run.py`` as a fresh subprocess per (configuration, repetition):
instrumentation is process-global (ctxrelay and OpenTelemetry's threading instrumentor
both patch ``threading`` and ``concurrent.futures`` in place), so a clean process per
configuration is the only way to be sure nothing of another configuration is left.

Prints one JSON object: ``<scenario>.cpu``/``<scenario>.wall`` -> nanoseconds per
operation (per run for ``pool8``), plus ``pool8.gc`` (ns in the cyclic GC) and ``kept``
(GC-tracked objects kept alive per queued task).

Configurations (every one installs the same SDK ``TracerProvider`` with a
``BatchSpanProcessor`` and an exporter that drops everything, and runs the workloads
inside a root span, so the only difference between them is the instrumentation):

* ``bare``      nothing instrumented;
* ``off``       ``ctxrelay.instrument(spans=False)``: propagation only;
* ``sampled``   ``ctxrelay.instrument(spans=True)`` under a sampled root: a hop span
                per task;
* ``unsampled`` ``ctxrelay.instrument(spans=True)`` under an unsampled root
                (``ParentBased(ALWAYS_OFF)`` root sampler): no hop span may be made;
* ``otel``      ``opentelemetry-instrumentation-threading``'s ``ThreadingInstrumentor``;
* ``doctor``    ``off`` with the context-loss doctor on (``CTXRELAY_DOCTOR`` set to a
                JSON file in a temporary directory): ``off`` is the same code with
                the doctor off.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

CONFIGS = ("bare", "off", "sampled", "unsampled", "otel", "doctor")

#: Operation counts at --scale 1.0 (the full run); --quick scales them down.
COUNTS = {
    "queued": 5_000,
    "round_trip": 2_000,
    "pool8": 100_000,
    "threads": 300,
    "sdk_span": 5_000,
}

#: The attributes a hop span carries (same keys and value types as ctxrelay.spans),
#: for the like-for-like SDK baseline.
_HOP_LIKE_ATTRIBUTES = {
    "ctxrelay.runner": "ThreadPoolExecutor",
    "code.function.name": "workloads.noop",
    "thread.id": 140000000000000,
    "thread.name": "ThreadPoolExecutor-0_0",
    "ctxrelay.origin.thread.id": 140000000000001,
    "ctxrelay.origin.thread.name": "MainThread",
    "ctxrelay.queue.wait_ms": 0.012,
    "ctxrelay.context.vars": 3,
}


class DroppingExporter(SpanExporter):
    """Accepts every batch and keeps nothing: the export costs as little as possible."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def noop() -> None:
    return None


def setup(config: str, preload: Sequence[str] = ()) -> tuple[TracerProvider, trace.Tracer]:
    sampler = ParentBased(ALWAYS_OFF if config == "unsampled" else ALWAYS_ON)
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    trace.set_tracer_provider(provider)
    if config in ("off", "sampled", "unsampled", "doctor"):
        import os
        import runpy
        import tempfile

        import ctxrelay

        for path in preload:  # a proposed change, monkeypatched in before instrument()
            runpy.run_path(path, run_name="ctxrelay_bench_preload")

        if config == "doctor":
            os.environ["CTXRELAY_DOCTOR"] = os.path.join(tempfile.mkdtemp(), "report.json")
        ctxrelay.instrument(spans=config not in ("off", "doctor"), listener_spans=False)
    elif config == "otel":
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor

        ThreadingInstrumentor().instrument()
    return provider, trace.get_tracer("ctxrelay.benchmarks")


class Clock:
    """Wall and process-CPU nanoseconds of one timed section.

    CPU time of this process (all its threads) is what the instrumentation really
    costs and is mostly immune to other processes taking the cores of a shared
    machine; wall time is what a user waits.  Both are kept.
    """

    __slots__ = ("_cpu0", "_wall0", "cpu", "wall")

    def __enter__(self) -> Clock:
        gc.collect()
        self._wall0 = time.perf_counter_ns()
        self._cpu0 = time.process_time_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time_ns() - self._cpu0
        self.wall = time.perf_counter_ns() - self._wall0


# --- scenarios: each returns the Clock(s) of its timed part ------------------------


def queued(n: int) -> tuple[Clock, Clock]:
    """(submit, run) clocks for n tasks on ThreadPoolExecutor(1), measured apart.

    The single worker is held on an Event while the n tasks are submitted, so the
    submit loop has the GIL to itself (submit-side cost: wrappers, capture,
    allocation); then the worker is released and runs them all while the caller waits
    on the last future (worker-side cost: entering the carried context, the hop span).
    """
    with ThreadPoolExecutor(1) as pool:
        gate = threading.Event()
        pool.submit(gate.wait)
        submit = pool.submit
        last = None
        with Clock() as submitting:
            for _ in range(n):
                last = submit(noop)
        with Clock() as running:
            gate.set()
            last.result()  # type: ignore[union-attr]
    return submitting, running


def round_trip(n: int) -> Clock:
    """n times ``submit(noop).result()`` on ThreadPoolExecutor(1): latency per hop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(noop).result()  # the worker thread exists before timing starts
        submit = pool.submit
        with Clock() as clock:
            for _ in range(n):
                submit(noop).result()
    return clock


def pool8(n: int) -> tuple[Clock, int]:
    """ThreadPoolExecutor(8): submit n no-op tasks, wait for all, shut down.

    Also returns the ns spent in the cyclic garbage collector meanwhile: the caller
    outruns the workers, so most tasks sit in the queue, and whatever an
    instrumentation keeps alive per queued task is traversed by every collection.
    """
    in_gc = [0, 0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            in_gc[1] = time.perf_counter_ns()
        else:
            in_gc[0] += time.perf_counter_ns() - in_gc[1]

    with Clock() as clock:
        gc.callbacks.append(on_gc)
        try:
            with ThreadPoolExecutor(8) as pool:
                submit = pool.submit
                futures = [submit(noop) for _ in range(n)]
                wait(futures)
        finally:
            gc.callbacks.remove(on_gc)
    del futures
    return clock, in_gc[0]


def kept_per_task(n: int) -> float:
    """Objects tracked by the garbage collector that each queued task keeps alive."""
    with ThreadPoolExecutor(1) as pool:
        gate = threading.Event()
        pool.submit(gate.wait)
        gc.collect()
        before = len(gc.get_objects())
        futures = [pool.submit(noop) for _ in range(n)]
        gc.collect()
        kept = (len(gc.get_objects()) - before - 1) / n  # - 1: the list itself
        gate.set()
    del futures
    return kept


def threads(n: int) -> Clock:
    """n times ``Thread(target=noop).start(); join()``."""
    with Clock() as clock:
        for _ in range(n):
            thread = threading.Thread(target=noop)
            thread.start()
            thread.join()
    return clock


def sdk_span(tracer: trace.Tracer, n: int) -> Clock:
    """The SDK's own cost: ``tracer.start_span("x").end()`` (the target's yardstick)."""
    start_span = tracer.start_span
    with Clock() as clock:
        for _ in range(n):
            start_span("x").end()
    return clock


def sdk_span_like_hop(tracer: trace.Tracer, n: int) -> Clock:
    """What a hop span does with the SDK alone: 8 attributes, made current, ended."""
    from opentelemetry import context as otel_context

    start_span = tracer.start_span
    attach, detach = otel_context.attach, otel_context.detach
    set_span_in_context = trace.set_span_in_context
    internal = trace.SpanKind.INTERNAL
    with Clock() as clock:
        for _ in range(n):
            attributes = dict(_HOP_LIKE_ATTRIBUTES)
            span = start_span("ThreadPoolExecutor noop", kind=internal, attributes=attributes)
            token = attach(set_span_in_context(span))
            detach(token)
            span.end()
    return clock


class Results:
    """Best (lowest) per-operation time of each scenario over this process's repeats.

    The minimum of several short runs is the least disturbed by other processes; the
    orchestrator then takes the median of these over processes (repetitions).
    """

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def add(self, name: str, clock: Clock, per: int) -> None:
        for kind, ns in (("wall", clock.wall), ("cpu", clock.cpu)):
            key = f"{name}.{kind}"
            value = ns / per
            self.values[key] = min(self.values.get(key, value), value)

    def add_sum(self, name: str, a: Clock, b: Clock, per: int) -> None:
        for kind in ("wall", "cpu"):
            key = f"{name}.{kind}"
            value = (getattr(a, kind) + getattr(b, kind)) / per
            self.values[key] = min(self.values.get(key, value), value)


def run(config: str, scale: float, repeats: int, preload: Sequence[str] = ()) -> dict[str, float]:
    provider, tracer = setup(config, preload)
    counts = {key: max(1, int(value * scale)) for key, value in COUNTS.items()}
    results = Results()
    with tracer.start_as_current_span("benchmark root"):
        # Warm-up: first calls resolve lazy imports, caches and the proxy tracer.
        queued(200)
        round_trip(100)
        threads(10)
        sdk_span(tracer, 200)
        sdk_span_like_hop(tracer, 200)
        for _ in range(repeats):
            n = counts["queued"]
            submitting, running = queued(n)
            results.add("submit", submitting, n)
            results.add("run", running, n)
            results.add_sum("submit+run", submitting, running, n)
            results.add("round_trip", round_trip(counts["round_trip"]), counts["round_trip"])
            results.add("thread", threads(counts["threads"]), counts["threads"])
            results.add("sdk_span", sdk_span(tracer, counts["sdk_span"]), counts["sdk_span"])
            results.add(
                "sdk_span_like_hop",
                sdk_span_like_hop(tracer, counts["sdk_span"]),
                counts["sdk_span"],
            )
        # One long run: it is the end-to-end figure, and long enough to average itself.
        clock, in_gc = pool8(counts["pool8"])
        results.add("pool8", clock, 1)
        results.values["pool8.gc"] = in_gc
        results.values["kept"] = kept_per_task(1000)
    provider.shutdown()
    return results.values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=CONFIGS)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    parser.add_argument("--repeats", type=int, default=5, help="best-of-N for short scenarios")
    parser.add_argument(
        "--preload", action="append", default=[], help="run this file before instrument()"
    )
    args = parser.parse_args(argv)
    results = run(args.config, args.scale, args.repeats, args.preload)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
