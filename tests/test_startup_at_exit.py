"""A process whose first span ends in an ``atexit`` handler (real subprocesses).

Under ``CTXRELAY_ENABLED=1`` the batch processor is built when the first span ends
(tests/test_startup_first_span.py).  From CPython 3.12 the interpreter refuses new
threads once it is shutting down, ``atexit`` handlers included, so building the batch
processor there failed and the span was lost, where an SDK the application set up
itself (its export thread already running) exports it.  A CLI that records one span at
exit (a summary, a flush of its own) is the everyday case.  The default Python passes
either way; the 3.12-3.14 legs of the matrix are the ones that failed before the fix.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from activation_support import base_env, run

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
