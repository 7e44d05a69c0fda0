"""Test suites nobody here wrote, run bare and with ctxrelay active, outcome by outcome.

ctxrelay promises that turning it on changes one thing only: the context that work
handed to another thread starts with.  The strongest check of that promise is other
people's test suites for the very machinery ctxrelay patches.  This script runs each
suite three times with the same interpreter and the same installed packages:

``bare``
    no ``CTXRELAY_*`` / ``OTEL_*`` variable: ctxrelay is installed but inactive (its
    ``.pth`` line only reads ``os.environ``).
``env``
    ``CTXRELAY_ENABLED=1``: the start-up activation of the ``.pth`` (patches at
    interpreter start-up, configures the OpenTelemetry SDK from ``OTEL_*`` defaults).
``root``
    a ``sitecustomize`` (written by this script into the work directory and put on
    ``PYTHONPATH``) sets a ``TracerProvider`` (default sampler, a synchronous processor
    counting ended spans), calls ``ctxrelay.instrument()`` and attaches a sampled root
    span to the main thread's context, so every hand-over records a hop span.  Each
    process writes its span count to the work directory at exit: the report shows the
    hop spans recorded, proof that ctxrelay was on the path.
``span``
    ``root`` without ``instrument()``: ``root``'s baseline for the pytest suites, which
    use OpenTelemetry themselves (an ambient root span is visible to starlette's
    OpenTelemetry middleware tests with or without ctxrelay).  ``env`` and the CPython
    suites' ``root`` are compared with ``bare``.

It collects per-test outcomes (``pass``/``fail``/``error``/``skip``) from JUnit XML
(``python -m test --junit-xml``, pytest ``--junitxml``), the per-file results of
CPython's regrtest (``passed``, ``failed``, ``env changed``, ``crashed``...), and prints
every difference from ``bare``.  Each difference is then re-run (``--recheck`` times in
both modes) to tell a stable difference from a flaky test.

Suites (see docs/reliability.md, "Other people's test suites"):

* CPython's ``test_threading``, ``test_thread``, ``test_concurrent_futures``,
  ``test_asyncio`` (its sub-modules, so ``-j`` spreads them) and ``test_socketserver``
  from the interpreter's own ``test`` package.  A file the interpreter's install lacks
  (pyenv's 3.11.7 ships no ``test_concurrent_futures.py``) is taken from Debian's
  ``libpython3.X-testsuite`` (``apt-get download``, unpacked into the work directory)
  and run with ``--testdir``; the report names the file and its version.
* anyio's ``tests/test_to_thread.py`` and ``tests/test_from_thread.py`` and starlette's
  whole ``tests/`` from the sdists of the installed versions (``pip download
  --no-binary :all:``).  Only ``tests/`` and ``pyproject.toml`` are copied, so the
  installed package is the one tested.  Their test-only dependencies are the
  ``foreign`` extra (``pip install -e '.[foreign]'``).

    .venv/bin/python benchmarks/foreign_suites.py                 # everything (30-40 min a Python)
    .venv/bin/python benchmarks/foreign_suites.py --suite test_thread --venv .venv-3.13
    make foreign-suites                                           # builds .venv-3.13 too

Exit status 0 when every difference that is not flaky is listed in ``EXPLAINED`` below
(each is explained in docs/reliability.md), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("bare", "env", "root", "span")
#: What each mode is compared with.  ``span`` is ``root`` without ``instrument()``: the
#: same tracer provider and ambient root span, for suites that use OpenTelemetry
#: themselves (starlette's OpenTelemetry middleware tests see the root span as their
#: parent with or without ctxrelay).
BASELINE = {"env": "bare", "root": "bare", "span": "bare"}
CPYTHON_SUITES = (  # quickest first
    "test_thread",
    "test_threading",
    "test_socketserver",
    "test_concurrent_futures",
    "test_asyncio",
)
#: regrtest resources a suite needs.  test_socketserver asks for "network" as a whole but
#: only ever talks to ``socket_helper.HOST`` (localhost); no other suite gets it, since
#: test_asyncio's network tests reach outside hosts.
RESOURCES = {"test_socketserver": "network"}
#: CPython suites that are packages: run sub-module by sub-module (``-j`` spreads them).
SPLIT = ("test_asyncio", "test_concurrent_futures")
PYTEST_SUITES = {
    "anyio": ("anyio", ["tests/test_to_thread.py", "tests/test_from_thread.py"]),
    "starlette": ("starlette", ["tests"]),
}

#: Differences judged inherent, each explained in docs/reliability.md: (suite glob,
#: test-id glob, modes).  A stable difference not matched here makes the exit status 1.
EXPLAINED: list[tuple[str, str, tuple[str, ...]]] = [
    # The .pth activation imports threading before __main__ runs; the test's child
    # (python -I -c ...) inherits CTXRELAY_ENABLED=1 and asserts threading is not imported.
    ("test_threading", "*.ThreadTests.test_import_from_another_thread", ("env",)),
    # Starlette's OpenTelemetry middleware tests count the spans of a request: ctxrelay
    # adds the hop span of the sync endpoint's anyio.to_thread call (asyncio backend).
    # All pass with CTXRELAY_HOP_SPANS=0.
    ("starlette", "tests/middleware/test_opentelemetry.py::*[[]asyncio*", ("env", "root")),
]

ROOT_SITECUSTOMIZE = '''\
"""Written by benchmarks/foreign_suites.py: instrument() under a sampled root span."""


def _start():
    import atexit
    import os

    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    import ctxrelay

    ended = [0]

    class _Count(SpanExporter):
        def export(self, spans):
            ended[0] += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Count()))
    trace.set_tracer_provider(provider)
    if os.environ.get("FOREIGN_SUITES_INSTRUMENT") != "0":
        ctxrelay.instrument()
    root = provider.get_tracer("foreign_suites").start_span("foreign suite")
    context.attach(trace.set_span_in_context(root))
    out = os.environ.get("FOREIGN_SUITES_SPANS")

    def _report():
        if out:
            with open(os.path.join(out, "%d.spans" % os.getpid()), "w") as f:
                f.write("%d\\n" % ended[0])

    atexit.register(_report)


_start()
'''


@dataclass
class Run:
    """One suite in one mode: per-test outcomes, per-file results, spans, time."""

    tests: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None
    seconds: float = 0.0
    spans: int = 0
    processes: int = 0
    log: str = ""
    hung: str = ""


@dataclass
class Suite:
    name: str
    kind: str  # "regrtest" or "pytest"
    cwd: Path
    args: list[str]  # test names (regrtest) or paths (pytest)
    source: str  # where the tests came from, for the report
    testdir: Path | None = None
    #: per file (regrtest) or per test (pytest), seconds: set from the bare run's time
    timeout: int = 0


# --------------------------------------------------------------------------- sources


def _py(venv: Path, code: str) -> str:
    python = str(venv / "bin" / "python")
    return subprocess.check_output(
        [python, "-c", code], text=True, stderr=subprocess.DEVNULL
    ).strip()


def _debian_testsuite(work: Path, minor: str) -> Path | None:
    """Unpack Debian's libpython3.X-testsuite into the work directory; its test dir."""
    dest = work / f"debian-python{minor}"
    test_dir = dest / "usr" / "lib" / f"python{minor}" / "test"
    if test_dir.is_dir():
        return test_dir
    if shutil.which("apt-get") is None:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(
        ["apt-get", "download", f"libpython{minor}-testsuite"],
        cwd=dest,
        capture_output=True,
        text=True,
    )
    debs = sorted(dest.glob(f"libpython{minor}-testsuite_*.deb"))
    if got.returncode != 0 or not debs:
        print(f"  apt-get download libpython{minor}-testsuite failed: {got.stderr.strip()}")
        return None
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(dest)], check=True)
    return test_dir if test_dir.is_dir() else None


