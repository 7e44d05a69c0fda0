"""The first span's build of the start-up exporter, wherever that span ends.

Under ``CTXRELAY_ENABLED=1`` the batch processor is created, and an installed exporter
imported and constructed, when the first span ends (tests/test_startup_deferred_exporter.py).
That build imports modules and starts a thread; these tests end the first span where a
caller that waited for someone else's build could never be woken, or where the process
ends during the build.  Real subprocesses, the real OTLP exporter and receiver
(tests/otlp_receiver.py); each one runs bare first.

* Greenlets after ``gevent.monkey.patch_all()`` (the reason the exporter is deferred):
  the build's ``Thread.start()`` switches greenlets, and the next greenlet blocked the
  whole thread on the processor's lock (the process hung).
* A signal handler that ends a span while the build runs in the thread it interrupts
  (the same lock, held by the interrupted frame: the process hung).
* A daemon thread whose first span's build is in flight when the interpreter exits:
  the SDK's exit shutdown found no processor yet and the span was lost, where the SDK
  configured at start-up (``opentelemetry-instrument``) exports it.
* Many threads ending their first span at once: every span exported, one export
  thread; a broken exporter gives its one line once.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from activation_support import base_env, exporter_package, run

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
from otlp_receiver import Receiver

GREENLETS = """\
from gevent import monkey

monkey.patch_all()  # after start-up activation, as a gevent server or worker does
import gevent
from opentelemetry import trace

tracer = trace.get_tracer("app")


def work(i):
    with tracer.start_as_current_span(f"greenlet-{i}"):
        gevent.sleep(0)


gevent.joinall([gevent.spawn(work, i) for i in range(20)])
print("APP DONE", flush=True)
"""


def test_greenlets_ending_their_first_spans_at_once_after_monkey_patching(
    tmp_path: Path,
) -> None:
    pytest.importorskip("gevent", reason="gevent is not installed (the frameworks extra)")
    (tmp_path / "app.py").write_text(GREENLETS)
    with Receiver() as otlp:
        bare = run(["python", "app.py"], base_env(otlp.env()), tmp_path)
        assert (bare.returncode, bare.stdout, bare.stderr) == (0, "APP DONE\n", "")

        env = base_env(otlp.env(), CTXRELAY_ENABLED="1")
        result = run(["python", "app.py"], env, tmp_path)  # hung: TimeoutExpired
        assert (result.returncode, result.stdout, result.stderr) == (0, "APP DONE\n", "")
        spans = otlp.wait_for(20, where=lambda s: s["name"].startswith("greenlet-"))
        assert sorted(s["name"] for s in spans) == sorted(f"greenlet-{i}" for i in range(20))


# The OTLP exporter, whose import is interrupted by a signal (as a timer's, a child's
# or a terminating one lands while the first span imports the network stack).
SIGNALLED_EXPORTER = """\
import os, signal

os.kill(os.getpid(), signal.SIGUSR1)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Exporter
"""

SIGNAL_APP = """\
import signal, sys
from opentelemetry import trace

tracer = trace.get_tracer("app")
handled = []


def handler(signum, frame):
    with tracer.start_as_current_span("in-handler"):
        handled.append(signum)


signal.signal(signal.SIGUSR1, handler)
with tracer.start_as_current_span("request"):
    pass
if "signalled_exporter" not in sys.modules:
    import signalled_exporter  # bare: the same signal, from the same import
