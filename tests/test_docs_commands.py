"""Every command in the shell blocks of README.md and docs/*.md, run as a user would.

Each ```bash / ```sh block is cut into its commands (``\\`` continuations joined, comments
dropped; a block's ``export`` lines go before each later command of the block).  Every
command is run by ``bash`` in a temporary directory holding the files the docs call
``app.py``, ``web.py``, ``mypackage`` and ``myapp.context`` (the probe app of the activation
tests: a ContextVar and a span handed to a thread and a pool), with this venv first on
PATH, and must exit 0; the commands in :data:`CASES` also say what they must print or
send.  A command is run by default: one that cannot run here is in :data:`NOT_RUN` with
the reason (a new block that needs Docker fails until someone says so there).  Ports the
docs name are replaced by free ones on 127.0.0.1 (:attr:`Case.rewrite`); nothing leaves
the machine.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from activation_support import (
    TIMEOUT,
    base_env,
    carried,
    lost,
    probes,
    run_server_until_probe,
    write_probe,
)
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = ("bash", "sh", "shell", "console")


@dataclass(frozen=True)
class DocCommand:
    doc: str  #: "README.md", "docs/jaeger.md"
    line: int  #: where the command starts
    text: str  #: the command, normalized by shlex (comments dropped, quoting canonical)
    exports: tuple[str, ...]  #: the block's ``export`` lines above it

    def script(self) -> str:
        return "\n".join([*self.exports, self.text])


def _commands(name: str, text: str) -> Iterator[DocCommand]:
    """The commands of the shell blocks in ``text`` (the Markdown file ``name``)."""
    block: str | None = None  # the open block's language; None outside blocks
    exports: list[str] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            block, exports = (line.strip().strip("`").strip() if block is None else None), []
            continue
        if block not in SHELLS:
            continue
        if not pending:
            start = number
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        tokens, pending = shlex.split(pending, comments=True), ""
        if not tokens:
            continue
        command = shlex.join(tokens)
        if tokens[0] == "export":
            exports.append(command)
        else:
            yield DocCommand(name, start, command, tuple(exports))


def doc_commands() -> list[DocCommand]:
    return [
        command
        for doc in DOCS
        for command in _commands(doc.relative_to(ROOT).as_posix(), doc.read_text("utf-8"))
    ]


# --- what each command must do --------------------------------------------------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    cwd: Path
    spans: list[dict[str, Any]] = field(default_factory=list)  #: what the receiver got

    @property
    def report(self) -> dict[str, Any]:
        found = probes(self.stdout)
        assert len(found) == 1, f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        return found[0]


def _carried(result: Result) -> None:
    assert carried(result.report), result.report


def _carried_with_tree(result: Result) -> None:
    _carried(result)
    assert "── trace" in result.stderr and "⇢ Thread work" in result.stderr, result.stderr


def _lost(result: Result) -> None:
    assert lost(result.report), result.report


def _doctor_report(result: Result) -> None:
    _carried(result)
    assert "── ctxrelay doctor" in result.stderr and "1. Hand-overs" in result.stderr, result.stderr


def _doctor_json(result: Result) -> None:
    _carried(result)
    report = json.loads((result.cwd / "report.json").read_text(encoding="utf-8"))
    assert report["schema"] == "ctxrelay.doctor/1" and report["hand_overs"], report


def _no_warning(result: Result) -> None:
    _carried(result)
    assert "ctxrelay:" not in result.stderr, result.stderr  # no ConfigWarning


def _exported(service: str | None = None) -> Callable[[Result], None]:
    """The receiver got the probe's span and both hop spans, in one trace."""

    def check(result: Result) -> None:
        _carried(result)
        names = {span["name"] for span in result.spans}
        # (Also under opentelemetry-instrument, whose threading instrumentor hands the
        # pool a closure of its own: the hop is named after the user's function.)
        assert {"request", "Thread work", "ThreadPoolExecutor work"} <= names, names
        assert len({span["trace_id"] for span in result.spans}) == 1, result.spans
        if service is not None:
            assert {s["resource"].get("service.name") for s in result.spans} == {service}

    return check


@dataclass(frozen=True)
class Case:
    check: Callable[[Result], None]
    #: (text in the command, replacement); ``{port}`` is a free port, ``{receiver}`` the
    #: OTLP receiver's endpoint.
    rewrite: tuple[tuple[str, str], ...] = ()
    #: environment the docs leave to the user's shell (a collector, a port)
    env: Mapping[str, str] = field(default_factory=dict)
    server: bool = False  #: runs until stopped: wait for the probe line, then SIGTERM
    needs: tuple[str, ...] = ()  #: modules that must be importable (else skip)


OTLP = ("opentelemetry.exporter.otlp.proto.http", "opentelemetry.proto")
TO_RECEIVER = (("http://localhost:4318", "{receiver}"),)

