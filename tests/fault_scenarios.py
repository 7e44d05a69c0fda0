"""Scenarios that must run in their own interpreter (``tests/test_faults.py`` starts them).

``python fault_scenarios.py <scenario> <spans.jsonl> [instrumented|plain]``

Each scenario installs a real SDK ``TracerProvider`` with a ``BatchSpanProcessor`` whose
exporter appends one JSON line per span to a file (with the exporting pid), so a test
can count every span exactly once after the process (and its children) are gone.  The
batch delay is long on purpose: spans are still queued, unexported, when the process
forks or exits, which is the case under test.
"""

from __future__ import annotations

import contextvars
import json
import multiprocessing
import os
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import ctxrelay

# 3.12+ warns that fork() in a multi-threaded process may deadlock: that is the test.
warnings.simplefilter("ignore", DeprecationWarning)

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("fault_var", default="EMPTY")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.devnull
INSTRUMENTED = (sys.argv[3] if len(sys.argv) > 3 else "instrumented") == "instrumented"


class FileExporter(SpanExporter):
    """One JSON line per span; append mode so forked children share the file safely."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "name": span.name,
                    "id": span.context.span_id,
                    "parent": span.parent.span_id if span.parent else None,
                }
            )
            + "\n"
            for span in spans
        )
        with open(OUT, "a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(FileExporter(), schedule_delay_millis=60_000))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("ctxrelay.faults")
if INSTRUMENTED:
    ctxrelay.instrument()


def probe() -> list[str]:
    """What a thread and a pool task started here see of ``VAR``."""
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(VAR.get()))
    thread.start()
    thread.join()
    with ThreadPoolExecutor(2) as pool:
        seen.append(pool.submit(VAR.get).result())
    return seen


def report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# --- os.fork() ----------------------------------------------------------------------


def background_load(stop: threading.Event, started: threading.Event, counts: list[int]) -> None:
    """Keep handing work over (threads and pool tasks, under spans) while we fork."""
    with ThreadPoolExecutor(2) as pool:
        for i in range(5_000):
            if stop.is_set():
                break
            with tracer.start_as_current_span("bg"):
                VAR.set(f"bg-{i}")
                pool.submit(VAR.get).result()
                counts[0] += 1
            started.set()


def scenario_fork() -> None:
    VAR.set("parent")
    stop, started, counts = threading.Event(), threading.Event(), [0]
    load = threading.Thread(target=background_load, args=(stop, started, counts))
    with tracer.start_as_current_span("parent-root"):
        load.start()
        parent_seen = probe()
        started.wait(30)
        pid = os.fork()
        if pid == 0:  # the child: only this thread exists here
            ok = False
            try:
                VAR.set("child")
                with tracer.start_as_current_span("child-root"):
                    child_seen = probe()
                provider.shutdown()  # flush the child's own spans
                # Uninstrumented, a new thread sees nothing, unless 3.14's start() copies
                # (thread_inherit_context=1; the pool's worker starts in the submit).
                lost = "child" if getattr(sys.flags, "thread_inherit_context", 0) else "EMPTY"
                ok = child_seen == (["child", "child"] if INSTRUMENTED else [lost, lost])
                with open(OUT + ".child", "w", encoding="utf-8") as out:
                    json.dump({"seen": child_seen}, out)
            finally:
                os._exit(0 if ok else 3)
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    stop.set()
    load.join()
    provider.shutdown()
    report(parent_seen=parent_seen, child_status=status, background=counts[0], child_pid=pid)


# --- multiprocessing, fork start method ----------------------------------------------


def mp_task(index: int) -> list[str]:
    VAR.set(f"task-{index}")
    with tracer.start_as_current_span(f"mp-task-{index}"):
        seen = probe()
    # Pool workers leave through os._exit (no atexit): flushing is the task's job,
    # as with any SDK in forked workers.
    provider.force_flush()
    return seen


def mp_process(queue: Any) -> None:
    with tracer.start_as_current_span("mp-process"):
        seen = probe()
    provider.force_flush()
    queue.put(seen)


def scenario_mp_fork() -> None:
    context = multiprocessing.get_context("fork")
    VAR.set("mp-parent")
    with tracer.start_as_current_span("mp-root"):
        queue = context.Queue()
        process = context.Process(target=mp_process, args=(queue,))
        process.start()
        process_seen = queue.get(timeout=60)
        process.join(60)
        with context.Pool(2) as pool:
            tasks_seen = pool.map_async(mp_task, range(4)).get(timeout=60)
    provider.shutdown()
    report(process_seen=process_seen, process_exit=process.exitcode, tasks_seen=tasks_seen)


# --- interpreter exit with daemon threads still running -------------------------------


def short_work() -> str:
    with tracer.start_as_current_span("short"):
        return VAR.get()


def forever(ready: threading.Barrier) -> None:
    for i in range(1_000_000):  # bounded; the interpreter's exit stops it long before
        with tracer.start_as_current_span("daemon-loop"):
            thread = threading.Thread(target=short_work, daemon=True)
            thread.start()
            thread.join()
        if i == 5:
            ready.wait()  # some daemon spans are queued before the main thread exits


def scenario_exit() -> None:
    VAR.set("exit")
    with tracer.start_as_current_span("exit-root"):
        for _ in range(20):
            thread = threading.Thread(target=short_work)
            thread.start()
            thread.join()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: short_work(), range(20)))
        ready = threading.Barrier(5)
        for _ in range(4):
            threading.Thread(target=forever, args=(ready,), daemon=True).start()
        ready.wait()
    report(exiting=True)
    # Fall off the end: the SDK's atexit hook must flush the queue while the daemon
    # threads (instrumented) are still starting threads and ending spans.


if __name__ == "__main__":
    {"fork": scenario_fork, "mp_fork": scenario_mp_fork, "exit": scenario_exit}[sys.argv[1]]()
