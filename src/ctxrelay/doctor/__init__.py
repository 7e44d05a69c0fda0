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
it then stays for the life of the process, since the report is written at exit: at
``atexit``, or before the death SIGTERM gives (:mod:`ctxrelay.bootstrap.sigterm`).
"""

from __future__ import annotations

import atexit
import logging
import os
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
_written = False


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
        relay.set_observer(recorder, recorder.released, recorder.started)
        _dispatch.set_observer(recorder.dispatched)
        atexit.register(_at_exit)
        _report_at_sigterm()


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


def report_now(ended_by: str = "running", *, wait: float = -1) -> dict[str, Any] | None:
    """The report as it stands (what is written at exit), or None when the doctor is off.

    ``wait``: how long to wait for the recorder's lock (-1: as long as it takes); past
    that the findings are read without it.
    """
    recorder = _recorder
    if recorder is None:
        return None
    findings = recorder.snapshot(wait)
    # A copy without the lock: start() replaces the values whole.
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
        ended_by,
    )
    return report.build(findings, meta, in_effect)


def _report_at_sigterm() -> None:
    """SIGTERM (``docker stop``, systemd, Kubernetes) skips ``atexit``: write the report
    before its death, through the start-up SIGTERM handler (one mechanism; it installs
    only where SIGTERM has its default action, from the main thread)."""
    try:
        from ctxrelay.bootstrap import sigterm

        sigterm.before_death(_at_sigterm)
        sigterm.install()
    except Exception:
        logger.debug("ctxrelay: the doctor's SIGTERM report could not be set up", exc_info=True)


def _at_sigterm() -> None:
    # In a signal handler: the interrupted main thread may hold the recorder's lock or
    # be inside a write to stderr, so neither is waited for.
    _write("SIGTERM")


def _at_exit() -> None:
    _write("exit")


def _write(ended_by: str) -> None:
    global _written
    if _written:
        return
    _written = True
    in_handler = ended_by != "exit"
    try:
        built = report_now(ended_by, wait=0.5 if in_handler else -1)
        if built is not None:
            report.write(built, _output, unbuffered=in_handler)
    except Exception as exc:
        try:
            message = f"ctxrelay doctor: could not write the report: {exc}\n"
            os.write(2, message.encode("utf-8", "backslashreplace"))
        except Exception:
            pass