def cpython_suite(venv: Path, name: str, work: Path) -> Suite | None:
    version = _py(venv, "import platform; print(platform.python_version())")
    minor = ".".join(version.split(".")[:2])
    stdlib_test = Path(_py(venv, "import os, test; print(os.path.dirname(test.__file__))"))
    cwd = work / "cpython-run"
    cwd.mkdir(parents=True, exist_ok=True)
    found = stdlib_test / name
    if found.is_dir() or found.with_suffix(".py").is_file():
        names = _split(found, f"test.{name}")
        return Suite(
            name,
            "regrtest",
            cwd,
            names,
            f"CPython {version}: Lib/test/{found.name}{'' if found.is_dir() else '.py'}",
        )
    deb = _debian_testsuite(work, minor)
    if deb is None:
        print(f"  {name}: not in {stdlib_test} and no Debian testsuite for {minor}: skipped")
        return None
    deb_found = deb / name
    if not (deb_found.is_dir() or deb_found.with_suffix(".py").is_file()):
        return None
    testdir = work / f"testdir-{minor}-{name}"
    src = deb_found if deb_found.is_dir() else deb_found.with_suffix(".py")
    # Renamed: regrtest treats "test_concurrent_futures" as a package to split (it is one
    # in 3.11.7, which pyenv's install left out), and would look for a directory.
    copy = f"{name}_debian"
    if not testdir.exists():
        testdir.mkdir(parents=True)
        if src.is_dir():
            shutil.copytree(src, testdir / copy)
        else:
            shutil.copy2(src, testdir / f"{copy}.py")
    debs = sorted((work / f"debian-python{minor}").glob("*.deb"))
    label = debs[-1].name if debs else "Debian testsuite"
    return Suite(
        name,
        "regrtest",
        cwd,
        _split(testdir / copy, copy),
        f"{src.name} from {label} (not shipped by this {version} install; run as {copy}) "
        f"by {version}",
        testdir=testdir,
    )


