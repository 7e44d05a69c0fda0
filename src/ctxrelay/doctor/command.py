"""``ctxrelay doctor CMD [ARGS...]``: run CMD like ``ctxrelay run``, with the doctor on.

The environment is ``ctxrelay run``'s plus ``CTXRELAY_DOCTOR=1`` (kept if it already
names a ``.json`` file), so every Python process CMD starts reports at its own exit.
CMD replaces this process (``exec``): the exit status, signals and pid are CMD's own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ctxrelay import cli

__all__ = ["USAGE", "environment", "main"]

USAGE = """\
usage: ctxrelay doctor [--] CMD [ARGS...]

Run CMD like `ctxrelay run` and, when each Python process it starts exits, print the
context-loss report to stderr: hand-overs per runner (carried, traced, with no active
span), starts that bypassed the patches, threads that pinned a context, work that ran
long after its request ended, and the settings in effect.
  ctxrelay doctor python app.py
  CTXRELAY_DOCTOR=report.json ctxrelay doctor python app.py    (JSON instead)
  CTXRELAY_DOCTOR_LATE=2 CTXRELAY_DOCTOR_PINNED=10 ctxrelay doctor uvicorn app:app
The exit status is CMD's own; 127 if CMD is not found, 126 if it cannot be executed.
See docs/doctor.md.
"""


def main(argv: Sequence[str]) -> int:
    return cli.launch(argv, USAGE, "ctxrelay doctor", environment)


def environment() -> dict[str, str]:
    """``ctxrelay run``'s environment, with the doctor on."""
    from ctxrelay.bootstrap import RUN_MARKER

    env = cli.run_environment(dict(os.environ))
    env[RUN_MARKER] = "doctor"  # still "on" for the bootstrap; names the report's activation
    if not env.get("CTXRELAY_DOCTOR", "").strip().lower().endswith(".json"):
        env["CTXRELAY_DOCTOR"] = "1"
    return env
