"""The application's own TracerProvider receives its spans and ctxrelay's (real subprocesses).

Each scenario runs the same app without ctxrelay, under ``ctxrelay.instrument()``, under
``CTXRELAY_ENABLED=1`` and under ``ctxrelay run``; the app installs its provider (with an
in-memory exporter) before or after its first threads start, and prints what reached it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activation_support import CTXRELAY, base_env, run

APP = """\
import json, sys, threading
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

mode, when = sys.argv[1], sys.argv[2]
if mode == "instrument":
    import ctxrelay
    ctxrelay.instrument()

module_tracer = trace.get_tracer("app.module")  # taken at import, before any provider


def request(label):
    with module_tracer.start_as_current_span(label):
        t = threading.Thread(target=lambda: trace.get_tracer("app").start_span("in-thread").end())
        t.start()
        t.join()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: None).result()


def install(name):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


if when == "after-threads":
    threading.Thread(target=lambda: None).start()  # a thread before the app's set-up
    ThreadPoolExecutor(1).submit(lambda: None).result()
mine = install("mine")
request("request")
if when == "replaced":
    # What a test harness does between tests (OpenTelemetry's own reset_trace_globals).
    from opentelemetry.util._once import Once
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    mine = install("second")
    request("request")
print("SPANS " + json.dumps(sorted(s.name for s in mine.get_finished_spans())), flush=True)
"""


def _spans(stdout: str) -> list[str]:
    (line,) = [x for x in stdout.splitlines() if x.startswith("SPANS ")]
    return json.loads(line[6:])


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def _run(app: Path, how: str, when: str) -> tuple[list[str], str]:
    env = base_env(OTEL_TRACES_EXPORTER=None)  # type: ignore[arg-type]
    cmd: list[str | Path] = ["python", "app.py", "plain" if how != "instrument" else how, when]
    if how == "pth":
        env["CTXRELAY_ENABLED"] = "1"
    elif how == "run":
        cmd = [CTXRELAY, "run", *cmd]
    result = run(cmd, env, app)
    assert result.returncode == 0, result.stderr
    return _spans(result.stdout), result.stderr


HOPS = ["Thread <lambda>", "ThreadPoolExecutor <lambda>"]


@pytest.mark.parametrize("how", ["instrument", "pth", "run"])
@pytest.mark.parametrize("when", ["before-threads", "after-threads", "replaced"])
def test_the_apps_provider_gets_its_spans_and_the_hops(app: Path, how: str, when: str) -> None:
    bare, bare_err = _run(app, "plain", when)
    # The app's spans, no hops.  Replaced: the module-level tracer stays with the first
    # provider it saw (the API's proxy tracers bind once), so the second gets one span.
    assert bare == (["in-thread"] if when == "replaced" else ["in-thread", "request"]), bare_err

    spans, stderr = _run(app, how, when)
    assert spans == sorted([*bare, *HOPS]), stderr
    assert "Overriding of current TracerProvider" not in stderr
    if how in ("pth", "run"):
        notices = [line for line in stderr.splitlines() if "TracerProvider" in line]
        assert len(notices) == 1 and "the application's" in notices[0], stderr