def _split(path: Path, dotted: str) -> list[str]:
    if not path.is_dir() or path.name not in SPLIT:
        return [dotted]
    return sorted(f"{dotted}.{p.stem}" for p in path.glob("test_*.py"))


def pytest_suite(venv: Path, name: str, work: Path) -> Suite | None:
    dist, paths = PYTEST_SUITES[name]
    python = str(venv / "bin" / "python")
    try:
        version = _py(venv, f"import importlib.metadata as m; print(m.version({dist!r}))")
    except subprocess.CalledProcessError:
        print(f"  {name}: {dist} not installed in {venv}: skipped")
        return None
    base = work / f"{dist}-{version}"
    if not (base / "tests").is_dir():
        sdists = work / "sdists"
        sdists.mkdir(parents=True, exist_ok=True)
        archive = next(iter(sdists.glob(f"{dist}-{version}.tar.gz")), None)
        if archive is None:
            subprocess.run(
                [
                    python,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-binary",
                    ":all:",
                    "--no-deps",
                    "-d",
                    str(sdists),
                    f"{dist}=={version}",
                ],
                check=True,
            )
            archive = next(sdists.glob(f"{dist}-{version}.tar.gz"))
        with tarfile.open(archive) as tar:
            top = f"{dist}-{version}/"
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(top + "tests/") or m.name == top + "pyproject.toml"
            ]
            tar.extractall(work, members=members)
    return Suite(name, "pytest", base, paths, f"{dist} {version} sdist: {' '.join(paths)}")


# --------------------------------------------------------------------------- running


