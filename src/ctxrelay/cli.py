"""The ``ctxrelay`` command: ``ctxrelay run CMD [ARGS...]``, ``--version``, ``--help``.

Subcommands live in :data:`COMMANDS` as ``"module:function"`` strings, imported only
when chosen (``ctxrelay --version`` stays fast).  A subcommand receives the arguments
after its name and returns the exit status; adding one is one entry in the table.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ctxrelay.version import __version__

__all__ = ["COMMANDS", "main", "run"]


class Command(NamedTuple):
    target: str  #: "module:function", the function takes argv and returns the exit status
    summary: str


COMMANDS: dict[str, Command] = {
    "run": Command(
        "ctxrelay.cli:run", "run a command with ctxrelay activated in every Python it starts"
    ),
    "doctor": Command(
        "ctxrelay.doctor.command:main",
        "run a command like `run` and report where context was lost, pinned or late",
    ),
    "demo": Command("ctxrelay.demo:main", "run the demo app without, then with ctxrelay"),
}

RUN_USAGE = """\
usage: ctxrelay run [--] CMD [ARGS...]

Run CMD with ctxrelay activated at start-up, like opentelemetry-instrument:
  ctxrelay run python app.py
  ctxrelay run python -m mypackage
  ctxrelay run uvicorn app:app        (any console script of a Python app)

ctxrelay's sitecustomize goes first on PYTHONPATH (your own sitecustomize still runs)
and CTXRELAY_RUN=1 is set; child Python processes (reloaders, workers) inherit both.
The OpenTelemetry SDK is configured from the OTEL_* variables unless the app, or
opentelemetry-instrument, has set a tracer provider.  CTXRELAY_ENABLED=0 turns it off.
The exit status is CMD's own; 127 if CMD is not found, 126 if it cannot be executed.
"""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: ctxrelay [--version] [--help] COMMAND [ARGS...]",
        "",
        "Carry contextvars into every thread, pool task and framework runner; trace each hop.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "ctxrelay COMMAND --help shows a command's help."]
    return "\n".join(lines)


def _load(command: Command) -> Callable[[Sequence[str]], int]:
    module, _, function = command.target.partition(":")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctxrelay`` console script."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # ``ctxrelay -h | head``: the reader left.  Python would print a traceback when it
        # flushes stdout at exit; point stdout at nothing instead (the recipe of the
        # ``signal`` module's docs) and end quietly, as a shell tool does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        stream = sys.stdout if args else sys.stderr
        print(_usage(), file=stream)
        stream.flush()  # a closed pipe shows here, inside main(), not at exit
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"ctxrelay {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"ctxrelay: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return _load(command)(args[1:])


def run_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment ``ctxrelay run`` gives its command."""
    from ctxrelay.bootstrap import RUN_MARKER, SITE_DIR

    env = dict(environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != SITE_DIR]
    env["PYTHONPATH"] = os.pathsep.join([SITE_DIR, *paths])
    env[RUN_MARKER] = "1"
    return env


def run(argv: Sequence[str]) -> int:
    """``ctxrelay run CMD [ARGS...]``: exec CMD (found on PATH) in the bootstrap environment."""
    return launch(argv, RUN_USAGE, "ctxrelay run", lambda: run_environment(dict(os.environ)))


def launch(
    argv: Sequence[str], usage: str, name: str, environment: Callable[[], dict[str, str]]
) -> int:
    """``[--] CMD [ARGS...]`` or ``-h``/``--help``: exec CMD with ``environment()``.

    The one argument parsing of the commands that run another (``run``, ``doctor``).
    """
    args = list(argv)
    if args and args[0] == "--":
        args = args[1:]
    elif args and args[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not args:
        print(usage, file=sys.stderr)
        return 2
    return execute(args, environment(), name)


def execute(args: Sequence[str], env: dict[str, str], name: str) -> int:
    """exec ``args`` (found on PATH) with ``env``; returns only if it cannot be executed."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # exec replaces this process: signals, the exit status and the pid are CMD's own.
        os.execvpe(args[0], list(args), env)
    except FileNotFoundError:
        print(f"{name}: command not found: {args[0]}", file=sys.stderr)
        return 127
    except PermissionError as exc:
        print(f"{name}: cannot execute {args[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    except OSError as exc:
        print(f"{name}: cannot execute {args[0]}: {exc}", file=sys.stderr)
        return 126
    return 0  # pragma: no cover - execvpe does not return


if __name__ == "__main__":  # python -m ctxrelay.cli
    sys.exit(main())
