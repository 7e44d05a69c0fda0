"""``ctxrelay demo``: run ``examples/demo_app.py`` without, then with ctxrelay.

The same two runs as ``make demo``: first plain ``python`` (griptape listeners lost
in every other thread), then under ``ctxrelay run`` with the trace-tree exporter (all
there, and the trees on stderr).  The demo app needs the ``frameworks`` extra
(griptape, FastAPI, uvicorn, httpx) and lives in the source checkout, not in the wheel.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["find_app", "main"]

USAGE = """\
usage: ctxrelay demo [PATH]

Run the demo app (default: examples/demo_app.py of this checkout) twice: without
ctxrelay, then with `ctxrelay run` and OTEL_TRACES_EXPORTER=ctxrelay_tree.
"""

_NEEDS = ("griptape", "fastapi", "uvicorn", "httpx", "gradio", "gradio_client")
#: Ends by itself in a few seconds; this only guards against a wedged machine.
_TIMEOUT_S = 120


def find_app() -> Path | None:
    """``examples/demo_app.py`` in the current directory or in this source checkout."""
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents[:3]):
        candidate = base / "examples" / "demo_app.py"
        if candidate.is_file():
            return candidate
    return None


def _environments() -> tuple[dict[str, str], dict[str, str]]:
    from ctxrelay.bootstrap import RUN_MARKER, SITE_DIR
    from ctxrelay.cli import run_environment

    base = dict(os.environ)
    # "Without" must really be without, even when this command itself runs under
    # `ctxrelay run` or with CTXRELAY_ENABLED=1 in the shell.
    without = {k: v for k, v in base.items() if k != RUN_MARKER}
    without["CTXRELAY_ENABLED"] = "0"
    paths = [p for p in without.get("PYTHONPATH", "").split(os.pathsep) if p and p != SITE_DIR]
    if paths:
        without["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        without.pop("PYTHONPATH", None)

    with_ = run_environment({k: v for k, v in base.items() if k != "CTXRELAY_ENABLED"})
    with_.setdefault("OTEL_TRACES_EXPORTER", "ctxrelay_tree")  # a user's choice (otlp) wins
    with_.setdefault("OTEL_SERVICE_NAME", "ctxrelay-demo")
    return without, with_


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    app = Path(args[0]) if args else find_app()
    if app is None or not app.is_file():
        print(
            "ctxrelay demo: examples/demo_app.py not found. The demo app is not in the "
            "wheel: it lives in the source checkout (examples/demo_app.py) and needs the "
            "'frameworks' extra. From a checkout: make demo, or ctxrelay demo "
            "path/to/examples/demo_app.py.",
            file=sys.stderr,
        )
        return 2
    missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"ctxrelay demo: the demo needs {', '.join(missing)}: "
            "pip install 'ctxrelay[frameworks]'",
            file=sys.stderr,
        )
        return 2
    without, with_ = _environments()
    runs = (
        ("1/2 without ctxrelay: python", without),
        ("2/2 with ctxrelay: ctxrelay run python", with_),
    )
    for index, (title, env) in enumerate(runs):
        if index:
            print(flush=True)
        print(f"=== {title} {app}", flush=True)
        try:
            command = [sys.executable, str(app)]
            done = subprocess.run(command, env=env, timeout=_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            print(f"ctxrelay demo: {app} did not finish in {_TIMEOUT_S} s", file=sys.stderr)
            return 1
        if done.returncode:
            return done.returncode
    return 0
