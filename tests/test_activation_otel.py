"""``opentelemetry-instrument python app.py``: ctxrelay's ``opentelemetry_instrumentor``.

Run with the official ``threading`` instrumentor loaded too (both are installed): that one
carries only the OpenTelemetry context, so without ctxrelay the request's ContextVar is
lost in the workers while the trace is not; with both, everything is carried once, one
hop span per hand-over, and either can be uninstrumented first leaving the classes clean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from activation_support import (
    UNCARRIED,
    VENV_BIN,
    base_env,
    carried,
    probe_of,
    probes,
    run,
    write_probe,
)

OTEL_APP = """\
import json, sys, threading
import concurrent.futures.thread as pool_module
from concurrent.futures import ThreadPoolExecutor

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.threading import ThreadingInstrumentor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from probe import probe

#: wrapt 2.x: FunctionWrapper derives from BaseObjectProxy, no longer ObjectProxy
PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)

memory = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))


def wrapped_attributes():
    places = [(threading.Thread, "start"), (threading.Thread, "run"),
              (ThreadPoolExecutor, "submit")]
    found = [f"{o.__name__}.{a}" for o, a in places if isinstance(o.__dict__.get(a), PROXY)]
    for module, names in ((threading, ("_start_new_thread", "_start_joinable_thread")),
                          (pool_module, ("_WorkItem",))):
        found += [f"{module.__name__}.{n}" for n in names
                  if isinstance(getattr(module, n, None), PROXY)]
    return found


def step(label):
    report = probe(label)
    hops = [s for s in memory.get_finished_spans() if "ctxrelay.runner" in (s.attributes or {})]
    root = [s for s in memory.get_finished_spans() if s.name == "request"][-1]
    print("STEP " + json.dumps({
        "label": label,
        "hops": sorted(s.attributes["ctxrelay.runner"] for s in hops),
        "hop_parents_ok": all(s.parent is not None and s.parent.span_id == root.context.span_id
                              for s in hops),
        "wrapped": wrapped_attributes(),
    }), flush=True)
    memory.clear()


try:
    from ctxrelay.otel import CtxrelayInstrumentor
    ctxrelay_on = CtxrelayInstrumentor().is_instrumented_by_opentelemetry
except ImportError:
    ctxrelay_on = False
instrumentors = {"threading": ThreadingInstrumentor(), "ctxrelay": CtxrelayInstrumentor()}
print("LOADED " + json.dumps({
    "threading": instrumentors["threading"].is_instrumented_by_opentelemetry,
    "ctxrelay": ctxrelay_on,
    "provider": type(trace.get_tracer_provider()).__name__,
}), flush=True)
step("loaded")
for name in sys.argv[1:]:
    instrumentors[name].uninstrument()
    step("without " + name)
"""

ENV = dict(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
INSTRUMENT = str(VENV_BIN / "opentelemetry-instrument")


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = write_probe(tmp_path / "app")
    (directory / "otel_app.py").write_text(OTEL_APP)
    return directory


def _tagged(stdout: str, tag: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len(tag) + 1 :])
        for line in stdout.splitlines()
        if line.startswith(tag + " ")
    ]


def test_disabled_by_the_standard_variable_shows_the_loss(app_dir: Path) -> None:
    env = base_env(ENV, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="ctxrelay")
    result = run([INSTRUMENT, "python", "otel_app.py"], env, app_dir)
    (loaded,) = _tagged(result.stdout, "LOADED")
    assert loaded == {"threading": True, "ctxrelay": False, "provider": "TracerProvider"}, (
        result.stderr
    )
    (report,) = probes(result.stdout)
    # The threading instrumentor carries the trace, not the request's ContextVar.
    for key in ("thread", "pool"):
        assert report["seen"][key]["trace_id"] == report["root_trace"]
        assert report["seen"][key]["request_id"] == UNCARRIED[key]
    assert _tagged(result.stdout, "STEP")[0]["hops"] == []


@pytest.mark.parametrize("order", [("threading", "ctxrelay"), ("ctxrelay", "threading")])
def test_with_the_threading_instrumentor(app_dir: Path, order: tuple[str, str]) -> None:
    result = run([INSTRUMENT, "python", "otel_app.py", *order], base_env(ENV), app_dir)
    (loaded,) = _tagged(result.stdout, "LOADED")
    assert loaded == {"threading": True, "ctxrelay": True, "provider": "TracerProvider"}, (
        result.stderr
    )
    reports = probes(result.stdout)
    steps = _tagged(result.stdout, "STEP")
    assert len(reports) == len(steps) == 3, result.stdout + result.stderr

    # Both on: carried once, one hop span per hand-over, parented on the request.
    assert carried(reports[0])
    assert steps[0]["hops"] == ["Thread", "ThreadPoolExecutor"] and steps[0]["hop_parents_ok"]

    # One off: the other still does its own job.
    first = order[0]
    if first == "threading":
        assert carried(reports[1]) and steps[1]["hops"] == ["Thread", "ThreadPoolExecutor"]
    else:
        assert steps[1]["hops"] == []
        assert all(reports[1]["seen"][k]["request_id"] == UNCARRIED[k] for k in UNCARRIED)
        assert all(
            reports[1]["seen"][k]["trace_id"] == reports[1]["root_trace"]
            for k in ("thread", "pool")
        )

    # Both off: plain Python again, and no wrapper of either left behind.
    assert all(reports[2]["seen"][k]["request_id"] == UNCARRIED[k] for k in UNCARRIED)
    assert steps[2]["hops"] == [] and steps[2]["wrapped"] == []


def test_with_ctxrelay_enabled_too_the_distro_configures(app_dir: Path) -> None:
    """CTXRELAY_ENABLED=1 under opentelemetry-instrument: the .pth patches early but leaves
    the SDK to the distro's configurator (no "Overriding of current TracerProvider")."""
    env = base_env(ENV, CTXRELAY_ENABLED="1", OTEL_SERVICE_NAME="from-distro")
    result = run([INSTRUMENT, "python", "app.py"], env, app_dir)
    report = probe_of(result)
    assert carried(report) and report["activated_by"] == "pth"
    assert report["resource"]["service.name"] == "from-distro"
    assert "Overriding" not in result.stderr, result.stderr
