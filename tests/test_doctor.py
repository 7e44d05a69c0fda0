"""The context-loss doctor, end to end: real subprocesses running ``tests/doctor_app.py``.

The app does one of each thing the doctor reports (see its docstring); each test runs it
with the doctor off and on and compares: the app's own outcome (exit status, stdout) is
the same, and only the report is added.  Call sites are checked against the app's
``# MARK:`` lines, so a finding that names the wrong line fails.  Thresholds are lowered
(``CTXRELAY_DOCTOR_LATE`` / ``_PINNED`` = 0.5 s) so the app runs in about 2 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
APP = HERE / "doctor_app.py"
BIN = Path(sys.executable).parent
CTXRELAY = BIN / "ctxrelay"
SECRET = "s3cr3t-doctor-value-4711"  # planted in a ContextVar by the app
TIMEOUT = 120


def _marks() -> dict[str, int]:
    found: dict[str, int] = {}
    for number, line in enumerate(APP.read_text(encoding="utf-8").splitlines(), start=1):
        match = re.search(r"# MARK:([\w-]+)", line)
        if match:
            found[match.group(1)] = number
    return found


MARK = _marks()


def site(mark: str) -> str:
    return f"doctor_app.py:{MARK[mark]}"


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTXRELAY_", "OTEL_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OTEL_TRACES_EXPORTER"] = "none"
    env["OTEL_METRICS_EXPORTER"] = env["OTEL_LOGS_EXPORTER"] = "none"
    env["CTXRELAY_DOCTOR_LATE"] = "0.5"
    env["CTXRELAY_DOCTOR_PINNED"] = "0.5"
    env.update(extra)
    return env


def _run(args: list[str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        env=_env(**extra),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _section(report: str, number: int) -> str:
    """The lines of section ``number`` of a text report."""
    match = re.search(rf"^{number}\. .*?(?=^\d\. |^Hints|\Z)", report, re.S | re.M)
    assert match, report
    return match.group(0)


def _report_of(stderr: str) -> str:
    start = stderr.find("── ctxrelay doctor")
    assert start >= 0, stderr
    return stderr[start:]


def test_report_names_each_finding_with_its_call_site(tmp_path: Path) -> None:
    plain = _run([str(CTXRELAY), "run", "python", str(APP)], tmp_path)
    doctor = _run([str(CTXRELAY), "doctor", "python", str(APP)], tmp_path)

    # The app's own outcome is the same; only the report is added.
    assert plain.returncode == doctor.returncode == 3, doctor.stderr
    assert plain.stdout == "doctor loaded: False\n", plain.stdout
    assert doctor.stdout == "doctor loaded: True\n"
    assert "ctxrelay doctor" not in plain.stderr
    report = _report_of(doctor.stderr)
    assert "activated by ctxrelay doctor" in report

    hand_overs = _section(report, 1)
    rows = {
        line.split()[0]: line.split()[1:5]
        for line in hand_overs.splitlines()[2:]
        if not line.strip().startswith("bus ")
    }
    assert rows["ThreadPoolExecutor"][3] != "0", "submits outside any span: no hop span"
    assert rows["Thread"][2] == "2", "both threads started inside a span: traced"
    assert rows["run_in_executor"] == ["1", "1", "1", "0"], "counted once, not again by the pool"
    assert "_thread.start_new_thread" in rows
    if _has("griptape"):  # the test extra has it; listener buses are counted too
        assert "bus griptape: 2 dispatch(es) with listeners, 2 traced" in hand_overs

    bypassed = _section(report, 2)
    assert re.search(
        rf"foreign thread 'Dummy-\d+' at .*{site('foreign')} .*empty context", bypassed
    )
    assert re.search(rf"_thread.start_new_thread .*raw_work at .*{site('raw')} .*carried", bypassed)

    pinned = _section(report, 3)
    assert re.search(rf"'watcher' .*hold .*still held at exit.*{site('daemon')}", pinned), pinned
    assert re.search(rf"'poller' .*hold .*then let go.*{site('pinned')}", pinned), pinned
    held = [
        float(amount) * (1 if unit == "s" else 1e-3)
        for amount, unit in re.findall(r"held it ([\d.]+) (s|ms)", pinned)
    ]
    assert len(held) == 2 and held == sorted(held, reverse=True), f"worst first:\n{pinned}"

    late = _section(report, 4)
    assert re.search(rf"run_in_executor .*enrich [\d.]+ s late, at .*{site('late')}", late), late
    # Handed over inside the request, started after it ended: found when it starts.
    assert re.search(
        r"ThreadPoolExecutor __main__.export [\d.]+ m?s late: handed over in time, waited", late
    ), late

    hints = report[report.index("Hints") :]
    for setting in (
        "CTXRELAY_DETACH=ThreadPoolExecutor,run_in_executor",
        "CTXRELAY_HOP_SPANS=all",
        "ctxrelay.bind",
    ):
        assert setting in hints, hints
    assert len(report.splitlines()) < 40, "a few dozen lines"


def test_json_report_under_ctxrelay_run_follows_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    done = _run([str(CTXRELAY), "run", "python", str(APP)], tmp_path, CTXRELAY_DOCTOR=str(path))
    assert done.returncode == 3, done.stderr
    assert "ctxrelay doctor" not in done.stderr, "JSON instead of the text report"
    report = json.loads(path.read_text(encoding="utf-8"))
    _check_schema(report)
    assert report["activation"] == "ctxrelay run"
    assert report["thresholds"] == {"late_s": 0.5, "pinned_s": 0.5}
    late = {(entry["runner"], entry["function"]): entry for entry in report["late"]}
    assert set(late) == {
        ("run_in_executor", "__main__.enrich"),
        ("ThreadPoolExecutor", "__main__.export"),
    }, report["late"]
    enrich = late["run_in_executor", "__main__.enrich"]
    assert enrich["call_site"].endswith(f"{site('late')} (in background)"), enrich
    assert enrich["worst_s"] >= 0.5 and enrich["waited_s"] == 0, "late at the hand-over"
    export = late["ThreadPoolExecutor", "__main__.export"]
    # In time at the hand-over (the span was open): late only by its wait in the queue.
    assert export["call_site"] is None and export["waited_s"] >= export["worst_s"] >= 0.5
    kinds = {entry["kind"] for entry in report["bypassed"]}
    assert {"foreign_thread", "raw_thread"} <= kinds
    assert {pin["thread"] for pin in report["pinned"]} == {"watcher", "poller"}


def test_doctor_under_instrument_reports_threads_started_before_it(tmp_path: Path) -> None:
    done = _run(
        [sys.executable, str(APP)], tmp_path, CTXRELAY_DOCTOR="1", APP_INSTRUMENT="1", APP_EXIT="0"
    )
    assert done.returncode == 0, done.stderr
    report = _report_of(done.stderr)
    assert "activated by instrument()" in report
    bypassed = _section(report, 2)
    assert re.search(
        rf"started before activation 'early' .*early_worker at .*{site('early-now')}", bypassed
    ), bypassed
    assert "docs/activation.md" in report


def test_report_never_contains_a_contextvar_value(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    text = _run([str(CTXRELAY), "doctor", "python", str(APP)], tmp_path)
    as_json = _run(
        [str(CTXRELAY), "doctor", "python", str(APP)], tmp_path, CTXRELAY_DOCTOR=str(path)
    )
    assert text.returncode == as_json.returncode == 3
    assert "ctxrelay doctor" in text.stderr, "the positive control: a report was written"
    assert path.exists()
    for output in (text.stderr, text.stdout, path.read_text(encoding="utf-8")):
        assert SECRET not in output
        assert "request_id" not in output, "not even the variable's name unless skipped"


def test_hop_spans_all_turns_no_span_hand_overs_into_traces(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    default = _run([str(CTXRELAY), "run", "python", str(APP)], tmp_path, CTXRELAY_DOCTOR=str(path))
    before = json.loads(path.read_text(encoding="utf-8"))
    every = _run(
        [str(CTXRELAY), "run", "python", str(APP)],
        tmp_path,
        CTXRELAY_DOCTOR=str(path),
        CTXRELAY_HOP_SPANS="all",
    )
    after = json.loads(path.read_text(encoding="utf-8"))
    assert default.returncode == every.returncode == 3

    def pool(report: dict[str, Any]) -> dict[str, Any]:
        return next(row for row in report["hand_overs"] if row["runner"] == "ThreadPoolExecutor")

    assert pool(before)["no_active_span"] > 0
    assert any("CTXRELAY_HOP_SPANS=all" in hint for hint in before["hints"])
    assert pool(after)["no_active_span"] == 0
    assert pool(after)["traced"] == pool(after)["handed"]
    assert after["in_effect"]["hop_spans"].startswith("all")
    assert not any("CTXRELAY_HOP_SPANS=all" in hint for hint in after["hints"])


def test_settings_in_effect_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    done = _run(
        [str(CTXRELAY), "run", "python", str(APP)],
        tmp_path,
        CTXRELAY_DOCTOR=str(path),
        CTXRELAY_EXCLUDE="_thread,gradio",
        CTXRELAY_SKIP_VARS="db_session",
    )
    assert done.returncode == 3, done.stderr
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["in_effect"]["excluded"] == ["_thread", "gradio"]
    assert report["in_effect"]["skipped_vars"] == ["db_session"]
    assert "_thread.start_new_thread" not in {row["runner"] for row in report["hand_overs"]}
    assert any("CTXRELAY_EXCLUDE" in hint for hint in report["hints"])


@pytest.mark.parametrize("status", ["0", "3", "77"])
def test_exit_status_is_the_commands(tmp_path: Path, status: str) -> None:
    done = _run([str(CTXRELAY), "doctor", "python", str(APP)], tmp_path, APP_EXIT=status)
    assert done.returncode == int(status), done.stderr
    assert "ctxrelay doctor" in done.stderr


def test_missing_command_is_127(tmp_path: Path) -> None:
    done = _run([str(CTXRELAY), "doctor", "no-such-command-ctxrelay"], tmp_path)
    assert done.returncode == 127
    assert "ctxrelay doctor: command not found: no-such-command-ctxrelay" in done.stderr


def test_bad_thresholds_warn_once_and_use_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    done = _run(
        [str(CTXRELAY), "run", "python", str(APP)],
        tmp_path,
        CTXRELAY_DOCTOR=str(path),
        CTXRELAY_DOCTOR_LATE="soon",
        CTXRELAY_DOCTOR_PINNED="-1",
    )
    assert done.returncode == 3, done.stderr
    for variable in ("CTXRELAY_DOCTOR_LATE='soon'", "CTXRELAY_DOCTOR_PINNED='-1'"):
        assert done.stderr.count(variable) == 1, done.stderr
    assert "allowed values: a number of seconds greater than 0" in done.stderr
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["thresholds"] == {"late_s": 5.0, "pinned_s": 30.0}
    assert report["late"] == [] and report["pinned"] == [], "nothing is that late or long"


# --- the documented schema (docs/doctor.md) ----------------------------------------------
_TOP = {
    "schema": str,
    "ctxrelay": str,
    "python": str,
    "pid": int,
    "program": str,
    "activation": str,
    "duration_s": float,
    "ended_by": str,
    "thresholds": dict,
    "hand_overs": list,
    "dispatches": list,
    "bypassed": list,
    "pinned": list,
    "late": list,
    "in_effect": dict,
    "dropped": int,
    "hints": list,
}
_HAND_OVER = {
    "runner": str,
    "handed": int,
    "carried": int,
    "own_copy": int,
    "traced": int,
    "no_active_span": int,
    "unsampled": int,
    "spans_off": int,
    "not_traced_other": int,
}
_BYPASSED = {
    "kind": str,
    "call_site": (str, type(None)),
    "function": (str, type(None)),
    "thread": (str, type(None)),
    "carried": bool,
    "count": int,
    "detail": (str, type(None)),
}
_PINNED = {
    "runner": str,
    "function": str,
    "thread": (str, type(None)),
    "call_site": (str, type(None)),
    "held_s": float,
    "still_held": bool,
}
_LATE = {
    "runner": str,
    "function": str,
    "call_site": (str, type(None)),
    "count": int,
    "worst_s": float,
    "waited_s": float,
}
_IN_EFFECT = {
    "excluded": list,
    "skipped_vars": list,
    "detach": list,
    "hop_spans": str,
    "listener_spans": bool,
}


def _exactly(entry: dict[str, Any], shape: dict[str, Any], where: str) -> None:
    assert set(entry) == set(shape), (where, sorted(entry), sorted(shape))
    for key, kind in shape.items():
        assert isinstance(entry[key], kind), (where, key, entry[key])


def _check_schema(report: dict[str, Any]) -> None:
    _exactly(report, _TOP, "report")
    assert report["schema"] == "ctxrelay.doctor/1"
    _exactly(report["thresholds"], {"late_s": float, "pinned_s": float}, "thresholds")
    _exactly(report["in_effect"], _IN_EFFECT, "in_effect")
    for entry in report["dispatches"]:
        _exactly(entry, {"bus": str, "dispatched": int, "traced": int}, "dispatches")
    for key, shape in (
        ("hand_overs", _HAND_OVER),
        ("bypassed", _BYPASSED),
        ("pinned", _PINNED),
        ("late", _LATE),
    ):
        assert report[key], f"the app produces at least one {key} entry"
        for entry in report[key]:
            _exactly(entry, shape, key)
    kinds = {"raw_thread", "before_activation", "foreign_thread", "greenlet"}
    assert {entry["kind"] for entry in report["bypassed"]} <= kinds
    assert all(isinstance(hint, str) for hint in report["hints"])


GEVENT_APP = """
import contextvars, sys
from gevent import monkey

