"""End to end: an app run with ``ctxrelay run`` exports over OTLP to a real receiver.

The receiver is Arize Phoenix (``phoenix serve``, from its own venv: ``make phoenix``),
started here on free ports with an in-memory database and its extras off.  Spans are
read back from its REST API: trace ids, parent ids across threads and the hop
attributes.  Phoenix keeps only ``openinference.project.name`` of the resource, so the
resource is checked through the project the spans land in (set with
``OTEL_RESOURCE_ATTRIBUTES``) and the service name in the app itself.

Without ``make phoenix`` these tests are skipped with that reason, except under
``CI=true``, where a missing Phoenix is a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from activation_support import CTXRELAY, base_env, run, write_probe
from ctxrelay import attributes as keys
from helpers import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
PHOENIX = ROOT / ".venv-phoenix" / "bin" / "phoenix"
START_TIMEOUT = 180  # seconds; Phoenix imports a lot on two shared cores
READ_TIMEOUT = 60

# Work in two threads, each recording a span of its own inside the hop.
E2E_APP = """\
import json, threading
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace

tracer = trace.get_tracer("e2e")


def work(name):
    with tracer.start_as_current_span(name):
        pass


with tracer.start_as_current_span("e2e request") as request:
    t = threading.Thread(target=work, args=("thread work",), name="e2e-thread")
    t.start()
    t.join()
    with ThreadPoolExecutor(1, thread_name_prefix="e2e-pool") as pool:
        pool.submit(work, "pool work").result()
resource = getattr(trace.get_tracer_provider(), "resource", None)
print("E2E " + json.dumps({
    "trace_id": format(request.get_span_context().trace_id, "032x"),
    "service.name": resource.attributes.get("service.name") if resource else None,
}), flush=True)
"""


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        return json.loads(response.read().decode() or "null")


class Phoenix:
    def __init__(self, http_port: int, grpc_port: int) -> None:
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.base = f"http://127.0.0.1:{http_port}"

    def spans(self, project: str, expected: int) -> list[dict[str, Any]]:
        """The project's spans once ``expected`` have been stored (ingestion is queued)."""
        deadline = time.monotonic() + READ_TIMEOUT
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                found = _get(f"{self.base}/v1/projects/{project}/spans?limit=1000")["data"]
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # 404: the project does not exist yet
                    raise
            if len(found) >= expected:
                return found
            time.sleep(0.25)
        raise AssertionError(
            f"{len(found)} spans in {project!r} after {READ_TIMEOUT}s, expected {expected}"
        )


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    if not PHOENIX.exists():
        reason = f"{PHOENIX} is missing: run `make phoenix` (make test does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = Phoenix(free_port(), free_port())
    workdir = tmp_path_factory.mktemp("phoenix")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(workdir),
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_SQL_DATABASE_URL": "sqlite:///:memory:",
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(server.http_port),
        "PHOENIX_GRPC_PORT": str(server.grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
        "PHOENIX_AGENTS_DISABLE_BASH": "true",
        "PHOENIX_ENABLE_MCP_SERVER": "false",
    }
    log_path = workdir / "phoenix.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(PHOENIX), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"phoenix exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            try:
                urllib.request.urlopen(f"{server.base}/readyz", timeout=2).close()
                break
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"phoenix not ready in {START_TIMEOUT}s:\n{log_path.read_text()[-4000:]}"
                    ) from exc
                time.sleep(0.5)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        # SIGTERM ends it with 143 (or -15 when the signal itself ends the process).
        assert proc.returncode in (0, 143, -signal.SIGTERM), log_path.read_text()[-4000:]


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line[4:] for line in result.stdout.splitlines() if line.startswith("E2E ")]
    assert result.returncode == 0 and len(lines) == 1, result.stdout + result.stderr
    return json.loads(lines[0])  # type: ignore[no-any-return]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = write_probe(tmp_path / "app")
    (directory / "e2e_app.py").write_text(E2E_APP)
    return directory


