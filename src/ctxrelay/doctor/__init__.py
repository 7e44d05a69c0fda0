"""The context-loss doctor: where context was lost, pinned or outlived its request.

``CTXRELAY_DOCTOR=1`` (or ``ctxrelay doctor CMD``) under any activation: when the program
exits, a short report goes to stderr; ``CTXRELAY_DOCTOR=/path/report.json`` writes it as
JSON instead (schema in ``docs/doctor.md``).

The doctor observes, never changes: it is the relay's hand-over observer (told of each
hand-over after it was decided, see :mod:`ctxrelay.doctor.recorder`) plus two read-only
observation points (:mod:`ctxrelay.doctor.watch`).  The work, its context and its spans
are the same with the doctor on or off.  Off, nothing of it is imported, and the
hand-over path pays one ``is not None`` check.

Started by ``instrument()`` (which every activation goes through) when the setting is on;
it then stays for the life of the process, since the report is written at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from ctxrelay import relay, spans
from ctxrelay.config import Settings
from ctxrelay.doctor import report, watch
from ctxrelay.doctor.recorder import Recorder
from ctxrelay.listeners import _dispatch

__all__ = ["is_on", "report_now", "start"]

logger = logging.getLogger("ctxrelay")

_lock = threading.Lock()
_recorder: Recorder | None = None
_output = "stderr"
_started = 0.0
_in_effect: dict[str, Any] = {"excluded": [], "skipped_vars": [], "detach": []}


def is_on() -> bool:
    return _recorder is not None


def start(
    settings: Settings, *, excluded: Iterable[str], skipped: Iterable[str], detach: Iterable[str]
) -> None:
    """Begin observing (idempotent); each call updates what the report says is in effect."""
    global _recorder, _output, _started
    with _lock:
        _in_effect.update(
            excluded=sorted(excluded), skipped_vars=sorted(skipped), detach=list(detach)
        )
        if _recorder is not None or settings.doctor is None:
            return
        recorder = Recorder(settings.doctor_late, settings.doctor_pinned)
        # A relative path is the one of the directory the program started in.
        _output = (
            settings.doctor if settings.doctor == "stderr" else os.path.abspath(settings.doctor)
        )
        _started = time.monotonic()
        watch.note_running_threads(recorder)
        watch.watch_foreign_threads(recorder)
        watch.watch_greenlets(recorder)
        _recorder = recorder
        relay.set_observer(recorder, recorder.released)
        _dispatch.set_observer(recorder.dispatched)
        atexit.register(_at_exit)


def _activation() -> str:
    from ctxrelay import bootstrap

    by = bootstrap.activated_by()
    if by == "run":
        return (
            "ctxrelay doctor"
            if os.environ.get(bootstrap.RUN_MARKER) == "doctor"
            else ("ctxrelay run")
        )
    if by == "pth":
        return "CTXRELAY_ENABLED=1"
    return "instrument()"


def _hop_spans() -> str:
    if not spans.settings.hops:
        return "off"
    return (
        "all (hand-overs with no active span start new traces)"
        if spans.settings.hop_roots
        else "on"
    )


def report_now() -> dict[str, Any] | None:
    """The report as it stands (what is written at exit), or None when the doctor is off."""
    recorder = _recorder
    if recorder is None:
        return None
    findings = recorder.snapshot()
    with _lock:
        in_effect = {
            **_in_effect,
            "hop_spans": _hop_spans(),
            "listener_spans": spans.settings.listeners,
        }
    meta = report.meta(
        _started,
        time.monotonic(),
        _activation(),
        {"late_s": recorder.late_s, "pinned_s": recorder.pinned_s},
    )
    return report.build(findings, meta, in_effect)


def _at_exit() -> None:
    try:
        built = report_now()
        if built is not None:
            report.write(built, _output)
    except Exception as exc:
        try:
            print(f"ctxrelay doctor: could not write the report: {exc}", file=sys.stderr)
        except Exception:
            pass