monkey.patch_all()
import threading

import gevent
import gevent.pool

var = contextvars.ContextVar("v", default="unset")
var.set("carried")
seen = []


def look(label):
    seen.append((label, var.get()))


thread = threading.Thread(target=look, args=("thread",))
thread.start()
thread.join()
for _ in range(3):
    gevent.spawn(look, "spawn").join()  # MARK:spawn
later = gevent.Greenlet(look, "greenlet")
later.start()  # MARK:start
gevent.pool.Pool(2).spawn(look, "pool").join()  # MARK:pool
if "ctxrelay" in sys.modules:
    import ctxrelay

    bound = ctxrelay.bind(look)
else:
    bound = look
gevent.spawn(bound, "bound").join()  # MARK:bound
later.join()
print(sorted(set(seen)))
"""


def _gevent_site(mark: str) -> str:
    lines = GEVENT_APP.splitlines()
    (number,) = [n for n, line in enumerate(lines, start=1) if f"# MARK:{mark}" in line]
    return f"gevent_app.py:{number}"


def test_gevent_greenlets_are_reported_with_their_call_sites(tmp_path: Path) -> None:
    pytest.importorskip("gevent")
    (tmp_path / "gevent_app.py").write_text(GEVENT_APP, encoding="utf-8")
    path = tmp_path / "report.json"
    command = [str(CTXRELAY), "run", "python", "gevent_app.py"]
    plain = _run(command, tmp_path)
    doctor = _run(command, tmp_path, CTXRELAY_DOCTOR=str(path))
    text = _run([str(CTXRELAY), "doctor", "python", "gevent_app.py"], tmp_path)
    # gevent replaced threading's start after ctxrelay patched it; ctxrelay wraps gevent's
    # in turn (ctxrelay.coexist), so the Thread carries, but a greenlet spawned directly
    # does not (unless spawned through ctxrelay.bind), with or without the doctor.
    outcome = (
        "[('bound', 'carried'), ('greenlet', 'unset'), ('pool', 'unset'), "
        "('spawn', 'unset'), ('thread', 'carried')]\n"
    )
    assert plain.returncode == doctor.returncode == text.returncode == 0, doctor.stderr
    assert plain.stdout == doctor.stdout == text.stdout == outcome
    report = json.loads(path.read_text(encoding="utf-8"))
    greenlets = {
        (entry["call_site"].split(" ")[0], entry["function"]): (entry["count"], entry["carried"])
        for entry in report["bypassed"]
        if entry["kind"] == "greenlet"
    }
    # One finding per spawn site, counted; the monkey-patched Thread is not one of them
    # (the thread runner carried it), and gevent's own frames (its Pool) are skipped.
    assert greenlets == {
        (_gevent_site("spawn"), "__main__.look"): (3, False),
        (_gevent_site("start"), "__main__.look"): (1, False),
        (_gevent_site("pool"), "__main__.look"): (1, False),
        (_gevent_site("bound"), "__main__.look"): (1, True),
    }, report["bypassed"]
    assert any("ctxrelay.bind" in hint and "gevent" in hint for hint in report["hints"])
    bypassed = _section(_report_of(text.stderr), 2)
    assert re.search(
        rf"gevent greenlet __main__.look at {_gevent_site('spawn')} \(in <module>\) ×3: "
        "empty context",
        bypassed,
    ), bypassed
    assert f"{_gevent_site('bound')} (in <module>) (carried by ctxrelay.bind)" in bypassed


# --- SIGTERM: the usual way a server is stopped ------------------------------------------
SIGTERM_APP = """
import os, signal, sys, threading, time