print("APP handled", handled, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_a_signal_handler_ends_a_span_while_the_first_span_builds_the_exporter(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text(SIGNAL_APP)
    installed = exporter_package(tmp_path / "site", "signalled", SIGNALLED_EXPORTER)
    expected = f"APP handled [{int(signal.SIGUSR1)}]\n"
    with Receiver() as otlp:
        bare = run(["python", "app.py"], base_env(otlp.env(), **installed), tmp_path)
        assert (bare.returncode, bare.stdout, bare.stderr) == (0, expected, "")

        env = base_env(otlp.env(), CTXRELAY_ENABLED="1", **installed)
        result = run(["python", "app.py"], env, tmp_path)  # hung: TimeoutExpired
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")
        spans = otlp.wait_for(2)
        assert sorted(s["name"] for s in spans) == ["in-handler", "request"]


# The OTLP exporter, whose import (the first span's build) goes on only once the main
# thread has started to exit, and takes a while then, as a large import does.
GATED_EXPORTER = """\
import sys, time

gate = getattr(sys.modules["__main__"], "EXITING", None)
if gate is not None:
    gate.wait()
    time.sleep(0.3)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Exporter
"""

DAEMON_APP = """\
import atexit, threading
from opentelemetry import trace

EXITING = threading.Event()
atexit.register(EXITING.set)  # runs before the SDK's exit shutdown, registered earlier
tracer = trace.get_tracer("app")
ending = threading.Event()


def daemon():
    ending.set()
    tracer.start_span("daemon").end()


threading.Thread(target=daemon, daemon=True).start()
ending.wait()
print("APP DONE", flush=True)
"""


def test_a_daemon_threads_first_span_built_during_exit_is_exported(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(DAEMON_APP)
    installed = exporter_package(tmp_path / "site", "gated", GATED_EXPORTER)
    with Receiver() as otlp:
        # Bare: the SDK configured at start-up by its own configurator.
        bare_env = base_env(otlp.env(), **installed)
        bare = run(["opentelemetry-instrument", "python", "app.py"], bare_env, tmp_path)
        assert (bare.returncode, bare.stdout, bare.stderr) == (0, "APP DONE\n", "")
        assert [s["name"] for s in otlp.wait_for(1)] == ["daemon"]

    with Receiver() as otlp:
        env = base_env(otlp.env(), CTXRELAY_ENABLED="1", **installed)
        result = run(["python", "app.py"], env, tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, "APP DONE\n", "")
        assert [s["name"] for s in otlp.wait_for(1)] == ["daemon"]  # was: none


THREADS_AT_ONCE = """\
import json, threading
from opentelemetry import trace

tracer = trace.get_tracer("app")
barrier = threading.Barrier(32)


def work(i):
    barrier.wait()
    with tracer.start_as_current_span(f"thread-{i}"):
        pass


threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
names = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
print("APP " + json.dumps(names), flush=True)
"""


def test_many_threads_end_their_first_spans_at_once(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(THREADS_AT_ONCE)
    with Receiver() as otlp:
        bare = run(["python", "app.py"], base_env(otlp.env()), tmp_path)
        assert (bare.returncode, bare.stdout, bare.stderr) == (0, "APP []\n", "")

        result = run(["python", "app.py"], base_env(otlp.env(), CTXRELAY_ENABLED="1"), tmp_path)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        (line,) = result.stdout.splitlines()
        # One processor built: one export thread, whichever thread built it.
        assert json.loads(line[len("APP ") :]) == ["OtelBatchSpanRecordProcessor"]
        spans = otlp.wait_for(32)
        assert sorted(s["name"] for s in spans) == sorted(f"thread-{i}" for i in range(32))


def test_a_broken_exporter_reports_once_when_many_threads_end_first_spans(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text(THREADS_AT_ONCE)
    installed = exporter_package(
        tmp_path / "site", "broken", "raise ImportError('this exporter is broken')\n"
    )
    bare = run(["python", "app.py"], base_env(**installed), tmp_path)
    assert (bare.returncode, bare.stdout, bare.stderr) == (0, "APP []\n", "")

    result = run(["python", "app.py"], base_env(CTXRELAY_ENABLED="1", **installed), tmp_path)
    assert (result.returncode, result.stdout) == (0, "APP []\n")  # no export thread
    (line,) = result.stderr.splitlines()
    assert line.startswith("ctxrelay: OTEL_TRACES_EXPORTER='broken': the exporter failed")
    assert "ImportError: this exporter is broken" in line


def test_no_span_no_build(tmp_path: Path) -> None:
    """A process that ends no span imports neither the SDK's export module nor the exporter."""
    (tmp_path / "app.py").write_text(
        "import sys\nheavy = ('ssl', 'requests', 'urllib3', 'opentelemetry.sdk.trace.export',\n"
        "         'opentelemetry.exporter.otlp.proto.http.trace_exporter')\n"
        "print('APP', sorted(m for m in heavy if m in sys.modules), flush=True)\n"
    )
    with Receiver() as otlp:
        bare = run(["python", "app.py"], base_env(otlp.env()), tmp_path)
        result = run(["python", "app.py"], base_env(otlp.env(), CTXRELAY_ENABLED="1"), tmp_path)
    assert (bare.returncode, bare.stdout, bare.stderr) == (0, "APP []\n", "")
    assert (result.returncode, result.stdout, result.stderr) == (0, "APP []\n", "")
