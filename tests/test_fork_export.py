"""A forked child exports its spans even when the fork lands in the parent's export.

An export runs in the batch processor's thread and takes locks on its way (an import's
module lock: ``requests`` imports ``netrc`` on its first request; the HTTP pool's).  A
child forked while the parent's export holds one inherits it held by a thread that does
not exist in the child: the child's own export then blocks for ever.  Under start-up
activation that lost a pool worker's hop span, and, with the worker's exit flush waiting
on that export, hung ``Pool.terminate``.  Real processes, real ``os.fork``: the SDK's
own ``BatchSpanProcessor`` first (the loss), then ctxrelay's start-up processor.

Second part: a worker whose exporter never answers is still ended by
``Pool.terminate`` (its exit flush is bounded), bare and activated alike.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from activation_support import base_env, run

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

TESTS = Path(__file__).resolve().parent

# The scripts' end: the forked child ends a span and flushes (bounded); the parent
# reports the child's exit status.
_CHILD_EXPORTS = """\
if pid == 0:
    with tracer.start_as_current_span("child"):
        pass
    done = threading.Event()
    threading.Thread(target=lambda: (provider.force_flush(), done.set()), daemon=True).start()
    exported = done.wait(10) and "child" in exporter.names
    os.write(1, f"CHILD exported={exported}\\n".encode())
    os._exit(0)
"""
_PARENT_REPORTS = """\
_, status = os.waitpid(pid, 0)
print("PARENT child_exit", os.waitstatus_to_exitcode(status), flush=True)
"""


# The parent's export holds a lock of the exporter's own (as an import or a connection
# pool does) while the main thread forks; the child then ends a span and flushes.
FORK_IN_EXPORT = """\
import os, sys, threading
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

class Exporter(SpanExporter):
    def __init__(self):
        self.lock = threading.Lock()  # taken inside every export, like a module lock
        self.started = threading.Event()
        self.release = threading.Event()
        self.names = []
    def export(self, spans):
        with self.lock:
            self.started.set()
            self.release.wait(0.3)  # the parent's export is in flight meanwhile
            self.names.extend(s.name for s in spans)
        return SpanExportResult.SUCCESS
    def shutdown(self):
        pass

exporter = Exporter()
if sys.argv[1] == "sdk":
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=10)
else:
    from ctxrelay import sdk
    processor = sdk._LazyBatchProcessor(exporter)
provider = TracerProvider()
provider.add_span_processor(processor)
tracer = provider.get_tracer("t")
with tracer.start_as_current_span("parent"):
    pass
if sys.argv[1] != "sdk":
    flusher = threading.Thread(target=provider.force_flush)  # the export thread's work
    flusher.start()
exporter.started.wait(10)
pid = os.fork()
"""
FORK_IN_EXPORT += _CHILD_EXPORTS + _PARENT_REPORTS


@pytest.mark.parametrize("processor", ["sdk", "ctxrelay"])
def test_child_forked_during_the_parents_export_exports_its_span(
    tmp_path: Path, processor: str
) -> None:
    script = tmp_path / "fork_in_export.py"
    script.write_text(FORK_IN_EXPORT)
    result = run([sys.executable, str(script), processor], base_env(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PARENT child_exit 0" in result.stdout, result.stdout + result.stderr
    # The SDK's processor alone: the child inherits the export's lock held, and its span
    # is never exported.  ctxrelay's start-up processor: the fork waited for the export.
    expected = "False" if processor == "sdk" else "True"
    assert f"CHILD exported={expected}" in result.stdout, result.stdout + result.stderr


# A fork Pool worker under start-up activation, exporting to a collector that accepts
# connections and never answers; the parent reports the worker's exit and leaves with
# os._exit (its own exporter is stuck as well: not what is tested).
TERMINATE_STUCK = """\
import json, multiprocessing, os
from opentelemetry import trace
import process_support as ps
if __name__ == "__main__":
    with trace.get_tracer("app").start_as_current_span("request"):
        ps.set_all("r-1", "t-1", "s-1")
        pool = multiprocessing.get_context("fork").Pool(1)
        seen = pool.apply(ps.seen, ("stuck",))
        workers = list(pool._pool)
        pool.terminate()
        pool.join()
    print("STUCK " + json.dumps({"request_id": seen["request_id"],
                                 "exit": [w.exitcode for w in workers]}), flush=True)
    os._exit(0)