CASES: dict[str, Case] = {
    "ctxrelay run python app.py": Case(_carried_with_tree),
    "ctxrelay run python -m mypackage": Case(_carried),
    "ctxrelay run uvicorn app:app --port 8000": Case(
        _carried, rewrite=(("--port 8000", "--port {port}"),), server=True, needs=("uvicorn",)
    ),
    "ctxrelay run flask --app web run --reload": Case(
        _carried, env={"FLASK_RUN_PORT": "{port}"}, server=True, needs=("flask",)
    ),
    "CTXRELAY_ENABLED=1 python app.py": Case(_carried_with_tree),
    # opentelemetry-distro's default exporter is OTLP: the collector is the test's receiver.
    "opentelemetry-instrument python app.py": Case(
        _exported(),
        env={
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "{receiver}",
        },
        needs=OTLP,
    ),
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=ctxrelay opentelemetry-instrument python app.py": Case(
        _lost, env={"OTEL_TRACES_EXPORTER": "none"}
    ),
    "OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "
    "OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 ctxrelay run python app.py": Case(
        _exported(), rewrite=TO_RECEIVER, needs=OTLP
    ),
    "ctxrelay doctor python app.py": Case(_doctor_report),
    "ctxrelay doctor uvicorn app:app": Case(
        _carried, env={"UVICORN_PORT": "{port}"}, server=True, needs=("uvicorn",)
    ),
    "CTXRELAY_DOCTOR=1 CTXRELAY_ENABLED=1 python app.py": Case(_doctor_report),
    "CTXRELAY_DOCTOR=report.json ctxrelay run python app.py": Case(_doctor_json),
    "CTXRELAY_PROCESS_VARS=myapp.context:REQUEST_ID,myapp.context:TENANT "
    "ctxrelay run python app.py": Case(_no_warning),
}
#: docs/jaeger.md: the same command after the block's exports (service "checkout").
JAEGER = Case(_exported("checkout"), rewrite=TO_RECEIVER, needs=OTLP)

_SUITE = "the test suite itself (or a part of it): CI runs it, not a test inside it"
_INSTALL = (
    "installs into the current environment; tests/test_wheel.py installs the wheel of "
    "`make dist` into a fresh venv, with its extras, and runs `ctxrelay demo` there"
)
NOT_RUN: dict[str, str] = {
    "make demo": "Gradio and uvicorn, twice (~20 s): tests/test_demo.py runs the same two runs",
    "make test": _SUITE,
    "make test-slow": _SUITE,
    "make matrix": _SUITE + " (minutes, on every interpreter)",
    ".ci/run": _SUITE,
    "make lint": "CI's lint leg (`.ci/run lint`) runs it; mypy takes a minute here",
    "make bench": "CPU-heavy benchmarks (minutes); speed is never measured in the suite",
    "make foreign-suites": "foreign suites: 30-40 minutes per Python",
    ".venv/bin/python benchmarks/foreign_suites.py --suite test_thread --venv .venv-3.13": (
        "a foreign suite (minutes) in .venv-3.13, which only `make foreign-suites` builds"
    ),
    ".venv/bin/python benchmarks/foreign_suites.py --reuse": "all foreign suites: 30-40 minutes",
    ".venv-3.14t/bin/python benchmarks/run.py --quick --reps 5 --no-hotpath --no-write "
    "--configs bare off sampled": "a benchmark (minutes) in the 3.14t matrix venv",
    "PYTHON_THREAD_INHERIT_CONTEXT=0 .venv-3.14/bin/python benchmarks/run.py --quick --reps 5 "
    "--no-hotpath --no-write --configs bare off sampled": "a benchmark in the 3.14 matrix venv",
    "make dist": "writes dist/ in the checkout: tests/test_wheel.py runs it with DIST=<tmp>",
    "pip install /path/to/ctxrelay": _INSTALL,
    "pip install '/path/to/ctxrelay[otlp]'": _INSTALL,
    "pip install 'dist/ctxrelay-0.1.0-py3-none-any.whl[otlp]'": _INSTALL,
    "pip install 'dist/ctxrelay-0.1.0-py3-none-any.whl[demo]'": _INSTALL,
    "ctxrelay demo": "Gradio and uvicorn, twice (~20 s): tests/test_wheel.py runs it",
    "pip install opentelemetry-distro": "from PyPI (no network here); the test extra has it",
    "pip install ctxrelay opentelemetry-exporter-otlp": (
        "from PyPI (no network here; ctxrelay is not on PyPI): the otlp extra has the exporter"
    ),
    "docker run --rm --name jaeger -p 16686:16686 -p 4317:4317 -p 4318:4318 "
    "cr.jaegertracing.io/jaegertracing/jaeger:2.15.0": "Docker and an image registry",
    "ctxrelay run gradio app.py": (
        "gradio's reload mode watches files until stopped and imports gradio (seconds): "
        "tests/test_activation_run.py::test_gradio_cli runs `ctxrelay run gradio` on an app"
    ),
    "CTXRELAY_PROCESS_VARS=myapp.context:REQUEST_ID,myapp.context:TENANT ctxrelay run celery "
    "-A myapp worker -P prefork": (
        "a Celery worker needs a broker (redis) and runs until stopped: "
        "tests/test_runner_celery.py starts prefork workers under activation"
    ),
}

