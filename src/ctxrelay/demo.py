"""``ctxrelay demo``: run the demo app (:mod:`ctxrelay.demo_app`) without, then with ctxrelay.

The same two runs as ``make demo``: first plain ``python`` (griptape listeners lost
in every other thread), then under ``ctxrelay run`` with the trace-tree exporter (all
there, and the trees on stderr).  The app ships in the wheel; the frameworks it serves
and calls are the ``demo`` extra (griptape, FastAPI, uvicorn, httpx, Gradio and its
client), named in one message when missing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ctxrelay.version import __version__

__all__ = ["APP_MODULE", "NEEDS", "main"]

USAGE = """\
usage: ctxrelay demo [PATH]

Run the demo app (default: the ctxrelay.demo_app module; or the script PATH) twice:
without ctxrelay, then with `ctxrelay run` and OTEL_TRACES_EXPORTER=ctxrelay_tree.
Its frameworks: pip install 'ctxrelay[demo]'.
"""

APP_MODULE = "ctxrelay.demo_app"
#: What the demo app imports: the ``demo`` extra of pyproject.toml (module names).
NEEDS = ("attrs", "griptape", "fastapi", "uvicorn", "httpx", "gradio", "gradio_client")
#: Ends by itself in a few seconds; this only guards against a wedged machine.
_TIMEOUT_S = 120


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
    if args:
        app = Path(args[0])
        if not app.is_file():
            print(f"ctxrelay demo: {app} not found", file=sys.stderr)
            return 2
        command, shown = [sys.executable, str(app)], str(app)
    else:
        command, shown = [sys.executable, "-m", APP_MODULE], f"-m {APP_MODULE}"
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"ctxrelay demo: the demo app needs {', '.join(missing)}, not installed here "
            "(the 'demo' extra): pip install "
            f"'ctxrelay-{__version__}-py3-none-any.whl[demo]' (the wheel of `make dist`), "
            "or '/path/to/ctxrelay[demo]' from a checkout",
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
        print(f"=== {title} {shown}", flush=True)
        try:
            done = subprocess.run(command, env=env, timeout=_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            print(f"ctxrelay demo: {shown} did not finish in {_TIMEOUT_S} s", file=sys.stderr)
            return 1
        if done.returncode:
            return done.returncode
    return 0
