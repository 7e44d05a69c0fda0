"""The trace-tree exporter: see each trace as an indented tree, with no backend.

Select it with the standard ``OTEL_TRACES_EXPORTER=ctxrelay_tree`` (an
``opentelemetry_traces_exporter`` entry point), e.g.::

    OTEL_TRACES_EXPORTER=ctxrelay_tree ctxrelay run python app.py

or add it yourself: ``provider.add_span_processor(BatchSpanProcessor(TreeSpanExporter()))``.

Spans are buffered per trace and a trace is printed when its *local root* ends (the
span with no parent, or with a remote parent: an incoming request), with the spans that
ended before it.  Work the request left running (a job Gradio's queue runs after the
request returned, a thread nobody joined) ends after its root: each such subtree is
printed as the trace's continuation when its top span ends, labelled with the printed
span it hangs under.  So identical runs print identical pieces, whatever the SDK's
batching.  Traces whose root never ended, and late spans whose top has not ended, are
printed by :meth:`TreeSpanExporter.force_flush` and at shutdown, marked as such.

Under a server this prints a tree per request: at most ``max_per_second`` trees per
second are printed (``CTXRELAY_TREE_MAX_PER_SECOND``, default 10, bursts of up to 5
times that; ``0`` = no limit), and the next tree printed says how many were not.

Output goes to stderr unless ``CTXRELAY_TREE_FILE`` says otherwise (``stdout``,
``stderr``, or a file path, appended to).  Each trace is written in one piece, so
traces from different threads never interleave.

Memory is bounded: at most ``max_traces`` traces and ``max_spans`` spans are held
(the oldest trace is printed early, marked incomplete, to make room), and at most
``max_spans_per_trace`` spans of one trace (the rest are counted, not kept).

An exporter runs inside the SDK's export thread: nothing here raises into it.  A
failure is reported as ``SpanExportResult.FAILURE`` (the SDK logs it) and the
application carries on.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import IO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ctxrelay.config import ConfigWarning, shown
from ctxrelay.exporters._tree_file import TreeFile
from ctxrelay.exporters.render import ASCII, render_trace

__all__ = ["ENV_FILE", "TreeSpanExporter"]

#: Where the trees go: ``stderr`` (default), ``stdout``, or a file path (appended to).
ENV_FILE = "CTXRELAY_TREE_FILE"
#: At most this many trees printed per second (a number >= 0; 0 = no limit).
ENV_RATE = "CTXRELAY_TREE_MAX_PER_SECOND"
DEFAULT_RATE = 10.0
#: A burst (a page load, the exit of a short script) may print this many times the rate.
_BURST = 5

_LATE = "late spans: their trace was printed already"

#: How many printed trace ids are remembered, to label spans that arrive late.
_REMEMBER_PRINTED = 4096
#: ... of which the most recent keep the names of their printed spans (at most
#: ``_NAMES_PER_TRACE`` each), for the "(under <parent>, printed above)" labels.
_REMEMBER_NAMES = 256
_NAMES_PER_TRACE = 512
_CONTINUED = "continued: ended after the part printed above"


def _rate_from(env: Mapping[str, str]) -> float:
    """``CTXRELAY_TREE_MAX_PER_SECOND``; a bad value warns once and gives the default."""
    raw = env.get(ENV_RATE, "").strip()
    if not raw:
        return DEFAULT_RATE
    try:
        rate = float(raw)
        if rate >= 0 and rate == rate and rate != float("inf"):
            return rate
    except ValueError:
        pass
    warnings.warn(
        f"ctxrelay: {ENV_RATE}={shown(raw)} is not a number of traces per second; allowed "
        f"values: a number >= 0 (0 = no limit). Using the default ({DEFAULT_RATE:g}).",
        ConfigWarning,
        stacklevel=3,
    )
    return DEFAULT_RATE


class _Budget:
    """A token bucket: ``rate`` prints per second, bursts of ``_BURST * rate``."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * _BURST)
        self.tokens = self.capacity
        self.last = time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Pending:
    __slots__ = ("dropped", "late", "printed", "root", "root_ended", "spans")

    def __init__(self, late: bool) -> None:
        self.spans: list[ReadableSpan] = []
        self.dropped = 0
        self.root_ended = False
        self.root: ReadableSpan | None = None
        self.late = late  # this trace was already printed: these spans came after
        #: span id -> name of this trace's spans printed earlier (for the labels).
        self.printed: Mapping[int, str] = {}


