"""End to end: worker processes' hop spans reach Phoenix in the submitter's trace.

``process_app.py`` under ``ctxrelay run`` hands tasks to ``ProcessPoolExecutor`` and
``multiprocessing`` (Pool and Process) in every start method; each worker process
activates from the inherited environment and exports its hop span over OTLP to a real
Phoenix (the fixture of ``test_e2e_phoenix.py``), flushed when the pool shuts it down or
terminates it.  Without ctxrelay nothing reaches Phoenix.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from activation_support import CTXRELAY, base_env, run
from test_e2e_phoenix import Phoenix, phoenix  # noqa: F401 - the module-scoped fixture

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent
RUNNERS = ("ProcessPoolExecutor", "multiprocessing.Pool", "multiprocessing.Process")


def _app(server: Phoenix, command: list[str], project: str) -> dict:
    env = base_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.http_port}"},
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="ctxrelay-e2e-processes",
        OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={project}",
        OTEL_BSP_SCHEDULE_DELAY="200",
        PYTHONPATH=str(TESTS),
        CTXRELAY_PROCESS_VARS="process_support:REQUEST_ID,process_support:TENANT",
    )
    result = run([*command, "process_app.py", "process_pool", "multiprocessing"], env, TESTS)
    lines = [line[5:] for line in result.stdout.splitlines() if line.startswith("PROC ")]
    assert result.returncode == 0 and len(lines) == 1, result.stdout + result.stderr
    return json.loads(lines[0])


def test_worker_process_spans_reach_phoenix_in_one_trace(phoenix: Phoenix) -> None:  # noqa: F811
    project = "ctxrelay-e2e-processes"
    bare = _app(phoenix, ["python"], project)
    spawned = [t for t in bare["tasks"] if t["tag"] in ("ppe-spawn", "pool-spawn")]
    assert [t["request_id"] for t in spawned] == ["-", "-"]  # lost without ctxrelay
    report = _app(phoenix, [str(CTXRELAY), "run", "python"], project)
    # 12 hops (4 per start method) + the request span, at least; the pools' own threads
    # add thread hops of their own.
    # Phoenix ingests through a queue and the project holds thread hops as well: wait for
    # the 12 worker hops themselves, not for any 13 spans.
    deadline = time.monotonic() + 30
    while True:
        stored = phoenix.spans(project, expected=13)
        hops = [s for s in stored if s["attributes"].get("ctxrelay.runner") in RUNNERS]
        if len(hops) >= 12 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert len(hops) == 12, sorted(s["name"] for s in stored)
    (request,) = [s for s in stored if s["name"] == "request"]
    assert {s["context"]["trace_id"] for s in hops} == {report["trace_id"]}
    assert all(s["parent_id"] == request["context"]["span_id"] for s in hops)
    pids = {s["attributes"]["process.pid"] for s in hops}
    assert {t["pid"] for t in report["tasks"] if "pid" in t} <= pids
    assert sorted({s["attributes"]["ctxrelay.runner"] for s in hops}) == sorted(RUNNERS)
