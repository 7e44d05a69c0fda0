"""The doctor's report: one JSON-ready dict (schema ``ctxrelay.doctor/1``) and its text form.

The dict is the single source: the text on stderr is rendered from it, so both always
say the same.  The schema is documented in ``docs/doctor.md``; every key is always
present (empty lists, zero counts), so a consumer never needs ``.get``.

Nothing in it comes from a ContextVar's value: runner, function and thread names, call
sites, counts, durations and the names of the settings in effect.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ctxrelay.doctor.recorder import COLUMNS, Findings
from ctxrelay.version import __version__

__all__ = ["SCHEMA", "build", "render", "write"]

SCHEMA = "ctxrelay.doctor/1"
DOCS = "docs/doctor.md"
#: Findings shown per section in the text form (the JSON has them all).
SHOWN = 5


def build(findings: Findings, meta: dict[str, Any], in_effect: dict[str, Any]) -> dict[str, Any]:
    """The report as plain data (see ``docs/doctor.md`` for every key)."""
    hand_overs = [
        {"runner": runner, **dict(zip(COLUMNS, row, strict=True))}
        for runner, row in sorted(findings.counts.items(), key=lambda item: -item[1][0])
    ]
    report: dict[str, Any] = {
        "schema": SCHEMA,
        **meta,
        "hand_overs": hand_overs,
        "dispatches": [
            {"bus": bus, "dispatched": row[0], "traced": row[1]}
            for bus, row in sorted(findings.dispatches.items(), key=lambda item: -item[1][0])
        ],
        "bypassed": [asdict(start) for start in findings.starts],
        "pinned": [_rounded(asdict(pin), "held_s") for pin in findings.pinned],
        "late": [_rounded(asdict(late), "worst_s", "waited_s") for late in findings.late],
        "in_effect": in_effect,
        "dropped": findings.dropped,
    }
    for pin in report["pinned"]:
        pin.pop("started", None)
    report["hints"] = hints(report)
    return report


def _rounded(entry: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        entry[key] = round(entry[key], 3)
    return entry


def _total(report: dict[str, Any], column: str) -> int:
    return sum(row[column] for row in report["hand_overs"])


def hints(report: dict[str, Any]) -> list[str]:
    """One line per kind of finding: what it means and the setting or section that fixes it."""
    found: list[str] = []
    late = report["late"]
    if late:
        names = sorted({entry["runner"] for entry in late})
        found.append(
            f"late work joins a request's trace long after the request ended: "
            f"CTXRELAY_DETACH={','.join(names)} (or a glob over the function's name) starts "
            f"it in a new trace linked to the request ({DOCS}#4-late-work)"
        )
    if report["pinned"]:
        found.append(
            "a long-lived thread keeps the context of whoever started it (and that request's "
            "span) for its whole life: start it at start-up, or from an empty context with "
            f"contextvars.Context().run(thread.start) ({DOCS}#3-pinned-contexts)"
        )
    kinds = {start["kind"] for start in report["bypassed"]}
    if "foreign_thread" in kinds:
        found.append(
            "threads not started by threading (C code, or around the patches) begin with an "
            "empty context that no patch can carry: wrap the callback with ctxrelay.bind(fn) "
            f"where it is handed to that code ({DOCS}#2-starts-that-bypassed-the-patches)"
        )
    if "before_activation" in kinds:
        found.append(
            "threads started before ctxrelay was activated run without a carried context: "
            "activate it at start-up (ctxrelay run, CTXRELAY_ENABLED=1) or call "
            "ctxrelay.instrument() before starting them (docs/activation.md)"
        )
    if any(start["kind"] == "greenlet" and not start["carried"] for start in report["bypassed"]):
        found.append(
            "a gevent greenlet starts in a context of its own, so the spawner's is not "
            "carried: spawn ctxrelay.bind(fn) instead of fn "
            f"({DOCS}#2-starts-that-bypassed-the-patches)"
        )
    no_span = _total(report, "no_active_span")
    if no_span:
        found.append(
            f"{no_span} hand-over(s) had no active span, so no hop span was recorded (the "
            "context was carried all the same): CTXRELAY_HOP_SPANS=all records each as a new "
            f"trace, or start a span around the work ({DOCS}#1-hand-overs)"
        )
    if _total(report, "unsampled"):
        found.append(
            "hand-overs under an unsampled parent record no hop span, as your sampler wants "
            "(OTEL_TRACES_SAMPLER; docs/configuration.md)"
        )
    if _total(report, "spans_off"):
        found.append(
            "CTXRELAY_HOP_SPANS is off: contexts are carried, no hop span is recorded "
            "(docs/configuration.md)"
        )
    if report["in_effect"]["excluded"]:
        found.append(
            "excluded runners and buses are not patched: work they hand over keeps no context "
            "(CTXRELAY_INCLUDE / CTXRELAY_EXCLUDE, docs/configuration.md)"
        )
    if report["dropped"]:
        found.append(f"{report['dropped']} finding(s) beyond the doctor's limits were counted only")
    return found


# --- text ------------------------------------------------------------------------------
def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"


_ENDED = {"SIGTERM": ", ended by SIGTERM", "running": " so far"}


def render(report: dict[str, Any]) -> str:
    """The text form: a few dozen lines, grouped by section, worst first."""
    lines = [
        f"── ctxrelay doctor · pid {report['pid']} · {report['program']} · "
        f"ran {_seconds(report['duration_s'])}{_ENDED.get(report['ended_by'], '')} · "
        f"activated by {report['activation']}",
    ]
    lines += _hand_overs(report)
    lines += _bypassed(report)
    lines += _pinned(report)
    lines += _late(report)
    lines += _in_effect(report)
    if report["hints"]:
        lines.append("Hints")
        lines += [f"  - {hint}" for hint in report["hints"]]
    return "\n".join(lines) + "\n"


def _more(count: int) -> list[str]:
    return [f"  … and {count - SHOWN} more (CTXRELAY_DOCTOR=report.json lists all)"] * (
        count > SHOWN
    )


def _hand_overs(report: dict[str, Any]) -> list[str]:
    rows = report["hand_overs"]
    lines = ["1. Hand-overs"]
    buses = [
        f"  bus {row['bus']}: {row['dispatched']} dispatch(es) with listeners, "
        f"{row['traced']} traced"
        for row in report["dispatches"]
    ]
    if not rows:
        return [*lines, "  none", *buses]
    width = max(len(row["runner"]) for row in rows)
    lines.append(
        f"  {'runner':<{width}}  {'handed':>7}  {'carried':>7}  {'traced':>7}  {'no span':>7}"
    )
    for row in rows:
        carried = row["carried"] + row["own_copy"]
        note = "  (the runner's own copy)" if row["own_copy"] and not row["carried"] else ""
        extra = [
            f"{row[key]} {label}"
            for key, label in (("unsampled", "unsampled"), ("spans_off", "spans off"))
            if row[key]
        ]
        if extra:
            note += "  (" + ", ".join(extra) + ")"
        lines.append(
            f"  {row['runner']:<{width}}  {row['handed']:>7}  {carried:>7}  "
            f"{row['traced']:>7}  {row['no_active_span']:>7}{note}"
        )
    return lines + buses


_KIND = {
    "foreign_thread": "foreign thread",
    "before_activation": "started before activation",
    "greenlet": "gevent greenlet",
    "raw_thread": "_thread.start_new_thread",
}


def _listed(
    title: str, entries: list[dict[str, Any]], line: Callable[[dict[str, Any]], str]
) -> list[str]:
    """A findings section: its title, then ``line(entry)`` for the first few, or "none"."""
    if not entries:
        return [title, "  none"]
    return [title, *(f"  {line(entry)}" for entry in entries[:SHOWN]), *_more(len(entries))]


def _where(entry: dict[str, Any]) -> str:
    return entry["call_site"] or "call site unknown"


def _bypassed(report: dict[str, Any]) -> list[str]:
    return _listed("2. Starts that bypassed the patches", report["bypassed"], _start_line)


def _start_line(start: dict[str, Any]) -> str:
    parts = [_KIND.get(start["kind"], start["kind"])]
    if start["thread"]:
        parts.append(f"{start['thread']!r}")
    if start["function"]:
        parts.append(start["function"])
    text = " ".join(parts) + f" at {_where(start)}"
    if start["count"] > 1:
        text += f" ×{start['count']}"
    if start["kind"] == "raw_thread":
        text += " (carried by the _thread runner)" if start["carried"] else " (not carried)"
    elif start["kind"] == "foreign_thread":
        text += "" if start["carried"] else ": empty context"
    elif start["kind"] == "greenlet":
        text += " (carried by ctxrelay.bind)" if start["carried"] else ": empty context"
    if start["detail"] and start["kind"] != "raw_thread":
        text += f" — {start['detail']}"
    return text


def _pinned(report: dict[str, Any]) -> list[str]:
    threshold = _seconds(report["thresholds"]["pinned_s"])

    def line(pin: dict[str, Any]) -> str:
        state = "still held at exit" if pin["still_held"] else "then let go"
        name = f" {pin['thread']!r}" if pin["thread"] else ""
        return (
            f"{pin['runner']}{name} {pin['function']} held it {_seconds(pin['held_s'])} "
            f"({state}); started at {_where(pin)}"
        )

    title = f"3. Pinned contexts (a thread held a captured context ≥ {threshold})"
    return _listed(title, report["pinned"], line)


def _late(report: dict[str, Any]) -> list[str]:
    threshold = _seconds(report["thresholds"]["late_s"])

    def line(entry: dict[str, Any]) -> str:
        count = f" ×{entry['count']}" if entry["count"] > 1 else ""
        late = f"{entry['runner']} {entry['function']}{count} {_seconds(entry['worst_s'])} late"
        if entry["waited_s"]:
            return f"{late}: handed over in time, waited {_seconds(entry['waited_s'])} to start"
        return f"{late}, at {_where(entry)}"

    title = f"4. Late work (started > {threshold} after its span ended)"
    return _listed(title, report["late"], line)


def _in_effect(report: dict[str, Any]) -> list[str]:
    effect = report["in_effect"]

    def listed(values: list[str]) -> str:
        return ", ".join(values) if values else "none"

    return [
        "5. In effect",
        f"  excluded runners/buses: {listed(effect['excluded'])}",
        f"  skipped variables (CTXRELAY_SKIP_VARS): {listed(effect['skipped_vars'])}",
        f"  hop spans: {effect['hop_spans']}; listener spans: "
        f"{'on' if effect['listener_spans'] else 'off'}; detached: {listed(effect['detach'])}",
    ]


# --- output ----------------------------------------------------------------------------
def meta(
    started: float,
    now: float,
    activation: str,
    thresholds: dict[str, float],
    ended_by: str = "running",
) -> dict[str, Any]:
    """The report's header fields.  ``program`` is the script's name only: arguments may
    hold secrets.  ``ended_by``: ``exit``, ``SIGTERM``, or ``running`` (a report asked
    for while the program runs)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    return {
        "ctxrelay": __version__,
        "python": platform.python_version(),
        "pid": os.getpid(),
        "program": os.path.basename(argv0),
        "activation": activation,
        "duration_s": round(now - started, 3),
        "ended_by": ended_by,
        "thresholds": thresholds,
    }


