"""Turn the spans of one trace into an indented text tree: pure functions, no I/O.

What a reader should see at a glance is *where the context went*: which thread each
piece of work ran in, where it crossed to another thread (a ``⇢`` hop line with
``origin → target`` and the time the work waited in a queue), what failed, and
which spans could not be placed (their parent never reached the exporter).

Threads: hop spans carry ``thread.name`` and ``ctxrelay.origin.thread.name``; a
span without them ran in the thread of its parent (spans do not change threads by
themselves), and a root without them ran in the origin thread of its first hop.
Only the root's thread and each hop's threads are printed: every other span ran in
the thread of the nearest line above it that names one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode, format_span_id, format_trace_id

from ctxrelay.attributes import (
    ATTR_BUS,
    ATTR_DETACHED,
    ATTR_EVENT,
    ATTR_LISTENERS,
    ATTR_ORIGIN_THREAD_NAME,
    ATTR_QUEUE_WAIT_MS,
    ATTR_RUNNER,
    THREAD_NAME,
)

__all__ = ["ASCII", "render_trace"]

HOP = "⇢"
LISTENER = "✉"
ERROR = "✗"
ARROW = "→"

#: For streams that cannot encode the box-drawing characters (an ASCII locale).
ASCII = str.maketrans(
    {
        "├": "|",
        "└": "`",
        "│": "|",
        "─": "-",
        "·": "-",
        "↗": "^",
        HOP: ">>",
        LISTENER: "@",
        ERROR: "X",
        ARROW: "->",
    }
)


def _ms(value: float) -> str:
    if value < 1:
        return f"{value:.2f} ms"
    if value < 1000:
        return f"{value:.1f} ms"
    return f"{value / 1000:.2f} s"


def _duration(span: ReadableSpan) -> str:
    if span.start_time is None or span.end_time is None:
        return "(not ended)"
    return _ms((span.end_time - span.start_time) / 1e6)


def _attrs(span: ReadableSpan) -> Mapping[str, object]:
    return span.attributes or {}


def _is_hop(span: ReadableSpan) -> bool:
    return ATTR_RUNNER in _attrs(span)


def _error(span: ReadableSpan) -> str | None:
    """The failure to show: the status description, else the recorded exception."""
    if span.status.status_code is not StatusCode.ERROR:
        return None
    if span.status.description:
        return span.status.description
    for event in span.events:
        if event.name == "exception":
            attrs = event.attributes or {}
            kind = attrs.get("exception.type", "error")
            return f"{kind}: {attrs.get('exception.message', '')}".rstrip(": ")
    return "error"


class _Tree:
    """Children by parent id, roots, and the thread each span ran in."""

    def __init__(self, spans: Sequence[ReadableSpan]) -> None:
        self.by_id = {s.context.span_id: s for s in spans}
        self.children: dict[int, list[ReadableSpan]] = {}
        self.roots: list[ReadableSpan] = []
        for span in spans:
            parent = span.parent.span_id if span.parent is not None else None
            if parent is not None and parent in self.by_id and parent != span.context.span_id:
                self.children.setdefault(parent, []).append(span)
            else:
                self.roots.append(span)
        for kids in self.children.values():
            kids.sort(key=_start)
        # The local root (no parent, or a remote one) first; then orphans by start time.
        self.roots.sort(key=lambda s: (self.missing_parent(s), _start(s)))
        self.threads: dict[int, str | None] = {}
        for root in self.roots:
            self._assign_threads(root)

    def missing_parent(self, span: ReadableSpan) -> bool:
        """True when the span has a local parent that is not among the spans."""
        parent = span.parent
        return parent is not None and not parent.is_remote and parent.span_id not in self.by_id

    def _first_hop_origin(self, root: ReadableSpan) -> str | None:
        # Breadth-first through spans of the same thread (stop at hops: beyond a hop
        # is another thread); bounded by the number of spans.
        queue = list(self.children.get(root.context.span_id, ()))
        seen = 0
        while queue and seen <= len(self.by_id):
            span = queue.pop(0)
            seen += 1
            attrs = _attrs(span)
            if _is_hop(span):
                origin = attrs.get(ATTR_ORIGIN_THREAD_NAME)
                if origin is not None:
                    return str(origin)
                continue
            # Not the thread.name of other spans (a listener dispatch): with hop spans
            # off or dropped, a span under the root may have run in another thread.
            queue.extend(self.children.get(span.context.span_id, ()))
        return None

    def _assign_threads(self, root: ReadableSpan) -> None:
        own = _attrs(root).get(THREAD_NAME)
        first = str(own) if own is not None else self._first_hop_origin(root)
        stack: list[tuple[ReadableSpan, str | None]] = [(root, first)]
        while stack:
            span, inherited = stack.pop()
            if span.context.span_id in self.threads:
                continue  # a malformed parent chain: never loop
            own = _attrs(span).get(THREAD_NAME)
            thread = str(own) if own is not None else inherited
            self.threads[span.context.span_id] = thread
            for child in self.children.get(span.context.span_id, ()):
                stack.append((child, thread))


_NOTHING: Mapping[int, str] = {}


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def _line(
    span: ReadableSpan, tree: _Tree, is_root: bool, printed: Mapping[int, str] = _NOTHING
) -> str:
    attrs = _attrs(span)
    parts: list[str] = []
    if is_root and tree.missing_parent(span):
        parent = span.parent.span_id  # type: ignore[union-attr]
        if parent in printed:
            parts.append(f"(under {printed[parent]}, printed above)")
        else:
            parts.append(f"(parent {format_span_id(parent)} not exported)")
    thread = tree.threads.get(span.context.span_id)
    if _is_hop(span):
        origin = attrs.get(ATTR_ORIGIN_THREAD_NAME, "?")
        details = [f"{origin} {ARROW} {thread or '?'}"]
        wait = attrs.get(ATTR_QUEUE_WAIT_MS)
        if isinstance(wait, (int, float)):
            details.append(f"waited {_ms(float(wait))}")
        if attrs.get(ATTR_DETACHED):
            details.append("detached: new trace")
        parts.append(f"{HOP} {span.name}  {_duration(span)}  [{', '.join(details)}]")
    elif ATTR_BUS in attrs or ATTR_EVENT in attrs:
        # The span name already says bus and event; how many listeners were there is
        # the question this whole tree exists to answer.
        count = f"  [listeners: {attrs[ATTR_LISTENERS]}]" if ATTR_LISTENERS in attrs else ""
        parts.append(f"{LISTENER} {span.name}  {_duration(span)}{count}")
    else:
        parts.append(f"{span.name}  {_duration(span)}")
        if is_root and thread is not None:
            parts.append(f"[{thread}]")
    for link in span.links:
        linked = f"{format_trace_id(link.context.trace_id)}/{format_span_id(link.context.span_id)}"
        parts.append(f"↗ linked to {linked}")
    error = _error(span)
    if error is not None:
        parts.append(f"{ERROR} {error}")
    return "  ".join(parts)


def _children(tree: _Tree, span: ReadableSpan, indent: str) -> list[tuple[ReadableSpan, bool, str]]:
    """Stack entries ``(child, is_last, indent)`` for ``span``'s children, first on top."""
    kids = tree.children.get(span.context.span_id, [])
    last = len(kids) - 1
    return [(kid, i == last, indent) for i, kid in reversed(list(enumerate(kids)))]


