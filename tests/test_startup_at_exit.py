"""A process whose first span ends in an ``atexit`` handler (real subprocesses).

Under ``CTXRELAY_ENABLED=1`` the batch processor is built when the first span ends
(tests/test_startup_first_span.py).  CPython 3.12 refuses new threads once the
interpreter is shutting down, ``atexit`` handlers included (3.10, 3.11 and 3.13+ do
not), so building the batch processor there failed and the span was lost, where an SDK
the application set up itself (its export thread already running) exports it.  A CLI
that records one span at exit (a summary, a flush of its own) is the everyday case.
The 3.12 leg of the matrix is the one that failed before the fix; the others pass
either way.

With no thread to export from, the spans that end at exit go out in one batch at the
provider's exit shutdown, and only to exporters that bound their own export: an
exporter that never returns must not keep the process from exiting.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from activation_support import base_env, exporter_package, run

APP = """\
import atexit, sys

if sys.argv[1] == "bare":  # the application sets the SDK up itself, as without ctxrelay
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
from opentelemetry import trace


def summary():
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
        with trace.get_tracer("app").start_as_current_span("at-exit-summary"):
            pass


atexit.register(summary)
print("APP DONE", flush=True)
"""


@pytest.mark.parametrize("exporter", ["console", "ctxrelay_tree"])
def test_a_first_span_ended_at_exit_is_exported(tmp_path: Path, exporter: str) -> None:
    (tmp_path / "app.py").write_text(APP)
    bare = run([sys.executable, "app.py", "bare"], base_env(), tmp_path)
    assert bare.returncode == 0, bare.stderr
    assert "at-exit-summary" in bare.stdout  # the SDK's own export thread was running

    env = base_env(CTXRELAY_ENABLED="1", OTEL_TRACES_EXPORTER=exporter)
    done = run([sys.executable, "app.py", "activated"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("APP DONE")
    assert (done.stdout + done.stderr).count("at-exit-summary") == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


# An installed exporter whose export never returns.
HANGING_EXPORTER = """\
import threading
from opentelemetry.sdk.trace.export import SpanExportResult


class Exporter:
    def export(self, spans):
        threading.Event().wait()
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30000):
        return True
"""


def _threads_start_at_exit() -> bool:
    probe = "import atexit, threading; atexit.register(lambda: threading.Thread().start())"
    done = run([sys.executable, "-c", probe], base_env(), Path.cwd())
    return "can't create new thread" not in done.stderr


def test_an_exporter_that_never_returns_does_not_hold_the_exit(tmp_path: Path) -> None:
    if _threads_start_at_exit():
        pytest.skip(
            "this Python starts threads at exit: the batch processor is built as usual, "
            "and its shutdown waits 30 s for a stuck export, as a bare SDK's does"
        )
    (tmp_path / "app.py").write_text(APP)
    installed = exporter_package(tmp_path / "site", "hanging", HANGING_EXPORTER)
    done = run(
        [sys.executable, "app.py", "activated"],
        base_env(CTXRELAY_ENABLED="1", **installed),
        tmp_path,
    )  # before the batch at exit was limited to bounded exporters: killed at the timeout
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("APP DONE")


def test_many_spans_at_exit_reach_the_collector_as_the_sdks_own_do(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from otlp_receiver import Receiver

    (tmp_path / "app.py").write_text(
        APP.replace("ConsoleSpanExporter()", "OTLPSpanExporter()").replace(
            "from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter",
            "from opentelemetry.sdk.trace.export import BatchSpanProcessor\n    "
            "from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter",
        )
    )
    names = {}
    with Receiver() as otlp:
        for how, extra in (("bare", {}), ("activated", {"CTXRELAY_ENABLED": "1"})):
            otlp.clear()
            env = base_env(otlp.env(), **extra)
            done = run([sys.executable, "app.py", how, "5"], env, tmp_path)
            assert done.returncode == 0, done.stderr
            names[how] = sorted(span["name"] for span in otlp.wait_for(5))
    assert names["activated"] == names["bare"] == ["at-exit-summary"] * 5
