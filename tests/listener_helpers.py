"""Checks shared by the listener-dispatch tests (tests/test_listener_*.py)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import ctxrelay
from ctxrelay import attributes as keys


def dispatches(exporter: InMemorySpanExporter, bus: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.attributes.get(keys.ATTR_BUS) == bus and keys.ATTR_LISTENER_INDEX not in s.attributes
    ]


def listeners(exporter: InMemorySpanExporter, bus: str) -> list[ReadableSpan]:
    found = [
        s
        for s in exporter.get_finished_spans()
        if s.attributes.get(keys.ATTR_BUS) == bus and keys.ATTR_LISTENER_INDEX in s.attributes
    ]
    return sorted(found, key=lambda s: s.attributes[keys.ATTR_LISTENER_INDEX])


def only_dispatch(exporter: InMemorySpanExporter, bus: str) -> ReadableSpan:
    found = dispatches(exporter, bus)
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return (
        child.parent is not None
        and child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


def assert_listener_tree(
    exporter: InMemorySpanExporter, bus: str, event: str, functions: list[Any]
) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """One dispatch span for ``event`` with one child per function, in call order."""
    dispatch = only_dispatch(exporter, bus)
    assert dispatch.name == f"{bus} dispatch {event}"
    assert dispatch.attributes[keys.ATTR_EVENT] == event
    assert dispatch.attributes[keys.ATTR_LISTENERS] == len(functions)
    children = listeners(exporter, bus)
    assert [s.attributes[keys.CODE_FUNCTION_NAME] for s in children] == [
        keys.callable_name(fn) for fn in functions
    ]
    assert [s.name for s in children] == [f"{bus} listener {fn.__name__}" for fn in functions]
    for span in children:
        assert is_child(span, dispatch)
        assert span.attributes[keys.ATTR_EVENT] == event
    starts = [s.start_time for s in children]
    assert starts == sorted(starts)
    return dispatch, children


def assert_failed(span: ReadableSpan, exc: BaseException) -> None:
    assert span.status.status_code is StatusCode.ERROR
    events = [e for e in span.events if e.name == "exception"]
    assert len(events) == 1
    assert events[0].attributes["exception.type"] == type(exc).__name__
    assert events[0].attributes["exception.message"] == str(exc)


def assert_not_recorded(exporter: InMemorySpanExporter, secret: str) -> None:
    for span in exporter.get_finished_spans():
        for value in span.attributes.values():
            assert secret not in str(value), (span.name, value)


def payloads(exporter: InMemorySpanExporter) -> list[str]:
    return [
        str(s.attributes[keys.ATTR_PAYLOAD])
        for s in exporter.get_finished_spans()
        if keys.ATTR_PAYLOAD in s.attributes
    ]


def assert_dispatch_follows_the_hop(
    exporter: InMemorySpanExporter,
    tracer: Any,
    publish: Callable[[], None],
    bus: str,
    work: str = "work",
) -> list[ReadableSpan]:
    """The threaded case: ``publish`` (whose listener opens span ``work``) runs in a pool.

    Without ctxrelay the worker starts with an empty context: the listener's span is a
    new trace, unrelated to the request.  With ctxrelay: request -> hop -> dispatch ->
    listener -> ``work``.  Returns the listener spans, in call order.
    """
    with tracer.start_as_current_span("request"), ThreadPoolExecutor(1) as pool:
        pool.submit(publish).result()
    assert [s.parent for s in exporter.get_finished_spans() if s.name == work] == [None]
    exporter.clear()

    ctxrelay.instrument()
    with tracer.start_as_current_span("request") as request, ThreadPoolExecutor(1) as pool:
        pool.submit(publish).result()
    finished = exporter.get_finished_spans()
    hop = next(s for s in finished if s.name == f"ThreadPoolExecutor {publish.__name__}")
    dispatch = only_dispatch(exporter, bus)
    assert hop.parent.span_id == request.get_span_context().span_id
    assert is_child(dispatch, hop)
    children = listeners(exporter, bus)
    assert children and all(is_child(s, dispatch) for s in children)
    work_span = next(s for s in finished if s.name == work)
    assert any(is_child(work_span, s) for s in children)
    return children
