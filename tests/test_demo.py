"""The demo app, run as ``ctxrelay demo`` runs it: without ctxrelay, then under ``ctxrelay run``.

``ctxrelay demo`` itself, from an installed wheel, is in ``tests/test_wheel.py``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ctxrelay.demo import NEEDS

ROOT = Path(__file__).resolve().parent.parent
APP = ["-m", "ctxrelay.demo_app"]
HANDLERS = (
    "threading.Thread",
    "ThreadPoolExecutor",
    "asyncio run_in_executor",
    "FastAPI def endpoint",
    "FastAPI async endpoint",
    "Gradio sync handler",
    "Gradio generator handler",
    "Gradio async handler",
)
_MISSING = [m for m in NEEDS if importlib.util.find_spec(m) is None]
#: The demo app serves FastAPI and Gradio apps, called with httpx and gradio_client.
needs_frameworks = pytest.mark.skipif(
    bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed (the frameworks extra)"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTXRELAY_", "OTEL_"))}
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _row(stdout: str, handler: str) -> str:
    row = re.compile(rf"^[✓✗] {re.escape(handler)}\s")
    (line,) = [line for line in stdout.splitlines() if row.match(line)]
    return line


@needs_frameworks
def test_without_ctxrelay_the_listeners_are_lost_and_with_it_they_are_there() -> None:
    without = _run([sys.executable, *APP], _env())
    assert "ctxrelay OFF" in without.stdout
    assert _row(without.stdout, "direct call").endswith("delivered")
    for handler in HANDLERS:
        row = _row(without.stdout, handler)
        assert row.startswith("✗") and row.endswith("LOST"), row
        assert re.search(r"\s0\s+LOST$", row), "no listener in that thread"
    assert "── trace" not in without.stderr

    with_ = _run(
        [sys.executable, "-m", "ctxrelay.cli", "run", sys.executable, *APP],
        _env(OTEL_TRACES_EXPORTER="ctxrelay_tree"),
    )
    assert "ctxrelay ON" in with_.stdout
    for handler in ("direct call", *HANDLERS):
        row = _row(with_.stdout, handler)
        assert row.startswith("✓") and re.search(r"\s1\s+delivered$", row), row
    assert "all 9 handlers saw the listener" in with_.stdout

    # The trees on stderr show where the context went.
    trees = with_.stderr
    assert trees.count("── trace") >= 3, trees  # the demo, and one per HTTP request
    assert "MainThread → worker-1" in trees
    assert re.search(r"⇢ ThreadPoolExecutor handle .*\[MainThread → pool_0, waited", trees)
    assert re.search(r"⇢ run_in_executor handle .*\[MainThread → asyncio_", trees)
    assert re.search(r"\[uvicorn-server → AnyIO worker thread, waited", trees)
    # Gradio: the join request -> the queue hop -> the handler -> the listener, one tree
    # (or the request, then its continuation under the request's span).
    for handler, hop in (
        ("sync_handler", "⇢ anyio.to_thread sync_handler"),
        ("gen_handler", "⇢ anyio.to_thread gen_handler"),
        ("async_handler", None),
    ):
        piece = _piece_with(trees, f"⇢ gradio.queue {handler}")
        assert "POST /gradio_api/queue/join" in piece, piece
        if hop is not None:
            assert hop in piece, piece
        assert f"handle Gradio {handler.split('_')[0].replace('gen', 'generator')} handler" in piece
        assert "✉ griptape listener on_event" in piece, piece
    assert "not exported" not in trees
    # docs/configuration.md shows the `demo` trace: still what the demo prints.
    (demo,) = [p for p in trees.split("── trace ") if p.partition("\n")[2].startswith("demo ")]
    assert _skeleton(demo) == _skeleton(_documented_demo_tree())


def _skeleton(tree: str) -> list[str]:
    """A tree's lines but its header, every figure (durations with their unit, ms or s
    as the run was quick or slow; waits; thread numbers) as #."""
    return [re.sub(r"\d+(\.\d+)?( m?s\b)?", "#", line) for line in tree.strip().splitlines()[1:]]


def _documented_demo_tree() -> str:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```text\n(── trace .*?)```", text, re.DOTALL)
    (tree,) = [b for b in blocks if b.partition("\n")[2].startswith("demo ")]
    return tree


def _piece_with(trees: str, needle: str) -> str:
    """The trace (its pieces joined: the request and its continuation) holding ``needle``."""
    pieces = [p for p in trees.split("── trace ") if p.strip()]
    by_trace: dict[str, list[str]] = {}
    for piece in pieces:
        by_trace.setdefault(piece.split(" ", 1)[0], []).append(piece)
    (found,) = ["".join(ps) for ps in by_trace.values() if any(needle in p for p in ps)]
    return found


def test_ctxrelay_demo_explains_a_missing_app(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ctxrelay.cli", "demo", str(tmp_path / "nope.py")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and f"{tmp_path / 'nope.py'} not found" in done.stderr


def test_help_piped_into_head_ends_quietly() -> None:
    """``ctxrelay -h | head -1``: no BrokenPipeError traceback when the reader leaves."""
    ctxrelay = Path(sys.executable).with_name("ctxrelay")
    done = subprocess.run(
        f"'{ctxrelay}' -h | head -1; '{ctxrelay}' --help | true",
        shell=True,  # a fixed command line: the pipe is the point
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.startswith("usage: ctxrelay")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


pytestmark = pytest.mark.timeout(180)
