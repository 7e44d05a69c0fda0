"""What the doctor notes while the program runs: counters and findings, never values.

The :class:`Recorder` is the relay's hand-over observer (``relay.set_observer``): it is
called in the origin thread after each hand-over was decided, with the runner, the
function, the captured copy (None when the runner copies for itself) and the hop (None
when no span is recorded).  From that alone it keeps:

* a counter per runner: handed over, carried by ctxrelay's copy or the runner's own,
  traced, and why not traced (no active span, unsampled parent, hop spans off);
* late work: the span current at the hand-over had ended (the SDK's ``end_time``) more
  than ``late`` seconds before; the call site is looked up only then;
* pinned contexts: for work that is a whole thread, the thread runner tells when the
  run ended (:func:`ctxrelay.relay.released`, in that thread); a weak reference to the
  captured copy is the fallback.  Not the copy's freeing alone: on free-threaded builds
  the copy is freed by the thread that made it, the next time that thread runs Python
  code, which can be long after (a starter blocked in ``join`` or ``sleep``);
* raw ``_thread.start_new_thread`` calls, by call site (and, told by
  :mod:`ctxrelay.doctor.watch`, gevent greenlets spawned directly).

Two things are not hand-overs and are noted by the doctor's own observation points
(:mod:`ctxrelay.doctor.watch`): threads first seen through ``threading.current_thread()``
(dummy threads: started by C code, or around the patches) and threads already running
when the doctor started.

What is recorded: runner names, qualified function names, thread names, call sites,
counts and durations.  Never a ContextVar's value, never a span's name or attributes
(they are values of OpenTelemetry's ContextVar), never call arguments.

Memory is bounded: at most :data:`MAX_KEYS` distinct findings of each kind are kept, the
rest are only counted (``dropped``).
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from contextvars import Context
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from opentelemetry import trace

from ctxrelay import spans
from ctxrelay.doctor.callsite import call_site, on_stack

__all__ = ["THREAD_RUNNERS", "Late", "Pin", "Recorder", "Start"]

#: Runners whose one piece of work is a whole thread's life.
THREAD_RUNNERS = frozenset(
    {"Thread", "Timer", "socketserver", "gradio", "_thread.start_new_thread"}
)
RAW_RUNNER = "_thread.start_new_thread"
#: Distinct findings kept per kind; more are counted in ``dropped``.
MAX_KEYS = 200

# Column order of a runner's counter.
HANDED, CARRIED, OWN_COPY, TRACED, NO_SPAN, UNSAMPLED, SPANS_OFF, OTHER = range(8)
COLUMNS = (
    "handed",
    "carried",
    "own_copy",
    "traced",
    "no_active_span",
    "unsampled",
    "spans_off",
    "not_traced_other",
)


@dataclass
class Late:
    """Work handed over from the context of a span that had ended ``late_s`` before."""

    runner: str
    function: str
    call_site: str | None
    count: int = 0
    worst_s: float = 0.0
    #: handed over in time, started late: the longest it waited to start (else 0)
    waited_s: float = 0.0


@dataclass
class Pin:
    """A thread that held a captured context; ``held_s`` is set once it let go."""

    runner: str
    function: str
    thread: str | None
    call_site: str | None
    started: float
    #: seconds it held the copy (up to the report, if ``still_held``)
    held_s: float = 0.0
    still_held: bool = False


@dataclass
class Start:
    """A start that bypassed the hand-over patches (or a raw one they now carry)."""

    kind: str  # "raw_thread" | "before_activation" | "foreign_thread" | "greenlet"
    call_site: str | None
    function: str | None = None
    thread: str | None = None
    carried: bool = False
    count: int = 1
    detail: str | None = None


@dataclass
class Findings:
    """Everything the report is made of (a snapshot; see :meth:`Recorder.snapshot`)."""

    counts: dict[str, list[int]] = field(default_factory=dict)
    #: bus -> [dispatches with listeners, traced]
    dispatches: dict[str, list[int]] = field(default_factory=dict)
    late: list[Late] = field(default_factory=list)
    pinned: list[Pin] = field(default_factory=list)
    starts: list[Start] = field(default_factory=list)
    dropped: int = 0


def _starting_thread() -> threading.Thread | None:
    """The ``threading.Thread`` whose ``start()`` is on the caller's stack, if any."""
    start_code = threading.Thread.start.__code__
    frame: FrameType | None = sys._getframe(1)
    for _ in range(16):
        if frame is None:
            return None
        if frame.f_code is start_code:
            thread = frame.f_locals.get("self")
            return thread if isinstance(thread, threading.Thread) else None
        frame = frame.f_back
    return None