def _env(mode: str, work: Path, spans: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTXRELAY_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    if mode == "env":
        env["CTXRELAY_ENABLED"] = "1"
    elif mode in ("root", "span"):
        if mode == "span":
            env["FOREIGN_SUITES_INSTRUMENT"] = "0"
        site_dir = work / "root-site"
        site_dir.mkdir(parents=True, exist_ok=True)
        (site_dir / "sitecustomize.py").write_text(ROOT_SITECUSTOMIZE)
        env["PYTHONPATH"] = str(site_dir)
        env["FOREIGN_SUITES_SPANS"] = str(spans)
    return env


def command(suite: Suite, venv: Path, xml: Path, jobs: int, timeout: int, only=None, ignore=()):
    python = str(venv / "bin" / "python")
    if suite.kind == "regrtest":
        # -v: unittest's per-test lines survive a worker killed by the timeout (JUnit does not)
        cmd = [python, "-m", "test", "-v", f"-j{jobs}", "--timeout", str(timeout)]
        cmd += ["--junit-xml", str(xml)]
        for test_id in ignore:
            cmd += ["-i", test_id]
        if suite.name in RESOURCES:
            cmd += ["-u", RESOURCES[suite.name]]
        if suite.testdir is not None:
            cmd += ["--testdir", str(suite.testdir)]
        if only:
            for test_id in only[1]:
                cmd += ["-m", test_id]
            return cmd + list(only[0])
        return cmd + suite.args
    cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
    cmd += ["--junitxml", str(xml), f"--timeout={timeout}", "-q"]
    return cmd + (list(only) if only else suite.args)


def _default_signals() -> None:
    """SIGINT as in a terminal: a job started in the background inherits it ignored, and
    test_threading's ``interrupt_main`` tests then fail in every mode."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run(suite: Suite, venv: Path, mode: str, out: Path, args, only=None, tag="") -> Run:
    """Run once; a regrtest file cut short by a hang is re-run without the hung test.

    The hung test is recorded as ``hang`` (the test regrtest's verbose output shows as
    started and never finished); up to ``args.hangs`` of them per run.
    """
    result = _run_once(suite, venv, mode, out, args, only, tag, [])
    ignore: list[str] = []
    while suite.kind == "regrtest" and result.hung and len(ignore) < args.hangs:
        hung = result.hung
        ignore.append(hung)
        print(f"    ({mode}: {hung} hangs; re-running its file without it)", flush=True)
        file = _regrtest_file(suite, hung)
        again = _run_once(
            suite,
            venv,
            mode,
            out,
            args,
            ([file], only[1] if only else []),
            tag + f".h{len(ignore)}",
            ignore,
        )
        for test_id, outcome in again.tests.items():
            result.tests.setdefault(test_id, outcome)
        result.tests[hung] = "hang"
        result.seconds += again.seconds
        result.spans += again.spans
        result.processes += again.processes
        result.hung = again.hung
    return result


def _run_once(suite, venv, mode, out, args, only, tag, ignore) -> Run:
    name = f"{suite.name}.{mode}{tag}"
    xml = out / f"{name}.xml"
    spans = out / f"{name}.spans"
    shutil.rmtree(spans, ignore_errors=True)
    spans.mkdir(parents=True)
    xml.unlink(missing_ok=True)
    cmd = command(suite, venv, xml, args.jobs, suite.timeout or args.timeout, only, ignore)
    started = time.monotonic()
    log_path = out / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=suite.cwd,
            env=_env(mode, args.work, spans),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_default_signals,
            start_new_session=True,  # so a timeout can end the workers too
        )
        try:
            returncode: int | None = proc.wait(timeout=args.suite_timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: regrtest then ends its workers (each in a session of its own).
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            returncode = None
    result = Run(returncode=returncode, seconds=time.monotonic() - started, log=str(log_path))
    if xml.is_file():
        try:
            result.tests = parse_junit(xml, suite.kind)
        except ET.ParseError as exc:
            result.files["<junit>"] = f"unreadable junit xml: {exc}"
    if suite.kind == "regrtest":
        text = log_path.read_text(errors="replace")
        result.files.update(parse_regrtest(text))
        finished, started_last = parse_verbose(text)
        for test_id, outcome in finished.items():
            result.tests.setdefault(test_id, outcome)
        if started_last and started_last not in result.tests:
            result.hung = started_last
    for f in spans.glob("*.spans"):
        result.processes += 1
        result.spans += int(f.read_text().strip() or 0)
    return result


# --------------------------------------------------------------------------- parsing


def parse_junit(path: Path, kind: str) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    rank = {"pass": 0, "skip": 1, "fail": 2, "error": 3}
    for case in ET.parse(path).getroot().iter("testcase"):
        if kind == "regrtest":
            test_id = case.get("name", "?")
        else:
            test_id = _pytest_node_id(case)
        outcome = "pass"
        for child in case:
            tag = {"failure": "fail", "error": "error", "skipped": "skip"}.get(child.tag)
            if tag and rank[tag] > rank[outcome]:
                outcome = tag
        if test_id in outcomes and rank[outcomes[test_id]] > rank[outcome]:
            continue
        outcomes[test_id] = outcome
    return outcomes


def _pytest_node_id(case: ET.Element) -> str:
    file = case.get("file") or ""
    classname = case.get("classname") or ""
    module = file[:-3].replace("/", ".") if file.endswith(".py") else ""
    rest = classname[len(module) :].lstrip(".") if module and classname.startswith(module) else ""
    parts = (
        [file or classname] + ([rest.replace(".", "::")] if rest else []) + [case.get("name", "?")]
    )
    return "::".join(parts)


_PROGRESS = re.compile(r"\[\s*\d+/\d+(?:/\d+)?\]\s+(\S+)\s+(.*)$")


def parse_regrtest(text: str) -> dict[str, str]:
    """Per-file results from regrtest's progress lines (the last line for a file wins)."""
    files: dict[str, str] = {}
    for line in text.splitlines():
        match = _PROGRESS.search(line)
        if not match:
            continue
        name, rest = match.groups()
        rest = rest.split(" -- ")[0].strip()
        rest = re.sub(r"\s*\(\d+(\.\d+)?\s*(ms|sec|min)[^)]*\)\s*$", "", rest)
        files[name.removeprefix("test.")] = _file_state(rest)
    return files


_VERBOSE_START = re.compile(r"^(\w+) \(((?:[\w]+\.)+\1)\)")
_VERBOSE_RESULT = re.compile(
    r"\.\.\. (ok|FAIL|ERROR|skipped|expected failure|unexpected success)\b"
)
_VERBOSE_OUTCOME = {"ok": "pass", "FAIL": "fail", "ERROR": "error", "skipped": "skip"}
_VERBOSE_OUTCOME |= {"expected failure": "skip", "unexpected success": "fail"}


def parse_verbose(text: str) -> tuple[dict[str, str], str]:
    """unittest's verbose lines: outcomes, and the test started last if it never finished."""
    outcomes: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        start = _VERBOSE_START.match(line)
        if start:
            current = start.group(2)
        result = _VERBOSE_RESULT.search(line)
        if result and current:
            outcomes.setdefault(current, _VERBOSE_OUTCOME[result.group(1)])
            current = ""
    return outcomes, current


def _file_state(rest: str) -> str:
    words = ("env changed", "crashed", "timed out", "timeout", "no tests ran", "run no tests")
    for word in (*words, "non-zero exit"):
        if word in rest:
            return word
    return re.sub(r"\s*\(.*\)$", "", rest).strip() or "?"


# --------------------------------------------------------------------------- compare


def differences(base: Run, other: Run) -> tuple[list, list]:
    tests = [
        (t, base.tests.get(t, "absent"), other.tests.get(t, "absent"))
        for t in sorted(set(base.tests) | set(other.tests))
        if base.tests.get(t) != other.tests.get(t)
    ]
    files = [
        (f, base.files.get(f, "absent"), other.files.get(f, "absent"))
        for f in sorted(set(base.files) | set(other.files))
        if base.files.get(f) != other.files.get(f)
    ]
    return tests, files


def recheck(suite, venv, mode, base, tests, files, out, args) -> dict[str, str]:
    """Re-run what differed, ``args.recheck`` times in ``base`` and ``mode``: stable or flaky."""
    verdicts: dict[str, str] = {}
    if args.recheck <= 0:
        return verdicts
    groups: dict[str, list[str]] = {}
    plain = ("pass", "fail", "error", "skip")
    # A hang or a test that did not run is not re-run: a hang costs the whole timeout,
    # and a missing test follows from its file's result, shown beside it.
    for test_id, before, after in tests[: args.recheck_max]:
        if before not in plain or after not in plain:
            continue
        if suite.kind == "regrtest":
            groups.setdefault(_regrtest_file(suite, test_id), []).append(test_id)
        else:
            groups.setdefault(test_id.split("::")[0], []).append(test_id)
    for name, _, _ in files:
        qualified = _qualified(suite, name)
        if not name.startswith("<") and not tests and qualified not in groups:
            groups.setdefault(qualified, [])
    for n, (file, ids) in enumerate(sorted(groups.items())):
        seen: dict[str, dict[str, set[str]]] = {}
        for attempt in range(args.recheck):
            for m in (base, mode):
                only = ([file], ids) if suite.kind == "regrtest" else (ids or [file])
                res = run(suite, venv, m, out, args, only=only, tag=f".recheck{n}.{attempt}")
                for test_id in ids:
                    seen.setdefault(test_id, {}).setdefault(m, set()).add(
                        res.tests.get(test_id, "absent")
                    )
                key = file.removeprefix("test.")
                seen.setdefault(key, {}).setdefault(m, set()).add(res.files.get(key, "absent"))
        for test_id, by_mode in seen.items():
            b, o = by_mode.get(base, set()), by_mode.get(mode, set())
            if len(b) == 1 and len(o) == 1 and b != o:
                verdicts[test_id] = f"stable: {base} {b.pop()}, {mode} {o.pop()}"
            elif b == o and len(b) == 1:
                verdicts[test_id] = f"not reproduced (both {b.pop()})"
            else:
                verdicts[test_id] = f"flaky: {base} {sorted(b)}, {mode} {sorted(o)}"
    return verdicts


def _regrtest_file(suite: Suite, test_id: str) -> str:
    for name in suite.args:
        if test_id == name or test_id.startswith(name + "."):
            return name
    return suite.args[0]


def _qualified(suite: Suite, name: str) -> str:
    for arg in suite.args:
        if arg.removeprefix("test.") == name:
            return arg
    return name


def _in_file(test_id: str, file: str) -> bool:
    return test_id.removeprefix("test.").startswith(file + ".")


def explained(suite: str, test_id: str, mode: str) -> bool:
    return any(
        fnmatch.fnmatch(suite, s) and fnmatch.fnmatch(test_id, t) and mode in modes
        for s, t, modes in EXPLAINED
    )


# --------------------------------------------------------------------------- main


def _counts(r: Run) -> str:
    c = {k: 0 for k in ("pass", "fail", "error", "skip", "hang")}
    for outcome in r.tests.values():
        c[outcome] = c.get(outcome, 0) + 1
    rc = "timeout" if r.returncode is None else r.returncode
    spans = f", {r.spans} spans in {r.processes} processes" if r.processes else ""
    return (
        f"{len(r.tests)} tests: {c['pass']} pass, {c['fail']} fail, {c['error']} error, "
        f"{c['skip']} skip, {c['hang']} hang; exit {rc}; {r.seconds:.0f} s{spans}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--venv",
        action="append",
        type=Path,
        help="venv with ctxrelay installed (repeatable; default .venv and .venv-3.13 if present)",
    )
    parser.add_argument(
        "--suite",
        action="append",
        help="suite to run (repeatable): " + ", ".join(CPYTHON_SUITES + tuple(PYTEST_SUITES)),
    )
    parser.add_argument("--mode", action="append", choices=MODES[1:3], help="default: env and root")
    parser.add_argument("--jobs", type=int, default=2, help="regrtest -j (default 2)")
    parser.add_argument("--timeout", type=int, default=300, help="per test file/test, seconds")
    parser.add_argument("--timeout-min", type=int, default=90, help="lower bound, seconds")
    parser.add_argument("--hangs", type=int, default=4, help="hung tests skipped per run")
    parser.add_argument("--suite-timeout", type=int, default=2400, help="per suite run, seconds")
    parser.add_argument("--recheck", type=int, default=2, help="re-runs of each difference")
    parser.add_argument("--recheck-max", type=int, default=12, help="differences re-run per suite")
    parser.add_argument("--work", type=Path, default=ROOT / ".foreign-suites")
    parser.add_argument("--json", type=Path, help="write all outcomes here")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the saved outcome of a suite and mode"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args.work = args.work.resolve()
    venvs = args.venv or [v for v in (ROOT / ".venv", ROOT / ".venv-3.13") if v.is_dir()]
    names = args.suite or list(CPYTHON_SUITES[:3]) + list(PYTEST_SUITES) + list(CPYTHON_SUITES[3:])
    modes = args.mode or list(MODES[1:3])
    report: dict = {}
    unexplained = 0
    for venv in venvs:
        venv = venv.resolve() if venv.is_absolute() else (ROOT / venv)
        version = _py(venv, "import platform; print(platform.python_version())")
        ctxrelay_at = _py(venv, "import ctxrelay, os; print(os.path.dirname(ctxrelay.__file__))")
        print(f"\n##### Python {version} ({venv}); ctxrelay from {ctxrelay_at}")
        out = args.work / f"results-{version}"
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name in CPYTHON_SUITES:
                suite = cpython_suite(venv, name, args.work)
            elif name in PYTEST_SUITES:
                if venv.name != ".venv" and not args.suite:
                    continue  # the sdist suites run on the default venv unless asked
                suite = pytest_suite(venv, name, args.work)
            else:
                parser.error(f"unknown suite {name}")
            if suite is None:
                continue
            print(f"\n=== {name} [{suite.source}]", flush=True)
            runs = {}
            wanted = list(modes)
            if suite.kind == "pytest" and "root" in wanted:
                wanted.append("span")  # root's baseline (see BASELINE)
            for mode in ["bare", *wanted]:
                saved = out / f"{name}.{mode}.json"
                if args.reuse and saved.is_file():
                    runs[mode] = Run(**json.loads(saved.read_text()))
                else:
                    runs[mode] = run(suite, venv, mode, out, args)
                    saved.write_text(json.dumps(dataclasses.asdict(runs[mode])))
                print(f"  {mode:5} {_counts(runs[mode])}", flush=True)
                if mode == "bare":
                    # A hang must not cost the full --timeout per hung test: a file gets
                    # 5x the whole bare suite's time (at least --timeout-min).
                    suite.timeout = min(
                        args.timeout, max(args.timeout_min, int(5 * runs[mode].seconds))
                    )
            if not runs["bare"].tests:
                print(f"  bare ran no test (see {runs['bare'].log}): nothing to compare")
                unexplained += 1
            entry = report.setdefault(version, {}).setdefault(name, {"source": suite.source})
            entry["runs"] = {
                m: {"tests": r.tests, "files": r.files, "exit": r.returncode, "seconds": r.seconds}
                | {"spans": r.spans, "processes": r.processes, "log": r.log}
                for m, r in runs.items()
            }
            for mode in wanted:
                base = "span" if mode == "root" and "span" in runs else BASELINE[mode]
                tests, files = differences(runs[base], runs[mode])
                if not tests and not files:
                    print(f"  {mode}: same outcomes as {base}")
                    continue
                verdicts = recheck(suite, venv, mode, base, tests, files, out, args)
                print(f"  {mode}: {len(tests)} test(s) and {len(files)} file(s) differ from {base}")
                rows = [("test", *t) for t in tests] + [("file", *f) for f in files]
                entry.setdefault("differences", {})[mode] = []
                for what, item, before, after in rows:
                    verdict = verdicts.get(item, verdicts.get(item.removeprefix("test."), ""))
                    known = explained(name, item, mode)
                    if what == "file":
                        # A file's result follows from its tests': it is explained when
                        # the differences of its tests are (a file with none stands alone).
                        inside = [t for t, _, _ in tests if _in_file(t, item)]
                        inside_known = all(explained(name, t, mode) for t in inside)
                        known = known or (bool(inside) and inside_known)
                        if inside:
                            verdict = verdict or "follows from its tests"
                    if not known and (verdict.startswith("stable") or not verdict):
                        unexplained += 1
                    mark = " (explained)" if known else ""
                    line = f"    {what} {item}: {base} {before} -> {mode} {after}"
                    print(
                        textwrap.shorten(line, 400) + (f"  [{verdict}]" if verdict else "") + mark
                    )
                    entry["differences"][mode].append(
                        {"what": what, "id": item, base: before, mode: after}
                        | {"recheck": verdict, "explained": known}
                    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True))
    print(
        f"\n{unexplained} difference(s) neither explained in EXPLAINED nor flaky"
        " (or suites that ran no test)"
    )
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
