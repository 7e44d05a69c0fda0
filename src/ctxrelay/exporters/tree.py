"""The trace-tree exporter: see each trace as an indented tree, with no backend.

Select it with the standard ``OTEL_TRACES_EXPORTER=ctxrelay_tree`` (an
``opentelemetry_traces_exporter`` entry point), e.g.::

    OTEL_TRACES_EXPORTER=ctxrelay_tree ctxrelay run python app.py

or add it yourself: ``provider.add_span_processor(BatchSpanProcessor(TreeSpanExporter()))``.

Spans are buffered per trace and a trace is printed when its *local root* ends (the
span with no parent, or with a remote parent: an incoming request).  Spans that end
after their root (work a request left running) and traces whose root never ended are
printed by :meth:`TreeSpanExporter.force_flush` and at shutdown, marked as such.

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

_LATE = "late spans: their trace was printed already"

#: How many printed trace ids are remembered, to label spans that arrive late.
_REMEMBER_PRINTED = 4096


class _Pending:
    __slots__ = ("dropped", "late", "root_ended", "spans")

    def __init__(self, late: bool) -> None:
        self.spans: list[ReadableSpan] = []
        self.dropped = 0
        self.root_ended = False
        self.late = late  # this trace was already printed: these spans came after


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
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``out``: a text stream or a path; ``None`` reads ``CTXRELAY_TREE_FILE``."""
        if out is None:
            out = (os.environ if env is None else env).get(ENV_FILE, "").strip() or "stderr"
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
        self._printed: OrderedDict[int, None] = OrderedDict()
        self._shut = False
        self._write_failed = False  # reported once

    # --- SpanExporter -----------------------------------------------------------------
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            with self._lock:
                if self._shut:
                    return SpanExportResult.FAILURE
                ready = self._add(spans)
            self._write(ready)
            return SpanExportResult.SUCCESS
        except Exception:  # never into the SDK's export thread
            return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Print everything still buffered (traces whose root has not ended yet, too)."""
        try:
            with self._lock:
                ready = self._drain()
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
                ready = self._drain()
            self._write(ready)
            if self._owns_stream and self._stream is not None:
                self._stream.close()
        except Exception:
            pass

    # --- buffering (called with self._lock held) -----------------------------------------
    def _add(self, spans: Sequence[ReadableSpan]) -> list[tuple[int, _Pending, str]]:
        ready: list[tuple[int, _Pending, str]] = []
        finished: list[int] = []  # in the order their roots ended: the order printed
        for span in spans:
            trace_id = span.context.trace_id
            pending = self._pending.get(trace_id)
            if pending is None:
                pending = self._pending[trace_id] = _Pending(late=trace_id in self._printed)
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
                finished.append(trace_id)
            while self._held > self._max_spans and len(self._pending) > 1:
                ready.append(self._pop_oldest("printed early: too many spans buffered"))
        for trace_id in finished:
            pending = self._pending.get(trace_id)
            if pending is not None and pending.root_ended:
                ready.append(self._pop(trace_id, _LATE if pending.late else ""))
        return ready

    def _pop(self, trace_id: int, note: str) -> tuple[int, _Pending, str]:
        pending = self._pending.pop(trace_id)
        self._held -= len(pending.spans)
        self._printed[trace_id] = None
        self._printed.move_to_end(trace_id)
        while len(self._printed) > _REMEMBER_PRINTED:
            self._printed.popitem(last=False)
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

    # --- output (outside self._lock: rendering must not block export calls) ----------
    def _write(self, ready: list[tuple[int, _Pending, str]]) -> None:
        if not ready:
            return
        text = "".join(render_trace(p.spans, note=note, dropped=p.dropped) for _, p, note in ready)
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
        target = self._target if isinstance(self._target, str) else "the given stream"
        try:
            warnings.warn(
                f"ctxrelay: writing trace trees to {ENV_FILE}={shown(target)} failed "
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