COMMANDS = doc_commands()


def _case(command: DocCommand) -> Case:
    if command.doc == "docs/jaeger.md" and command.exports:
        return JAEGER
    return CASES.get(command.text, Case(lambda result: None))


def _unique() -> list[DocCommand]:
    """Each command once (README repeats `ctxrelay run python app.py`)."""
    seen: dict[tuple[str, tuple[str, ...]], DocCommand] = {}
    for command in COMMANDS:
        seen.setdefault((command.text, command.exports), command)
    return list(seen.values())


# --- the files the commands use -----------------------------------------------------

APP = """\
import sys

from probe import probe


async def app(scope, receive, send):  # `uvicorn app:app`: probes once started
    if scope["type"] == "lifespan":
        await receive()
        probe("uvicorn")
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})


if __name__ == "__main__":
    probe("app")
    sys.exit(0)
"""

WEB = """\
import os

from flask import Flask

from probe import probe

app = Flask(__name__)
if os.environ.get("WERKZEUG_RUN_MAIN") == "true":  # the reloader's child, which serves
    probe("flask")
"""


def _workdir(path: Path) -> Path:
    write_probe(path)
    (path / "app.py").write_text(APP)
    (path / "web.py").write_text(WEB)
    (path / "mypackage").mkdir()
    (path / "mypackage" / "__init__.py").write_text("")
    (path / "mypackage" / "__main__.py").write_text("from probe import probe\nprobe('module')\n")
    (path / "myapp").mkdir()
    (path / "myapp" / "__init__.py").write_text("")
    (path / "myapp" / "context.py").write_text(
        "import contextvars\n"
        "REQUEST_ID = contextvars.ContextVar('request_id')\n"
        "TENANT = contextvars.ContextVar('tenant')\n"
    )
    return path


def _env() -> dict[str, str]:
    """The user's shell: this venv first on PATH, no OTEL_* or CTXRELAY_* of the suite's."""
    env = base_env()
    del env["OTEL_TRACES_EXPORTER"]  # the docs describe the defaults
    env.update(OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    return env


def _id(command: DocCommand) -> str:
    return f"{command.doc}:{command.line}:{command.text[:60]}"


@pytest.mark.parametrize("command", _unique(), ids=_id)
def test_doc_command(command: DocCommand, tmp_path: Path) -> None:
    if command.text in NOT_RUN:
        pytest.skip(f"not run here: {NOT_RUN[command.text]}")
    case = _case(command)
    missing = [m for m in case.needs if importlib.util.find_spec(m.split(".")[0]) is None]
    missing += [m for m in case.needs if "." in m and _absent(m)]
    if missing:
        pytest.skip(f"{', '.join(sorted(set(missing)))} not installed")
    cwd = _workdir(tmp_path / "work")
    receiver = None
    if case.needs == OTLP:
        from otlp_receiver import Receiver

        receiver = Receiver().__enter__()
    try:
        values = {"port": str(free_port()), "receiver": receiver.endpoint if receiver else ""}
        script = command.script()
        for old, new in case.rewrite:
            assert old in script, f"{command.doc}:{command.line}: {old!r} is gone: update CASES"
            script = script.replace(old, new.format(**values))
        env = _env()
        env.update({k: v.format(**values) for k, v in case.env.items()})
        if case.server:
            report, output = run_server_until_probe(["bash", "-c", script], env, cwd)
            result = Result(0, f"CTXRELAY_PROBE {json.dumps(report)}", output, cwd)
        else:
            done = subprocess.run(
                ["bash", "-c", script],
                env=env,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            result = Result(done.returncode, done.stdout, done.stderr, cwd)
            assert done.returncode == 0, (
                f"{command.doc}:{command.line}: `{command.text}` exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        if receiver is not None:
            result.spans = receiver.wait_for(3, timeout=30)
        case.check(result)
    finally:
        if receiver is not None:
            receiver.__exit__(None, None, None)


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


def test_the_blocks_are_found() -> None:
    docs = {command.doc for command in COMMANDS}
    assert {"README.md", "docs/activation.md", "docs/jaeger.md"} <= docs, docs
    assert len(COMMANDS) >= 30


def test_every_listed_command_is_still_in_the_docs() -> None:
    """A command removed from the docs leaves no entry behind (nor a reason to skip)."""
    texts = {command.text for command in COMMANDS}
    assert set(NOT_RUN) - texts == set()
    assert set(CASES) - texts == set()
    assert all(reason.strip() for reason in NOT_RUN.values())


def test_the_splitter_joins_continuations_and_drops_comments() -> None:
    text = (
        "text\n```bash\nexport A=1   # set\nA=2 \\\n  echo 'a b'  # say\n```\n"
        "```python\nprint(1)\n```\n```text\nnot a command\n```\n```sh\n# only\ntrue\n```\n"
    )
    assert list(_commands("x.md", text)) == [
        DocCommand("x.md", 4, "A=2 echo 'a b'", ("export A=1",)),
        DocCommand("x.md", 15, "true", ()),
    ]
