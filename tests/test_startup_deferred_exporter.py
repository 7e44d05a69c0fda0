"""An installed trace exporter is imported and built with the first span, not at start-up.

Real subprocesses under ``CTXRELAY_ENABLED=1``.  The OTLP exporter's network stack
(``requests``, ``urllib3``, ``ssl``) is not loaded by start-up, so an application that
monkey-patches after it started (``celery worker -P gevent``:
tests/test_runner_celery_gevent.py) patches ``ssl`` before anything imported it; the
spans still reach the collector.  An exporter that fails to import or to build gives one
stderr line when the first span ends, and the application runs on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activation_support import base_env, run

PROBE = """\
import json, sys
from opentelemetry import trace

at_start = sorted(m for m in ("ssl", "requests", "urllib3") if m in sys.modules)
with trace.get_tracer("probe").start_as_current_span("request"):
    pass
print("PROBE " + json.dumps({"at_start": at_start}), flush=True)
print("APP RAN", flush=True)
sys.exit(3)
"""


def _probe(stdout: str) -> dict:
    (line,) = [x for x in stdout.splitlines() if x.startswith("PROBE ")]
    return json.loads(line[len("PROBE ") :])


def test_the_otlp_exporter_is_not_imported_at_start_up_and_still_exports(
    tmp_path: Path,
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from otlp_receiver import Receiver

    (tmp_path / "probe.py").write_text(PROBE)
    with Receiver() as otlp:
        bare = run(["python", "probe.py"], base_env(otlp.env()), tmp_path)
        assert bare.returncode == 3 and _probe(bare.stdout)["at_start"] == []
        result = run(["python", "probe.py"], base_env(otlp.env(), CTXRELAY_ENABLED="1"), tmp_path)
        assert result.returncode == 3, result.stderr
        assert _probe(result.stdout)["at_start"] == []  # as bare: nothing of the network stack
        assert result.stderr == ""
        spans = otlp.wait_for(1, where=lambda s: s["name"] == "request")
        assert [s["name"] for s in spans] == ["request"]  # exported at exit, over OTLP


BROKEN = {
    "constructor": "class Exporter:\n    def __init__(self):\n"
    "        raise RuntimeError('no collector configured')\n",
    "import": "raise ImportError('this exporter is broken')\n",
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_an_exporter_that_fails_to_build_gives_one_line_and_the_app_runs(
    tmp_path: Path, broken: str
) -> None:
    site = tmp_path / "site"
    info = site / "broken_exporter-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-exporter\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_traces_exporter]\nbroken = broken_exporter:Exporter\n"
    )
    (site / "broken_exporter.py").write_text(BROKEN[broken])
    (tmp_path / "probe.py").write_text(PROBE)
    env = base_env(PYTHONPATH=str(site), OTEL_TRACES_EXPORTER="broken")
    bare = run(["python", "probe.py"], env, tmp_path)
    assert bare.returncode == 3 and bare.stderr == ""

    result = run(["python", "probe.py"], {**env, "CTXRELAY_ENABLED": "1"}, tmp_path)
    assert result.returncode == 3 and "APP RAN" in result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "OTEL_TRACES_EXPORTER='broken'" in lines[0] and "failed to load" in lines[0]
    assert "context is still carried into threads" in lines[0]
