"""How the shape of a queued task decides ctxrelay's cost on a busy pool (docs/performance.md).

Each variant replaces what ``ThreadPoolExecutor.submit`` builds (the module global
``concurrent.futures.thread._WorkItem``) in a fresh process, then measures:

* ``kept``: GC-tracked objects each queued task keeps alive;
* ``submit`` / ``run``: CPU ns per task with the single worker of a
  ``ThreadPoolExecutor(1)`` held while 5,000 tasks are submitted, then drained;
* ``pool8``: CPU ms of ``ThreadPoolExecutor(8)`` running 100k no-op tasks.

Usage: ``.venv/bin/python benchmarks/proposals/pool_variants.py [--passes 3]`` (about
40 s per pass); one variant alone: ``... --variant p5``.  Variants, in table order:

=========  ==============================================================================
bare       nothing
ctxrelay   ``ctxrelay.instrument(spans=False)`` as committed: since 05ed16c the copy rides in
           the work item's args (P2); P1, ``partial(Context.run, copy, fn)``, and the
           earlier ``partial(copy.run, fn)`` are in docs/performance.md and git history
p3         the copy stored on the work item, ``_WorkItem.run`` replaced by a plain function
p5         one snapshot shared while the submitter's context is unchanged, copied at run
floor      a wrapt wrapper that makes the copy and drops it at once (nothing kept)
otel       OpenTelemetry's ``ThreadingInstrumentor``
=========  ==============================================================================
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextvars import Context, copy_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANTS = ("bare", "ctxrelay", "p3", "p5", "floor", "otel")


def noop() -> None:
    return None


def install(variant: str) -> None:
    import concurrent.futures.thread as pool_module

    import wrapt

    original = pool_module._WorkItem
    if variant == "bare":
        return
    if variant == "otel":
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor

        ThreadingInstrumentor().instrument()
        return
    if variant == "floor":

        def copy_and_drop(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            copy_context()
            return wrapped(*args, **kwargs)

        pool_module._WorkItem = wrapt.FunctionWrapper(original, copy_and_drop, enabled=[True])
        return
    if variant in ("p3", "p5"):
        last: list[Context | None] = [None]

        def context_on_item(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            item = wrapped(*args, **kwargs)
            current = copy_context()
            if variant == "p5":
                snapshot = last[0]
                if snapshot is None or snapshot != current:
                    last[0] = snapshot = current
                current = snapshot
            item._ctxrelay_context = current
            return item

        pool_module._WorkItem = wrapt.FunctionWrapper(original, context_on_item, enabled=[True])
        original_run = original.run

        def run(self: Any, *args: Any) -> Any:
            try:
                context = self._ctxrelay_context
            except AttributeError:
                return original_run(self, *args)
            del self._ctxrelay_context
            if variant == "p5":
                context = context.copy()  # shared snapshot: every task its own copy
            return context.run(original_run, self, *args)

        original.run = run
        return

    import ctxrelay

    ctxrelay.instrument(spans=False, listener_spans=False)


def kept(n: int = 1000) -> float:
    with ThreadPoolExecutor(1) as pool:
        gate = threading.Event()
        pool.submit(gate.wait)
        gc.collect()
        before = len(gc.get_objects())
        futures = [pool.submit(noop) for _ in range(n)]
        gc.collect()
        count = (len(gc.get_objects()) - before - 1) / n
        gate.set()
    del futures
    return count


def queued(n: int) -> tuple[float, float]:
    with ThreadPoolExecutor(1) as pool:
        gate = threading.Event()
        pool.submit(gate.wait)
        submit = pool.submit
        last = None
        gc.collect()
        t0 = time.process_time_ns()
        for _ in range(n):
            last = submit(noop)
        t1 = time.process_time_ns()
        gate.set()
        last.result()  # type: ignore[union-attr]
        t2 = time.process_time_ns()
    return (t1 - t0) / n, (t2 - t1) / n


def pool8(n: int) -> float:
    gc.collect()
    t0 = time.process_time_ns()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(noop) for _ in range(n)]
        wait(futures)
    return (time.process_time_ns() - t0) / 1e6


def measure(variant: str) -> dict[str, float]:
    install(variant)
    queued(500)
    pool8(2000)
    runs = [queued(5000) for _ in range(5)]
    return {
        "kept": kept(),
        "submit": min(r[0] for r in runs),
        "run": min(r[1] for r in runs),
        "pool8": min(pool8(100_000) for _ in range(2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant)))
        return
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for number in range(args.passes):
        for variant in VARIANTS:  # interleaved: a burst of load hits every variant
            done = subprocess.run(
                [sys.executable, __file__, "--variant", variant],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            results[variant].append(json.loads(done.stdout))
            print(f"  pass {number + 1}: {variant}", file=sys.stderr, flush=True)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    print("| variant | kept alive per queued task | submit + run over bare | TPE(8) 100k, × bare |")
    print("|---|---:|---:|---:|")
    base = med("bare", "submit") + med("bare", "run")
    for variant in VARIANTS:
        extra = med(variant, "submit") + med(variant, "run") - base
        print(
            f"| {variant} | {med(variant, 'kept') - med('bare', 'kept'):+.0f} | {extra:+.0f} ns "
            f"| {med(variant, 'pool8') / med('bare', 'pool8'):.2f}× |"
        )


if __name__ == "__main__":
    main()
