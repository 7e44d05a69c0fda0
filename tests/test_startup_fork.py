"""Start-up activation configures only what ``OTEL_*`` asks for; forked children behave
as without ctxrelay (same lifetime, same exit, quiet).  Real subprocesses, bare vs on."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from activation_support import base_env, run

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# CPython's test_threading.ThreadJoinOnShutdown.test_3_join_in_forked_from_thread, as a
# script: the child, forked from a worker thread, must end when that thread returns.
JOIN_IN_FORKED_FROM_THREAD = """\
import os, sys, threading, time
main_thread = threading.current_thread()
def joiningfunc(mainthread):
    mainthread.join()
    print('end of thread')
    sys.stdout.flush()
def worker():
    childpid = os.fork()
    if childpid != 0:
        _, status = os.waitpid(childpid, 0)
        print('child status', os.waitstatus_to_exitcode(status))
        sys.exit(0)
    t = threading.Thread(target=joiningfunc, args=(main_thread,))
    print('end of main')
    t.start()
    t.join()
w = threading.Thread(target=worker)
w.start()
"""

# CPython's test_os.ForkTests.test_fork_at_exit, the shape of it: fork from atexit.
FORK_AT_EXIT = """\
import atexit, os, sys
def at_exit():
    pid = os.fork()
    if pid == 0:
        print('child at exit')
        os._exit(0)
    os.waitpid(pid, 0)
atexit.register(at_exit)
print('main')
"""

# After start-up: how many threads, and whether the app's own providers are accepted.
PROVIDERS = """\
import logging, threading, warnings
warnings.simplefilter("always")
print('threads', threading.active_count())
from opentelemetry import metrics, _logs
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk._logs import LoggerProvider
metrics.set_meter_provider(MeterProvider())
_logs.set_logger_provider(LoggerProvider())
print('meter', type(metrics.get_meter_provider()).__name__)
print('logger', type(_logs.get_logger_provider()).__name__)
"""


def _both(tmp_path: Path, script: str, **env: str) -> tuple[object, object]:
    (tmp_path / "script.py").write_text(script)
    outcomes = []
    for enabled in ("0", "1"):
        result = run(
            [sys.executable, "script.py"],
            base_env({"OTEL_TRACES_EXPORTER": None, **env}, CTXRELAY_ENABLED=enabled),  # type: ignore[dict-item]
            tmp_path,
        )
        # CPython's own warnings name the process id: equal runs must compare equal.
        stderr = re.sub(r"pid=\d+", "pid=N", result.stderr)
        outcomes.append((result.returncode, sorted(result.stdout.splitlines()), stderr))
    return outcomes[0], outcomes[1]


def test_a_child_forked_from_a_thread_ends_as_without(tmp_path: Path) -> None:
    bare, on = _both(tmp_path, JOIN_IN_FORKED_FROM_THREAD)
    assert bare[:2] == (0, ["child status 0", "end of main", "end of thread"]), bare
    # CPython 3.12+ warns that fork() in a multi-threaded process may deadlock when it
    # can count the threads (3.14t does here): the interpreter's warning, bare or on.
    assert bare[2] == "" or "use of fork() may lead to deadlocks" in bare[2], bare
    assert on == bare


def test_fork_at_exit_is_quiet(tmp_path: Path) -> None:
    bare, on = _both(tmp_path, FORK_AT_EXIT)
    if "can't fork at interpreter shutdown" in bare[2]:
        # CPython 3.12.0-3.12.x refuses os.fork() in an atexit callback even bare.
        pytest.skip(f"{sys.version.split()[0]} cannot fork at exit, with or without ctxrelay")
    assert bare == (0, ["child at exit", "main"], ""), bare
    assert on == bare


@pytest.mark.parametrize("exporter", [None, "console", "none"])
def test_only_traces_are_configured(tmp_path: Path, exporter: str | None) -> None:
    """No idle thread, no Meter/LoggerProvider the application cannot replace."""
    env = {} if exporter is None else {"OTEL_TRACES_EXPORTER": exporter}
    bare, on = _both(tmp_path, PROVIDERS, **env)
    assert bare == (0, ["logger LoggerProvider", "meter MeterProvider", "threads 1"], ""), bare
    assert on == bare
