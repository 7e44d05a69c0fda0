"""Worker-side spans of process pools reach a real OTLP receiver, in the submitter's trace.

The app (``process_app.py``) runs in a subprocess, plainly and then activated
(``ctxrelay run`` and ``CTXRELAY_ENABLED=1``); its worker processes, in every start
method, activate from the inherited environment, record a hop span per task as a child
of the submitting span, and flush it when the pool shuts them down or terminates them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip(
    "opentelemetry.proto", reason="opentelemetry-proto is not installed (the frameworks extra)"
)

from activation_support import CTXRELAY, base_env, run
from otlp_receiver import Receiver

TESTS = Path(__file__).resolve().parent
ENGINES = ["process_pool", "multiprocessing"]
TASKS = 12  # per start method: a PPE task, a failing one, a Pool task, a Process


def _app(otlp: Receiver, command: list[str], **env: str) -> dict:
    environment = base_env(
        otlp.env(),
        PYTHONPATH=str(TESTS),
        CTXRELAY_PROCESS_VARS="process_support:REQUEST_ID,process_support:TENANT",
        OTEL_SERVICE_NAME="process-app",
        **env,
    )
    result = run([*command, "process_app.py", *ENGINES], environment, TESTS)
    lines = [line[5:] for line in result.stdout.splitlines() if line.startswith("PROC ")]
    assert result.returncode == 0 and len(lines) == 1, result.stdout + result.stderr
    return json.loads(lines[0])


def _by_tag(report: dict) -> dict[str, dict]:
    return {task["tag"]: task for task in report["tasks"]}


@pytest.mark.parametrize("activation", ["run", "pth"], ids=["ctxrelay-run", "CTXRELAY_ENABLED=1"])
def test_worker_spans_join_the_submitters_trace(otlp: Receiver, activation: str) -> None:
    otlp.clear()
    bare = _by_tag(_app(otlp, ["python"]))
    assert otlp.wait_for(1, timeout=2) == []  # no SDK configured without ctxrelay
    assert bare["ppe-spawn"]["request_id"] == "-" and bare["pool-spawn"]["tenant"] == "-"

    if activation == "run":
        report = _app(otlp, [str(CTXRELAY), "run", "python"])
    else:
        report = _app(otlp, ["python"], CTXRELAY_ENABLED="1")
    tasks = _by_tag(report)
    for method in ("fork", "forkserver", "spawn"):
        for tag in (f"ppe-{method}", f"pool-{method}"):
            seen = tasks[tag]
            assert (seen["request_id"], seen["tenant"], seen["secret"]) == ("r-1", "t-1", "-"), tag
            assert seen["trace_id"] == report["trace_id"], tag
        assert tasks[f"ppe-fail-{method}"]["error"] == "boom"
        process = tasks[f"process-{method}"]
        assert process["trace_id"] == report["trace_id"]
        expected_secret = "s-1" if method == "fork" else "-"  # fork: Python's semantics
        assert (process["request_id"], process["secret"]) == ("r-1", expected_secret)

    runners = ("ProcessPoolExecutor", "multiprocessing.Pool", "multiprocessing.Process")
    spans = otlp.wait_for(TASKS, where=lambda s: s["attributes"].get("ctxrelay.runner") in runners)
    # (the pools' own threads have thread hops of their own: not what is checked here)
    hops = [s for s in spans if s["attributes"].get("ctxrelay.runner") in runners]
    assert len(hops) == TASKS, [s["name"] for s in spans]
    request = [s for s in spans if s["name"] == "request"]
    assert len(request) == 1
    for hop in hops:
        assert hop["trace_id"] == report["trace_id"]
        assert hop["parent_id"] == report["span_id"]
        assert hop["attributes"]["process.pid"] != hop["attributes"]["ctxrelay.origin.process.pid"]
        assert hop["attributes"]["host.name"]
        assert hop["resource"]["service.name"] == "process-app"
    # Each task's own span is the hop of the process that ran it.
    by_pid = {hop["attributes"]["process.pid"] for hop in hops}
    assert {t["pid"] for t in report["tasks"] if "pid" in t} <= by_pid
    assert sorted({hop["attributes"]["ctxrelay.runner"] for hop in hops}) == sorted(runners)
    failed = [h for h in hops if h["status"] == 2]
    assert [h["name"] for h in failed] == ["ProcessPoolExecutor fail"] * 3
    assert os.environ.get("CTXRELAY_ENABLED") is None  # the test process itself untouched
