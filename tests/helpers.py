"""Small helpers shared by the test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import socket
import sys
import time
from typing import TypeVar

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound, then released, for a server to take)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The real baseline "without ctxrelay", per interpreter and flag: does a new
#: ``threading.Thread`` (or ``Timer``) see the context of the thread that started it?
#: False before 3.14; on 3.14+ it is ``sys.flags.thread_inherit_context`` (default 1 on
#: the free-threaded build, 0 on the GIL build; ``PYTHON_THREAD_INHERIT_CONTEXT``).
#: A pool's worker is such a thread too: under the flag, its first task sees the
#: submitter that started the worker, and every later task sees that same stale copy.
BASELINE_THREAD_INHERITS: bool = bool(getattr(sys.flags, "thread_inherit_context", 0))


def baseline(lost: T, inherited: T) -> T:
    """What work in a *new* thread sees without ctxrelay on this interpreter and flag.

    ``lost`` before 3.14 and with ``thread_inherit_context=0``; ``inherited`` when
    ``start()`` copies the starter's context (:data:`BASELINE_THREAD_INHERITS`), which
    includes the first task of a pool whose worker that task's ``submit`` starts.
    """
    return inherited if BASELINE_THREAD_INHERITS else lost


#: The free-threaded build with the GIL actually off (3.13t/3.14t).
FREE_THREADED: bool = not getattr(sys, "_is_gil_enabled", lambda: True)()


def spans_named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def wait_for_spans(
    exporter: InMemorySpanExporter, prefix: str, count: int = 1, timeout: float = 10.0
) -> list[ReadableSpan]:
    """The spans named ``prefix...`` once at least ``count`` have ended (or at ``timeout``).

    For work whose thread the test cannot join (a server's daemon request threads): the
    reply can reach the test before that thread has ended its hop span.
    """
    deadline = time.monotonic() + timeout
    while len(spans_named(exporter, prefix)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return spans_named(exporter, prefix)


def parent_of(span: ReadableSpan, exporter: InMemorySpanExporter) -> ReadableSpan | None:
    if span.parent is None:
        return None
    for candidate in exporter.get_finished_spans():
        if candidate.context.span_id == span.parent.span_id:
            return candidate
    return None
