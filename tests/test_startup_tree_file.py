"""``CTXRELAY_TREE_FILE`` never blocks the exit, and a failed write is reported once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from activation_support import base_env

APP = """\
import sys
from opentelemetry import trace
tracer = trace.get_tracer("app")
for i in range(3):
    with tracer.start_as_current_span(f"request-{i}"):
        pass
print("APP DONE", flush=True)
sys.exit(4)
"""

# A hang shows as this timeout; a normal exit takes well under a second.
HANG = 25


def _run(tmp_path: Path, tree_file: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(APP)
    env = base_env(OTEL_TRACES_EXPORTER=None, CTXRELAY_ENABLED="1")  # type: ignore[arg-type]
    if tree_file is not None:
        env["CTXRELAY_TREE_FILE"] = tree_file
    return subprocess.run(
        [sys.executable, "app.py"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG,
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_nobody_reads_does_not_block_the_exit(tmp_path: Path) -> None:
    default = _run(tmp_path, None)
    assert default.returncode == 4 and "request-2" in default.stderr  # trees on stderr

    fifo = tmp_path / "trees.fifo"
    os.mkfifo(fifo)
    result = _run(tmp_path, str(fifo))
    assert result.returncode == 4 and "APP DONE" in result.stdout
    warnings = [x for x in result.stderr.splitlines() if "CTXRELAY_TREE_FILE" in x]
    assert len(warnings) == 1 and "Writing to stderr instead" in warnings[0], result.stderr
    assert "request-2" in result.stderr  # the trees were not lost


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failing_write_is_reported_once(tmp_path: Path) -> None:
    result = _run(tmp_path, "/dev/full")
    assert result.returncode == 4 and "APP DONE" in result.stdout
    warnings = [x for x in result.stderr.splitlines() if "CTXRELAY_TREE_FILE" in x]
    assert len(warnings) == 1, result.stderr
    assert "No space left on device" in warnings[0] and "trees are lost" in warnings[0]


def test_a_regular_file_gets_the_trees(tmp_path: Path) -> None:
    out = tmp_path / "trees.txt"
    result = _run(tmp_path, str(out))
    assert result.returncode == 4 and result.stderr == ""
    assert out.read_text().count("request-") == 3