PROTOCOLS = {
    "http/protobuf": lambda p: {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{p.http_port}"},
    "grpc": lambda p: {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{p.grpc_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    },
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_trace_across_threads_reaches_phoenix(
    phoenix: Phoenix, app_dir: Path, protocol: str
) -> None:
    project = "ctxrelay-e2e-" + protocol.replace("/", "-")
    env = base_env(
        PROTOCOLS[protocol](phoenix),
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_SERVICE_NAME="ctxrelay-e2e",
        OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={project},deployment.environment=e2e",
    )
    # Without ctxrelay: no SDK is configured, so nothing reaches the project.
    plain = _report(run(["python", "e2e_app.py"], env, app_dir))
    assert plain["service.name"] is None
    report = _report(run([CTXRELAY, "run", "python", "e2e_app.py"], env, app_dir))
    assert report["service.name"] == "ctxrelay-e2e"

    # 1 request + 2 hops + 2 work spans, all of them flushed at exit.
    stored = phoenix.spans(project, expected=5)
    # Only the ctxrelay run's trace, and in one piece.
    assert {s["context"]["trace_id"] for s in stored} == {report["trace_id"]}
    by_name = {s["name"]: s for s in stored}
    assert len(by_name) == 5, sorted(by_name)
    request = by_name["e2e request"]
    assert request["parent_id"] is None
    for work_name, runner, thread_prefix in (
        ("thread work", "Thread", "e2e-thread"),
        ("pool work", "ThreadPoolExecutor", "e2e-pool"),
    ):
        work = by_name[work_name]
        (hop,) = [s for s in stored if s["context"]["span_id"] == work["parent_id"]]
        assert hop["parent_id"] == request["context"]["span_id"]
        attributes = hop["attributes"]
        assert attributes[keys.ATTR_RUNNER] == runner
        assert attributes[keys.THREAD_NAME].startswith(thread_prefix)
        assert attributes[keys.ATTR_ORIGIN_THREAD_NAME] == "MainThread"
        assert attributes[keys.THREAD_ID] != attributes[keys.ATTR_ORIGIN_THREAD_ID]
        assert attributes[keys.ATTR_QUEUE_WAIT_MS] >= 0
        assert attributes[keys.CODE_FUNCTION_NAME].endswith("work")


# The Gradio app of tests/gradio_apps.py, mounted under uvicorn, two clients at once.
GRADIO_APP = """\
import json, sys
sys.path.insert(0, {tests!r})
import gradio_apps
from opentelemetry import trace

with gradio_apps.mounted(trace.get_tracer("e2e")) as url:
    results = gradio_apps.drive_two(url)
    assets = gradio_apps.load_page(url)
print("E2E " + json.dumps({{"results": results, "assets": assets}}), flush=True)
"""


def test_gradio_jobs_reach_phoenix_in_their_join_requests_traces(
    phoenix: Phoenix, app_dir: Path
) -> None:
    """Through Phoenix's API: each handler sees its own request id, sits in its join
    request's trace under a ``gradio.queue <handler>`` hop, generator steps are named
    after the user's function, nothing is an error, no hop for the page's static files."""
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    project = "ctxrelay-e2e-gradio"
    (app_dir / "gradio_e2e.py").write_text(
        GRADIO_APP.format(tests=str(Path(__file__).resolve().parent))
    )
    env = base_env(
        PROTOCOLS["http/protobuf"](phoenix),
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="ctxrelay-e2e-gradio",
        OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={project}",
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
    )
    # Without ctxrelay: no handler sees its own id (jobs run in the queue loop's context).
    plain = _report(run(["python", "gradio_e2e.py"], env, app_dir))
    assert not any(
        out == f"{client}={client}"
        for client, per_handler in plain["results"].items()
        for outputs in per_handler.values()
        for out in outputs
    ), plain
    report = _report(run([CTXRELAY, "run", "python", "gradio_e2e.py"], env, app_dir))
    for client, per_handler in report["results"].items():
        for outputs in per_handler.values():
            assert outputs and all(out == f"{client}={client}" for out in outputs), report
    assert report["assets"] > 0

    handler_names = {"sync handler", "gen handler", "async handler"}
    deadline = time.monotonic() + READ_TIMEOUT
    while True:
        stored = phoenix.spans(project, expected=1)
        handlers = [s for s in stored if s["name"] in handler_names]
        if len(handlers) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(handlers) == 8, sorted(s["name"] for s in stored)
    by_id = {s["context"]["span_id"]: s for s in stored}

    def chain(span: dict[str, Any]) -> list[dict[str, Any]]:
        above = []
        while span.get("parent_id") in by_id:
            span = by_id[span["parent_id"]]
            above.append(span)
        return above

    for span in handlers:
        above = chain(span)
        root = above[-1]
        assert "queue/join" in root["name"], [s["name"] for s in above]
        assert root["attributes"]["test.request_id"] == span["attributes"]["seen"]
        hops = [s["name"] for s in above if s["attributes"].get(keys.ATTR_RUNNER) == "gradio.queue"]
        assert hops == [f"gradio.queue {span['name'].split()[0]}_handler"]
    hop_spans = [s for s in stored if keys.ATTR_RUNNER in s["attributes"]]
    steps = {s["name"] for s in hop_spans if s["attributes"][keys.ATTR_RUNNER] == "anyio.to_thread"}
    assert steps == {"anyio.to_thread gen_handler", "anyio.to_thread sync_handler"}
    assert all("queue/join" in (chain(s) or [s])[-1]["name"] for s in hop_spans)
    assert [s["name"] for s in stored if s.get("status_code") == "ERROR"] == []