_RUN_IN_EXECUTOR = frozenset({"run_in_executor"})


def _inside_run_in_executor() -> bool:
    """True when ``loop.run_in_executor`` is on the caller's stack (it submits to a pool)."""
    return on_stack(_RUN_IN_EXECUTOR, "base_events.py", 18)


class Recorder:
    """The hand-over observer and the store of findings; thread-safe, never raises out."""

    def __init__(self, late_s: float, pinned_s: float) -> None:
        self.late_s = late_s
        self.pinned_s = pinned_s
        self._late_ns = int(late_s * 1e9)
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._dispatches: dict[str, list[int]] = {}
        self._late: dict[tuple[str, str, str | None, bool], Late] = {}
        #: starts counted per (kind, call site, function): raw threads, greenlets
        self._counted: dict[tuple[str, str | None, str, bool], Start] = {}
        self._starts: list[Start] = []
        self._pins_alive: dict[int, tuple[weakref.ref[Context], Pin]] = {}
        self._pins_done: list[Pin] = []
        self._dropped = 0

    # --- the observer -----------------------------------------------------------------
    def __call__(self, runner: str, fn: Any, context: Context | None, hop: Any) -> None:
        if context is None and runner == "ThreadPoolExecutor" and _inside_run_in_executor():
            return  # the pool's half of a run_in_executor/to_thread hand-over: counted once
        span = trace.get_current_span()
        if hop is not None:
            state = TRACED
        elif not spans.settings.hops:
            state = SPANS_OFF
        else:
            span_context = span.get_span_context()
            if not span_context.is_valid:
                state = NO_SPAN
            elif not span_context.trace_flags.sampled:
                state = UNSAMPLED
            else:
                state = OTHER  # instrumentation suppressed (the SDK exporting)
        with self._lock:
            row = self._counts.get(runner)
            if row is None:
                row = self._counts[runner] = [0] * len(COLUMNS)
            row[HANDED] += 1
            row[CARRIED if context is not None else OWN_COPY] += 1
            row[state] += 1
        end_time = getattr(span, "end_time", None)  # SDK spans; None while running
        if end_time is not None:
            late_ns = time.time_ns() - end_time
            if late_ns > self._late_ns:
                self._note_late(runner, fn, late_ns / 1e9)
        if runner in THREAD_RUNNERS:
            self._note_thread(runner, fn, context)

    def started(self, hop: spans.Hop, fn: Any) -> None:
        """A traced piece of work starts (in its thread, inside the carried context).

        Late now but not when it was handed over: it waited in a queue (a busy pool)
        past the threshold.  Work that was late already is counted at the hand-over.
        """
        end_time = getattr(trace.get_current_span(), "end_time", None)
        if end_time is None:
            return
        late_ns = time.time_ns() - end_time
        if late_ns <= self._late_ns:
            return
        waited_ns = time.perf_counter_ns() - hop.handed_ns
        if late_ns - waited_ns > self._late_ns:
            return  # late when handed over: counted then, with its call site
        self._note_late(hop.runner, fn, late_ns / 1e9, waited_ns / 1e9)

    def _note_late(self, runner: str, fn: Any, late_s: float, waited_s: float = 0.0) -> None:
        function = spans.callable_name(fn)
        # At the start, the hand-over's stack is gone: no call site.
        site = call_site() if not waited_s else None
        key = (runner, function, site, bool(waited_s))
        with self._lock:
            entry = self._late.get(key)
            if entry is None:
                if len(self._late) >= MAX_KEYS:
                    self._dropped += 1
                    return
                entry = self._late[key] = Late(runner, function, site)
            entry.count += 1
            entry.worst_s = max(entry.worst_s, late_s)
            entry.waited_s = max(entry.waited_s, waited_s)

    def _note_thread(self, runner: str, fn: Any, context: Context | None) -> None:
        site = call_site()
        function = spans.callable_name(fn)
        if runner == RAW_RUNNER:
            self.note_counted("raw_thread", site, function, carried=context is not None)
        thread = _starting_thread()
        if context is None and thread is not None:
            # 3.14 with thread_inherit_context: start() made the thread's own copy.
            context = thread.__dict__.get("_context")
        if not isinstance(context, Context):
            return
        name = getattr(thread, "name", None)
        name = name[: spans.MAX_ATTRIBUTE_LENGTH] if isinstance(name, str) else None
        pin = Pin(runner, function, name, site, time.monotonic())
        key = id(context)
        # The thread runner says when the run ended (released); the weak reference is the
        # fallback, for a copy freed without that (it cannot be freed while it runs).
        ref = weakref.ref(context, lambda _: self._let_go(key))
        with self._lock:
            if len(self._pins_alive) >= 10 * MAX_KEYS:
                self._dropped += 1
                return
            self._pins_alive[key] = (ref, pin)

    def released(self, context: Context) -> None:
        """The thread that ran in ``context`` ended (told in that thread, at once)."""
        self._let_go(id(context))

    def _let_go(self, key: int) -> None:
        """The thread's run is over: its pin, if it held long enough, is a finding."""
        try:
            now = time.monotonic()
            with self._lock:
                entry = self._pins_alive.pop(key, None)
                if entry is None:
                    return
                pin = entry[1]
                pin.held_s = now - pin.started
                if pin.held_s >= self.pinned_s:
                    if len(self._pins_done) < MAX_KEYS:
                        self._pins_done.append(pin)
                    else:
                        self._dropped += 1
        except Exception:
            pass

    def dispatched(self, bus: str, traced: bool) -> None:
        """The listener buses' observer: one dispatch that had listeners."""
        with self._lock:
            row = self._dispatches.get(bus)
            if row is None:
                row = self._dispatches[bus] = [0, 0]
            row[0] += 1
            row[1] += traced

    # --- observation points other than hand-overs --------------------------------------
    def note_counted(self, kind: str, site: str | None, function: str, *, carried: bool) -> None:
        """A start of ``kind`` at ``site``: one finding per (site, function), counted."""
        key = (kind, site, function, carried)
        with self._lock:
            start = self._counted.get(key)
            if start is not None:
                start.count += 1
            elif len(self._counted) < MAX_KEYS:
                self._counted[key] = Start(kind, site, function, carried=carried)
            else:
                self._dropped += 1

    def note_start(self, start: Start) -> None:
        with self._lock:
            if len(self._starts) < MAX_KEYS:
                self._starts.append(start)
            else:
                self._dropped += 1

    # --- reading ------------------------------------------------------------------------
    def snapshot(self, wait: float = -1) -> Findings:
        """A consistent copy, worst first in each list.

        ``wait`` seconds at most for the lock (-1: no limit).  A SIGTERM handler cannot
        wait: the main thread it interrupted may hold the lock.  Past ``wait`` the copy
        is taken without it (each container is copied in one C call).
        """
        now = time.monotonic()
        locked = self._lock.acquire(timeout=wait)
        try:
            counts = {runner: list(row) for runner, row in list(self._counts.items())}
            dispatches = {bus: list(row) for bus, row in list(self._dispatches.items())}
            late = [Late(**vars(entry)) for entry in list(self._late.values())]
            pinned = [Pin(**vars(pin)) for pin in list(self._pins_done)]
            for _, pin in list(self._pins_alive.values()):
                held = now - pin.started
                if held >= self.pinned_s:
                    pinned.append(Pin(**{**vars(pin), "held_s": held, "still_held": True}))
            starts = [Start(**vars(start)) for start in list(self._starts)]
            starts += [Start(**vars(start)) for start in list(self._counted.values())]
            dropped = self._dropped
        finally:
            if locked:
                self._lock.release()
        late.sort(key=lambda entry: (-entry.worst_s, -entry.count))
        pinned.sort(key=lambda pin: (-pin.held_s, pin.runner, pin.function, pin.thread or ""))
        order = {"foreign_thread": 0, "before_activation": 1, "greenlet": 2, "raw_thread": 3}
        starts.sort(key=lambda start: (order.get(start.kind, 9), start.carried, -start.count))
        return Findings(counts, dispatches, late, pinned, starts, dropped)