if os.environ.get("APP_INSTRUMENT") == "1":
    import ctxrelay

    ctxrelay.instrument()
if os.environ.get("APP_HANDLER") == "1":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(4))
if os.environ.get("APP_FILL_STDERR") == "1":  # a pipe that nobody reads, already full
    os.set_blocking(2, False)
    try:
        while True:
            os.write(2, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(2, True)

stop = threading.Event()
worker = threading.Thread(target=stop.wait, name="server-loop", daemon=True)
worker.start()  # MARK:server
time.sleep(0.05)  # it has held its context longer than the 1 ms threshold now
os.write(1, b"READY\\n")
time.sleep(60)
"""


def _terminated(args: list[str], tmp_path: Path, **extra: str) -> tuple[int, str, str]:
    """Start, wait for READY, send SIGTERM: (returncode, stdout, stderr)."""
    proc = subprocess.Popen(
        args,
        env=_env(CTXRELAY_DOCTOR_PINNED="0.001", **extra),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    assert ready == "READY\n", proc.communicate(timeout=TIMEOUT)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, ready + out, err


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX")
def test_sigterm_still_writes_the_report_and_dies_of_sigterm(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text(SIGTERM_APP, encoding="utf-8")
    line = SIGTERM_APP.splitlines().index(
        next(x for x in SIGTERM_APP.splitlines() if "# MARK:server" in x)
    )
    where = f"server.py:{line + 1} (in <module>)"
    bare = _terminated([sys.executable, "server.py"], tmp_path)
    run = _terminated([str(CTXRELAY), "run", "python", "server.py"], tmp_path)
    doctor = _terminated([str(CTXRELAY), "doctor", "python", "server.py"], tmp_path)
    path = tmp_path / "report.json"
    as_json = _terminated(
        [str(CTXRELAY), "run", "python", "server.py"], tmp_path, CTXRELAY_DOCTOR=str(path)
    )
    instrumented = _terminated(
        [sys.executable, "server.py"], tmp_path, CTXRELAY_DOCTOR="1", APP_INSTRUMENT="1"
    )
    # Dies of SIGTERM in every case, as without ctxrelay: same status, same output.
    for outcome in (bare, run, doctor, as_json, instrumented):
        assert outcome[:2] == (-signal.SIGTERM, "READY\n"), outcome
    assert "ctxrelay doctor" not in bare[2] + run[2]
    for outcome, activation in ((doctor, "ctxrelay doctor"), (instrumented, "instrument()")):
        report = _report_of(outcome[2])
        assert f"ended by SIGTERM · activated by {activation}" in report.splitlines()[0]
        assert re.search(rf"'server-loop' .*still held at exit.*{re.escape(where)}", report)
    report = json.loads(path.read_text(encoding="utf-8"))
    _exactly(report, _TOP, "report")
    assert report["ended_by"] == "SIGTERM"
    assert [pin["call_site"] for pin in report["pinned"]] == [where]


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX")
def test_sigterm_dies_even_when_stderr_takes_no_report(tmp_path: Path) -> None:
    """stderr a full pipe nobody reads: the report's write gives up, death still comes."""
    (tmp_path / "server.py").write_text(SIGTERM_APP, encoding="utf-8")

    def terminated(args: list[str]) -> int:
        proc = subprocess.Popen(
            args,
            env=_env(APP_FILL_STDERR="1"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"READY\n"
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=TIMEOUT)  # stderr is never read
        finally:
            proc.kill()
            proc.communicate()

    bare = terminated([sys.executable, "server.py"])
    doctor = terminated([str(CTXRELAY), "doctor", "python", "server.py"])
    assert bare == doctor == -signal.SIGTERM


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX")
def test_sigterm_handled_by_the_app_reports_at_its_exit(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text(SIGTERM_APP, encoding="utf-8")
    bare = _terminated([str(CTXRELAY), "run", "python", "server.py"], tmp_path, APP_HANDLER="1")
    doctor = _terminated(
        [str(CTXRELAY), "doctor", "python", "server.py"], tmp_path, APP_HANDLER="1"
    )
    # The app's handler wins (exit status 4); the report is written once, at that exit.
    assert bare[:2] == doctor[:2] == (4, "READY\n"), doctor
    assert doctor[2].count("── ctxrelay doctor") == 1, doctor[2]
    assert "ended by" not in _report_of(doctor[2]).splitlines()[0]
