"""SIGTERM under start-up activation: spans are flushed, then the process ends exactly as
it would have (same exit status / signal); the app's own handler runs once and wins;
real uvicorn restores and re-raises as it does without ctxrelay.  Real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from activation_support import CTXRELAY, base_env, require
from helpers import free_port

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX"
)

APP = """\
import os, signal, sys, time
from opentelemetry import trace
mode = sys.argv[1]
if mode in ("own", "chain"):
    previous = signal.getsignal(signal.SIGTERM)
    def handler(signum, frame):
        # os.write, not print(): SIGTERM may land while the main thread is inside a
        # print, and a handler that prints then (or exits) deadlocks on stdout's lock.
        os.write(1, b"APP HANDLER\\n")
        if mode == "chain" and callable(previous):
            previous(signum, frame)  # a handler that calls its predecessor first
        sys.exit(3)
    signal.signal(signal.SIGTERM, handler)
tracer = trace.get_tracer("app")
with tracer.start_as_current_span("finished-request"):
    pass
os.write(1, b"READY\\n")
time.sleep(60)
"""

ASGI = """\
from opentelemetry import trace
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                with trace.get_tracer("app").start_as_current_span("finished-request"):
                    pass
                print("READY", flush=True)
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
"""


def _stop(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Start, wait for READY, send SIGTERM; (exit status, stdout)."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "READY":
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, "".join(lines) + out


def _env(tmp_path: Path, enabled: bool) -> tuple[dict[str, str], Path]:
    trees = tmp_path / f"trees-{enabled}.txt"
    env = base_env(
        OTEL_TRACES_EXPORTER=None,  # type: ignore[arg-type]
        CTXRELAY_TREE_FILE=str(trees),
        CTXRELAY_ENABLED="1" if enabled else "0",
    )
    return env, trees


@pytest.mark.parametrize(
    ("mode", "status", "handler_lines"),
    [("plain", -signal.SIGTERM, 0), ("own", 3, 1), ("chain", 3, 1)],
)
def test_a_plain_script(tmp_path: Path, mode: str, status: int, handler_lines: int) -> None:
    (tmp_path / "app.py").write_text(APP)
    outcomes = []
    for enabled in (False, True):
        env, trees = _env(tmp_path, enabled)
        code, out = _stop([sys.executable, "app.py", mode], env, tmp_path)
        tree = trees.read_text() if trees.exists() else ""
        outcomes.append((code, out.count("APP HANDLER"), "finished-request" in tree))
    bare, on = outcomes
    # Without ctxrelay no tree file at all; killed by SIGTERM unless the app's handler exits.
    assert bare == (status, handler_lines, False)
    # With it: the same end, the handler run as often, and the finished span was flushed.
    assert on == (status, handler_lines, True)


def test_uvicorn(tmp_path: Path) -> None:
    """uvicorn shuts down gracefully, restores the previous handler and re-raises SIGTERM."""
    require("uvicorn")
    (tmp_path / "asgi.py").write_text(ASGI)
    outcomes = []
    for enabled in (False, True):
        env, trees = _env(tmp_path, enabled)
        cmd = ["uvicorn", "asgi:app", "--port", str(free_port()), "--lifespan", "on"]
        if enabled:
            cmd = [str(CTXRELAY), "run", *cmd]
        code, out = _stop(cmd, env, tmp_path)
        tree = trees.read_text() if trees.exists() else ""
        outcomes.append((code, "Finished server process" in out, "finished-request" in tree))
    bare, on = outcomes
    assert bare[:2] == (-signal.SIGTERM, True) and not bare[2], bare
    assert on == (bare[0], True, True), on