"""


def test_pool_terminate_ends_a_worker_whose_exporter_never_answers(tmp_path: Path) -> None:
    script = tmp_path / "terminate_stuck.py"
    script.write_text(TERMINATE_STUCK)
    collector = socket.socket()
    collector.bind(("127.0.0.1", 0))
    collector.listen(16)  # connections queue in the backlog: never accepted, never answered
    try:
        env = base_env(
            PYTHONPATH=str(TESTS),
            CTXRELAY_PROCESS_VARS="process_support:REQUEST_ID",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.getsockname()[1]}",
            OTEL_EXPORTER_OTLP_TIMEOUT="600",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        )
        reports = {}
        for label, extra in (("bare", {}), ("on", {"CTXRELAY_ENABLED": "1"})):
            result = run([sys.executable, str(script)], {**env, **extra}, tmp_path)
            lines = [line[6:] for line in result.stdout.splitlines() if line.startswith("STUCK ")]
            assert result.returncode == 0 and len(lines) == 1, result.stdout + result.stderr
            reports[label] = json.loads(lines[0])
    finally:
        collector.close()
    # Both end; the worker dies of SIGTERM as Pool.terminate has it die without ctxrelay
    # (or exits 0 when it took the pool's sentinel first, also as without ctxrelay).
    for label, report in reports.items():
        assert all(code in (0, -15) for code in report["exit"]), (label, report)
    assert reports["on"]["request_id"] == "r-1"  # activated: the task was carried


# ctxrelay's own export lock, in the two cases where waiting for it must not happen.
# "stuck": the parent's export outlasts the fork's wait (a collector that never
# answers); the child must not inherit that lock held.  "inside": the exporter itself
# forks (it runs a subprocess) while it holds the lock; the fork must not wait for it.
OWN_LOCK = """\
import os, sys, threading
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from ctxrelay import sdk
sdk.FORK_WAIT = 0.2 if sys.argv[1] == "stuck" else 600.0  # "inside" would hang on it

class Exporter(SpanExporter):
    def __init__(self):
        self.started, self.release, self.names, self.forked = (
            threading.Event(), threading.Event(), [], None)
    def export(self, spans):
        self.names.extend(s.name for s in spans)
        if sys.argv[1] == "inside" and self.forked is None:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            self.forked = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        elif sys.argv[1] == "stuck" and "parent" in self.names and "child" not in self.names:
            self.started.set()
            self.release.wait(30)
        return SpanExportResult.SUCCESS
    def shutdown(self):
        pass

exporter = Exporter()
processor = sdk._LazyBatchProcessor(exporter)
provider = TracerProvider()
provider.add_span_processor(processor)
tracer = provider.get_tracer("t")
with tracer.start_as_current_span("parent"):
    pass
if sys.argv[1] == "inside":
    provider.force_flush()
    print("PARENT forked_in_export", exporter.forked, flush=True)
    sys.exit(0)
threading.Thread(target=provider.force_flush, daemon=True).start()
exporter.started.wait(10)
pid = os.fork()  # the export is still in flight after the wait
"""
OWN_LOCK += _CHILD_EXPORTS + "exporter.release.set()\n" + _PARENT_REPORTS


@pytest.mark.parametrize("case", ["stuck", "inside"])
def test_the_fork_wait_never_leaves_its_own_lock_behind(tmp_path: Path, case: str) -> None:
    script = tmp_path / "own_lock.py"
    script.write_text(OWN_LOCK)
    result = run([sys.executable, str(script), case], base_env(), tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    if case == "stuck":
        assert "PARENT child_exit 0" in result.stdout, output
        assert "CHILD exported=True" in result.stdout, output
    else:
        assert "PARENT forked_in_export 0" in result.stdout, output