def _is_local_root(span: ReadableSpan) -> bool:
    return span.parent is None or span.parent.is_remote


class TreeSpanExporter(SpanExporter):
    """Prints one indented tree per trace (see the module docstring)."""

    def __init__(
        self,
        out: IO[str] | str | None = None,
        *,
        max_traces: int = 256,
        max_spans: int = 20_000,
        max_spans_per_trace: int = 2_000,
        max_per_second: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``out``: a text stream or a path; ``None`` reads ``CTXRELAY_TREE_FILE``.

        ``max_per_second``: trees printed per second at most (0 = no limit); ``None``
        reads ``CTXRELAY_TREE_MAX_PER_SECOND`` (default 10).
        """
        environ = os.environ if env is None else env
        if out is None:
            out = environ.get(ENV_FILE, "").strip() or "stderr"
        rate = _rate_from(environ) if max_per_second is None else max(0.0, max_per_second)
        self._budget = _Budget(rate)
        #: trees not printed (over the rate) since the last one printed, and in all.
        self._unprinted = 0
        self._unprinted_total = 0
        #: traces whose first tree was not printed: their continuations are not either.
        self._suppressed: OrderedDict[int, None] = OrderedDict()
        self._target = out
        self._stream: IO[str] | TreeFile | None = None if isinstance(out, str) else out
        self._owns_stream = False
        self._max_traces = max(1, max_traces)
        self._max_spans = max(1, max_spans)
        self._max_per_trace = max(1, min(max_spans_per_trace, self._max_spans))
        self._lock = threading.Lock()  # guards the buffers below
        self._write_lock = threading.Lock()  # one trace written at a time
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._held = 0
        #: printed trace id -> span id -> name of its printed spans (recent traces only).
        self._printed: OrderedDict[int, dict[int, str]] = OrderedDict()
        self._shut = False
        self._write_failed = False  # reported once

    # --- SpanExporter -----------------------------------------------------------------
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            with self._lock:
                if self._shut:
                    return SpanExportResult.FAILURE
                ready = self._within_rate(self._add(spans))
            self._write(ready)
            return SpanExportResult.SUCCESS
        except Exception:  # never into the SDK's export thread
            return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Print everything still buffered (traces whose root has not ended yet, too)."""
        try:
            with self._lock:
                ready = self._within_rate(self._drain())
            self._write(ready)
            return True
        except Exception:
            return False

    def shutdown(self) -> None:
        try:
            with self._lock:
                if self._shut:
                    return
                self._shut = True
                ready = self._within_rate(self._drain(), final=True)
            self._write(ready)
            if self._owns_stream and self._stream is not None:
                self._stream.close()
        except Exception:
            pass

    # --- buffering (called with self._lock held) -----------------------------------------
    def _add(self, spans: Sequence[ReadableSpan]) -> list[tuple[int, _Pending, str]]:
        ready: list[tuple[int, _Pending, str]] = []
        finished: list[int] = []  # in the order their roots ended: the order printed
        continued: list[int] = []  # late traces whose part below a printed span ended
        for span in spans:
            trace_id = span.context.trace_id
            pending = self._pending.get(trace_id)
            if pending is None:
                pending = self._pending[trace_id] = self._new_pending(trace_id)
                # Evict while adding (not after): one huge batch must not overshoot.
                while len(self._pending) > self._max_traces:
                    ready.append(self._pop_oldest("printed early: too many traces buffered"))
            if len(pending.spans) >= self._max_per_trace:
                pending.dropped += 1
            else:
                pending.spans.append(span)
                self._held += 1
            if _is_local_root(span):
                pending.root_ended = True
                pending.root = span
                finished.append(trace_id)
            elif pending.late and self._is_late_top(trace_id, span):
                continued.append(trace_id)
            while self._held > self._max_spans and len(self._pending) > 1:
                ready.append(self._pop_oldest("printed early: too many spans buffered"))
        for trace_id in finished:
            pending = self._pending.get(trace_id)
            if pending is not None and pending.root_ended:
                ready.extend(self._pop_root(trace_id))
        for trace_id in dict.fromkeys(continued):
            pending = self._pending.get(trace_id)
            if pending is not None and pending.late:
                ready.extend(self._pop_continued(trace_id))
        return ready

    def _new_pending(self, trace_id: int) -> _Pending:
        printed = self._printed.get(trace_id)
        pending = _Pending(late=printed is not None)
        if printed is not None:
            pending.printed = printed
        return pending

    def _is_late_top(self, trace_id: int, span: ReadableSpan) -> bool:
        """A late span hanging under a span printed earlier: its part of the tree is done
        (a span ends after the spans it waited for)."""
        parent = span.parent
        return parent is not None and parent.span_id in self._printed.get(trace_id, {})

    def _pop_root(self, trace_id: int) -> list[tuple[int, _Pending, str]]:
        """The root's tree (what ended before the root), then the rest as a continuation.

        Splitting by end time, not by which export batch a span came in, is what makes
        identical runs print identical pieces.
        """
        pending = self._pending[trace_id]
        root = pending.root
        note = _LATE if pending.late else ""
        if root is None or root.end_time is None:
            return [self._pop(trace_id, note)]
        after = [s for s in pending.spans if s is not root and (s.end_time or 0) > root.end_time]
        if not after:
            return [self._pop(trace_id, note)]
        pending.spans = [
            s for s in pending.spans if not (s is not root and (s.end_time or 0) > root.end_time)
        ]
        first = self._pop(trace_id, note)
        rest = self._pending[trace_id] = self._new_pending(trace_id)
        rest.spans = after
        self._held += len(after)
        return [first, *self._pop_continued(trace_id)]

    def _pop_continued(self, trace_id: int) -> list[tuple[int, _Pending, str]]:
        """The late spans hanging (through each other) under printed spans; the others
        (below a span still running) stay buffered until their top ends."""
        pending = self._pending[trace_id]
        printed = self._printed.get(trace_id, {})
        by_id = {s.context.span_id: s for s in pending.spans}
        reaches: dict[int, bool] = {}

        def hangs_under_printed(span: ReadableSpan) -> bool:
            chain: list[int] = []
            answer = False
            while True:
                own = span.context.span_id
                if own in reaches:
                    answer = reaches[own]
                    break
                chain.append(own)
                parent = span.parent
                if parent is None or len(chain) > len(by_id):
                    break
                if parent.span_id in printed:
                    answer = True
                    break
                above = by_id.get(parent.span_id)
                if above is None:
                    break
                span = above
            for own in chain:
                reaches[own] = answer
            return answer

        done = [s for s in pending.spans if hangs_under_printed(s)]
        if not done:
            return []
        if len(done) == len(pending.spans):
            return [self._pop(trace_id, _CONTINUED)]
        waiting = [s for s in pending.spans if not reaches.get(s.context.span_id)]
        pending.spans = done
        piece = self._pop(trace_id, _CONTINUED)
        rest = self._pending[trace_id] = self._new_pending(trace_id)
        rest.spans = waiting
        rest.dropped = 0
        self._held += len(waiting)
        return [piece]

    def _pop(self, trace_id: int, note: str) -> tuple[int, _Pending, str]:
        pending = self._pending.pop(trace_id)
        self._held -= len(pending.spans)
        names = self._printed.pop(trace_id, None)
        if names is None:
            names = {}
        pending.printed = dict(names)  # what was printed before this piece
        if len(names) < _NAMES_PER_TRACE:
            for span in pending.spans[: _NAMES_PER_TRACE - len(names)]:
                names[span.context.span_id] = span.name
        self._printed[trace_id] = names
        while len(self._printed) > _REMEMBER_PRINTED:
            self._printed.popitem(last=False)
        if len(self._printed) > _REMEMBER_NAMES:
            # Older traces keep their id (late spans are labelled late), not the names.
            stale = next(iter(self._printed))
            if self._printed[stale]:
                self._printed[stale] = {}
        return trace_id, pending, note

    def _pop_oldest(self, note: str) -> tuple[int, _Pending, str]:
        return self._pop(next(iter(self._pending)), note)

    def _drain(self) -> list[tuple[int, _Pending, str]]:
        ready = []
        for trace_id in list(self._pending):
            pending = self._pending[trace_id]
            if pending.late:
                note = _LATE
            elif pending.root_ended:
                note = ""
            else:
                note = "incomplete: its root span had not ended"
            ready.append(self._pop(trace_id, note))
        return ready

    def _within_rate(
        self, ready: list[tuple[int, _Pending, str]], *, final: bool = False
    ) -> list[tuple[int, _Pending, str]]:
        """Keep what the print budget allows; the next tree printed says what was not.

        A trace whose first tree was not printed has none of its continuations printed.
        """
        kept: list[tuple[int, _Pending, str]] = []
        for trace_id, pending, note in ready:
            if trace_id in self._suppressed or not self._budget.take():
                self._suppressed[trace_id] = None
                while len(self._suppressed) > _REMEMBER_PRINTED:
                    self._suppressed.popitem(last=False)
                self._unprinted += 1
                self._unprinted_total += 1
                continue
            if self._unprinted:
                said = self._not_printed_note()
                note = f"{note} · {said}" if note else said
                self._unprinted = 0
            kept.append((trace_id, pending, note))
        if final and self._unprinted:
            summary = _Pending(late=False)  # no spans: rendered as its header line only
            kept.append((0, summary, self._not_printed_note()))
            self._unprinted = 0
        return kept

    def _not_printed_note(self) -> str:
        rate = self._budget.rate
        return f"{self._unprinted} trees not printed before this one (over {rate:g} per second)"

    # --- output (outside self._lock: rendering must not block export calls) ----------
    def _write(self, ready: list[tuple[int, _Pending, str]]) -> None:
        if not ready:
            return
        text = "".join(
            render_trace(p.spans, note=note, dropped=p.dropped, printed=p.printed)
            for _, p, note in ready
        )
        with self._write_lock:
            stream = self._open()
            try:
                try:
                    stream.write(text)
                except UnicodeEncodeError:  # an ASCII-only terminal or locale
                    stream.write(text.translate(ASCII).encode("ascii", "replace").decode("ascii"))
                stream.flush()
            except OSError as exc:  # a full disk, /dev/full, a reader that stopped reading
                self._report_failed_write(exc)
                raise

    def _report_failed_write(self, exc: OSError) -> None:
        """Once per exporter: a lost tree must not be silent, nor repeat for each trace."""
        if self._write_failed:
            return
        self._write_failed = True
        where = (
            f"{ENV_FILE}={shown(self._target)}"
            if isinstance(self._target, str)
            else "the stream given to TreeSpanExporter"
        )
        try:
            warnings.warn(
                f"ctxrelay: writing trace trees to {where} failed "
                f"({type(exc).__name__}: {exc}); trees are lost while it fails.",
                ConfigWarning,
                stacklevel=2,
            )
        except Exception:  # "-W error": still never into the SDK's export thread
            pass

    def _open(self) -> IO[str] | TreeFile:
        if self._stream is not None:
            return self._stream
        target = self._target
        assert isinstance(target, str)
        # stderr/stdout are looked up at each write, so redirections made after start-up
        # (pytest's capture, a logging setup) are followed.
        if target.lower() in ("stderr", "-"):
            return sys.stderr
        if target.lower() == "stdout":
            return sys.stdout
        try:
            # Never blocks: a FIFO nobody reads fails here instead of hanging the exit.
            self._stream = TreeFile(target)  # closed at shutdown
            self._owns_stream = True
        except OSError as exc:
            warnings.warn(
                f"ctxrelay: {ENV_FILE}={shown(target)} cannot be opened ({exc}); allowed values: "
                "stderr, stdout, or a writable file path. Writing to stderr instead.",
                ConfigWarning,
                stacklevel=2,
            )
            self._target = "stderr"
            return sys.stderr
        return self._stream