#: Longest the report waits, in a SIGTERM handler, for stderr to take it (seconds).
UNBUFFERED_WAIT = 1.0


def _write_bounded(fd: int, data: bytes, wait: float) -> None:
    """``os.write`` all of ``data`` unless ``fd`` stays full for ``wait`` seconds.

    Pieces of at most ``PIPE_BUF`` bytes, each once ``select`` says ``fd`` can take one:
    a write that small to a pipe with room never blocks.
    """
    import select

    deadline = time.monotonic() + wait
    piece = getattr(select, "PIPE_BUF", 512)
    while data:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        _, ready, _ = select.select([], [fd], [], left)
        if not ready:
            return
        data = data[os.write(fd, data[:piece]) :]


def write(report: dict[str, Any], output: str, *, unbuffered: bool = False) -> None:
    """``output`` is ``"stderr"`` or a JSON file path (``{pid}`` replaced by the pid).

    ``unbuffered``: in a signal handler, stderr is written with ``os.write``: the main
    thread it interrupted may be inside a write to ``sys.stderr``, whose lock is not
    reentrant.  That write is bounded (:data:`UNBUFFERED_WAIT`): stderr may be a pipe
    nobody reads, and the process must still die of its SIGTERM.
    """
    if output == "stderr":
        stream = sys.stderr
        if unbuffered:
            fd = stream.fileno() if stream is not None else 2
            data = render(report).encode(getattr(stream, "encoding", None) or "utf-8", "replace")
            _write_bounded(fd, data, UNBUFFERED_WAIT)
        elif stream is not None:
            stream.write(render(report))
            stream.flush()
        return
    path = output.replace("{pid}", str(report["pid"]))
    temporary = f"{path}.{report['pid']}.tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=1)
        out.write("\n")
    os.replace(temporary, path)  # a reader never sees half a report