def _walk(tree: _Tree, printed: Mapping[int, str]) -> Iterable[str]:
    for root in tree.roots:
        yield _line(root, tree, is_root=True, printed=printed)
        # Iterative, not recursive: a deep trace must not hit the recursion limit.
        stack = _children(tree, root, "")
        seen: set[int] = {root.context.span_id}
        while stack:
            span, last, indent = stack.pop()
            if span.context.span_id in seen:
                continue
            seen.add(span.context.span_id)
            yield f"{indent}{'└─ ' if last else '├─ '}{_line(span, tree, is_root=False)}"
            stack.extend(_children(tree, span, indent + ("   " if last else "│  ")))


def render_trace(
    spans: Sequence[ReadableSpan],
    *,
    note: str = "",
    dropped: int = 0,
    printed: Mapping[int, str] = _NOTHING,
) -> str:
    """The trace as text, ending with a newline: a header line, then one line per span.

    ``printed``: span id -> name of this trace's spans printed earlier, so that a span
    hanging under one says so instead of "not exported".  No spans: the note alone.
    """
    if not spans:
        return f"── {note}\n\n" if note else ""
    tree = _Tree(spans)
    threads: dict[str, None] = {}
    for span in sorted(spans, key=_start):
        name = tree.threads.get(span.context.span_id)
        if name is not None:
            threads.setdefault(name)
    errors = sum(1 for s in spans if s.status.status_code is StatusCode.ERROR)
    header = [f"trace {format_trace_id(spans[0].context.trace_id)}", f"{len(spans)} spans"]
    if threads:
        header.append(f"threads: {', '.join(threads)}")
    if errors:
        header.append(f"{errors} error{'s' if errors > 1 else ''}")
    if dropped:
        header.append(f"{dropped} spans dropped (over the per-trace cap)")
    if note:
        header.append(note)
    lines = ["── " + " · ".join(header), *_walk(tree, printed)]
    return "\n".join(lines) + "\n\n"
