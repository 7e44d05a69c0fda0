"""SDK configuration from ``OTEL_*`` under a start-up activation (``ctxrelay run``).

Without ctxrelay the probe app has no SDK at all (a proxy provider, nothing exported);
under ``ctxrelay run`` the SDK's own configurator sets it up from the standard variables.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from activation_support import CTXRELAY, base_env, carried, lost, probe_of, run, write_probe
from ctxrelay import attributes


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_probe(tmp_path / "app")


def _console_spans(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects ConsoleSpanExporter printed, in order."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    index = 0
    while (start := stdout.find("{\n", index)) != -1:
        obj, index = decoder.raw_decode(stdout, start)
        if isinstance(obj, dict) and "context" in obj:
            found.append(obj)
    return found


def test_resource_and_sampler_from_standard_variables(app_dir: Path) -> None:
    env = base_env(
        OTEL_SERVICE_NAME="checkout",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,team=payments",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.5",
    )
    plain = probe_of(run(["python", "app.py"], env, app_dir))
    assert plain["provider"] == "ProxyTracerProvider" and plain["resource"] is None

    report = probe_of(run([CTXRELAY, "run", "python", "app.py"], env, app_dir))
    assert report["provider"] in ("TracerProvider", "StartupTracerProvider")
    assert report["resource"]["service.name"] == "checkout"
    assert report["resource"]["deployment.environment"] == "test"
    assert report["resource"]["team"] == "payments"
    assert "TraceIdRatioBased{0.5}" in report["sampler"]


def test_console_exporter_gets_every_span_flushed_at_exit(app_dir: Path) -> None:
    """The probe exits right after its spans end, long before the batch delay (5 s)."""
    env = base_env(
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="probe-svc",
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    plain = run(["python", "app.py"], env, app_dir)
    assert _console_spans(plain.stdout) == []

    result = run([CTXRELAY, "run", "python", "app.py"], env, app_dir)
    report = probe_of(result)
    exported = _console_spans(result.stdout)
    assert len(exported) == 3, [s["name"] for s in exported]
    (root,) = [s for s in exported if s["name"] == "request"]
    hops = {
        s["attributes"][attributes.ATTR_RUNNER]: s
        for s in exported
        if attributes.ATTR_RUNNER in s["attributes"]
    }
    assert sorted(hops) == ["Thread", "ThreadPoolExecutor"]
    assert root["context"]["trace_id"] == "0x" + report["root_trace"]
    for runner, thread_prefix in (("Thread", "probe-worker"), ("ThreadPoolExecutor", "probe-pool")):
        hop = hops[runner]
        assert hop["context"]["trace_id"] == root["context"]["trace_id"]
        assert hop["parent_id"] == root["context"]["span_id"]
        assert hop["attributes"][attributes.THREAD_NAME].startswith(thread_prefix)
        assert hop["attributes"][attributes.ATTR_ORIGIN_THREAD_NAME] == "MainThread"
        assert hop["resource"]["attributes"]["service.name"] == "probe-svc"


def test_sdk_disabled_keeps_propagation_only(app_dir: Path) -> None:
    env = base_env(OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="console")
    result = run([CTXRELAY, "run", "python", "app.py"], env, app_dir)
    report = probe_of(result)
    assert report["provider"] == "ProxyTracerProvider"
    assert report["instrumented"] and report["seen"]["thread"]["request_id"] == "r-42"
    assert _console_spans(result.stdout) == []


def _besides_probe(result: Any) -> str:
    text = result.stdout + result.stderr
    return "\n".join(line for line in text.splitlines() if not line.startswith("CTXRELAY_PROBE "))


def test_default_exporter_is_the_trace_tree(app_dir: Path) -> None:
    env = base_env(OTEL_TRACES_EXPORTER=None)  # type: ignore[arg-type]
    assert _besides_probe(run(["python", "app.py"], env, app_dir)).strip() == ""

    result = run([CTXRELAY, "run", "python", "app.py"], env, app_dir)
    tree = _besides_probe(result)
    assert probe_of(result)["root_trace"] in tree, tree
    assert "probe-worker" in tree and "probe-pool" in tree


def test_provider_set_by_users_sitecustomize_is_kept(app_dir: Path, tmp_path: Path) -> None:
    user_site = tmp_path / "usersite"
    user_site.mkdir()
    (user_site / "sitecustomize.py").write_text(
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.resources import Resource\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "resource = Resource.create({'service.name': 'from-user'})\n"
        "trace.set_tracer_provider(TracerProvider(resource=resource))\n"
    )
    env = base_env(
        PYTHONPATH=str(user_site), OTEL_SERVICE_NAME="from-env", OTEL_TRACES_EXPORTER="console"
    )
    result = run([CTXRELAY, "run", "python", "app.py"], env, app_dir)
    report = probe_of(result)
    assert report["resource"]["service.name"] == "from-user"
    assert carried(report)
    assert "Overriding of current TracerProvider" not in result.stderr
    assert _console_spans(result.stdout) == []  # the user's provider has no exporter


def test_unusable_exporter_does_not_stop_the_app(app_dir: Path) -> None:
    env = base_env(OTEL_TRACES_EXPORTER="no_such_exporter")
    result = run([CTXRELAY, "run", "python", "app.py", "3"], env, app_dir)
    assert result.returncode == 3
    report = probe_of(result)
    assert report["instrumented"] and report["seen"]["pool"]["request_id"] == "r-42"
    assert "no_such_exporter" in result.stderr
    # the one line names what this environment does accept
    (line,) = [one for one in result.stderr.splitlines() if "no_such_exporter" in one]
    allowed = line.split("allowed values here: ", 1)[1].split(". No tracer")[0].split(", ")
    expected = {"ctxrelay_tree", "console", "none"}
    try:  # the default protocol's exporter, in the full venv (not in the light ones)
        grpc = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None
    except ModuleNotFoundError:
        grpc = False
    if grpc:
        expected |= {"otlp", "otlp_proto_grpc"}
    assert expected <= set(allowed)
    assert not lost(report)
