"""Helpers for the start-up activation tests: a probe app, run in real subprocesses.

The probe sets a ContextVar inside a span, hands work to a ``threading.Thread`` and to a
``ThreadPoolExecutor``, and prints one ``CTXRELAY_PROBE {json}`` line saying what the
workers saw and how OpenTelemetry is configured.  Run plainly it shows the loss (the
workers see the default); run under an activation it shows the fix.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from helpers import baseline

VENV_BIN = Path(sys.executable).parent
CTXRELAY = VENV_BIN / "ctxrelay"
PROBE_PREFIX = "CTXRELAY_PROBE "
TIMEOUT = 90  # generous: two shared cores, and gradio takes seconds to import

PROBE = """\
import contextvars, json, os, sys, threading
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace

REQUEST = contextvars.ContextVar("request_id", default="EMPTY")


def probe(label="probe"):
    tracer = trace.get_tracer("probe")
    seen = {}

    def work(key):
        ctx = trace.get_current_span().get_span_context()
        calls = seen.get(key, {}).get("calls", 0) + 1
        trace_id = format(ctx.trace_id, "032x")
        seen[key] = {"request_id": REQUEST.get(), "trace_id": trace_id, "calls": calls}

    with tracer.start_as_current_span("request") as span:
        REQUEST.set("r-42")
        thread = threading.Thread(target=work, args=("thread",), name="probe-worker")
        thread.start()
        thread.join()
        with ThreadPoolExecutor(1, thread_name_prefix="probe-pool") as pool:
            # The worker starts in an empty context: started by the submit below, it
            # would copy the request's on 3.14 with thread_inherit_context=1.
            contextvars.Context().run(pool.submit, int).result()
            pool.submit(work, "pool").result()
        root_trace = format(span.get_span_context().trace_id, "032x")
    provider = trace.get_tracer_provider()
    ctxrelay = sys.modules.get("ctxrelay")
    bootstrap = sys.modules.get("ctxrelay.bootstrap")
    resource = getattr(provider, "resource", None)
    sampler = getattr(provider, "sampler", None)
    report = {
        "label": label,
        "pid": os.getpid(),
        "seen": seen,
        "root_trace": root_trace,
        "imported": ctxrelay is not None,
        "instrumented": bool(ctxrelay and ctxrelay.is_instrumented()),
        "activated_by": bootstrap.activated_by() if bootstrap else None,
        "provider": type(provider).__name__,
        "resource": dict(resource.attributes) if resource is not None else None,
        "sampler": sampler.get_description() if sampler is not None else None,
        "sitecustomize": getattr(sys.modules.get("sitecustomize"), "__file__", None),
    }
    print("CTXRELAY_PROBE " + json.dumps(report, default=str), flush=True)
    return report
"""

APP = """\
import sys
from probe import probe

probe("app")
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


def require(script: str) -> Path:
    """This venv's console script ``script``; skipped if absent.

    Under CI=true a missing script fails the test when its package (same name) is
    importable: the venv has the framework, so its console script must be there too.
    The light matrix venvs hold no framework at all, and skip.
    """
    path = VENV_BIN / script
    if not path.exists():
        reason = f"{path} is not installed (the 'frameworks' extra has it)"
        installed = importlib.util.find_spec(script) is not None
        if installed and os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, yet the {script} package is importable")
        pytest.skip(reason)
    return path


def build_wheel(directory: Path) -> Path:
    """A wheel of this checkout, built the way pip builds it (isolated build environment)."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(directory), str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = directory.glob("ctxrelay-*.whl")
    return wheel


def write_probe(directory: Path) -> Path:
    """``probe.py`` and ``app.py`` in ``directory``; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "probe.py").write_text(PROBE)
    (directory / "app.py").write_text(APP)
    return directory


#: PYTHON* settings the subprocesses keep: the interpreter mode the suite runs under
#: (CI runs 3.14 with PYTHON_THREAD_INHERIT_CONTEXT=0 and =1).
KEPT_PYTHON_VARS = ("PYTHON_THREAD_INHERIT_CONTEXT", "PYTHON_GIL")


def base_env(extra: Mapping[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """A clean environment: this venv first on PATH, no inherited activation or OTEL_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith(("CTXRELAY_", "OTEL_", "PYTHON")) and k != "VIRTUAL_ENV")
        or k in KEPT_PYTHON_VARS
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    # Nothing in these tests may try to reach a collector unless it says so.
    env.setdefault("OTEL_TRACES_EXPORTER", "none")
    env.update(extra or {})
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def exporter_package(site: Path, name: str, source: str) -> dict[str, str]:
    """An installed trace exporter ``name`` (module ``<name>_exporter``) on PYTHONPATH:
    the environment that selects it."""
    info = site / f"{name}_exporter-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-exporter\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[opentelemetry_traces_exporter]\n{name} = {name}_exporter:Exporter\n"
    )
    (site / f"{name}_exporter.py").write_text(source)
    return {"PYTHONPATH": str(site), "OTEL_TRACES_EXPORTER": name}


def run(
    cmd: Sequence[str | os.PathLike[str]], env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def probes(output: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len(PROBE_PREFIX) :])
        for line in output.splitlines()
        if line.startswith(PROBE_PREFIX)
    ]


def probe_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    found = probes(result.stdout)
    assert len(found) == 1, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return found[0]


def run_server_until_probe(
    cmd: Sequence[str | os.PathLike[str]], env: Mapping[str, str], cwd: Path
) -> tuple[dict[str, Any], str]:
    """Start a long-running command, wait (bounded) for its probe line, then stop it.

    The command runs in its own process group so that a reloader's child goes too.
    """
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    # A reader thread, not select() on the pipe: readline() buffers whatever arrived
    # with the line it returns, and select() then waits for more while the probe line
    # already sits in that buffer.
    received: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(
        target=lambda: [received.put(line) for line in proc.stdout] + [received.put("")],  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = received.get(timeout=remaining)
            except queue.Empty:
                break  # silent until the deadline
            if not line:
                break  # exited
            lines.append(line)
            if line.startswith(PROBE_PREFIX):
                return json.loads(line[len(PROBE_PREFIX) :]), "".join(lines)
        raise AssertionError("no probe line before exit/timeout:\n" + "".join(lines))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()


def carried(report: Mapping[str, Any]) -> bool:
    """True when both workers saw the request's ContextVar and its trace."""
    seen = report["seen"]
    return all(
        seen[key]["request_id"] == "r-42"
        and seen[key]["trace_id"] == report["root_trace"]
        and seen[key]["calls"] == 1  # the work ran exactly once
        for key in ("thread", "pool")
    )


#: The request id each worker of the probe sees in plain Python: the pool task never
#: sees it (its worker started empty); the thread does only where ``start()`` copies
#: (3.14 with ``thread_inherit_context=1``; the subprocess's setting is this process's).
UNCARRIED = {"thread": baseline("EMPTY", "r-42"), "pool": "EMPTY"}


def lost(report: Mapping[str, Any]) -> bool:
    """True when the workers saw what plain Python gives them (:data:`UNCARRIED`)."""
    return all(report["seen"][key]["request_id"] == UNCARRIED[key] for key in UNCARRIED)
