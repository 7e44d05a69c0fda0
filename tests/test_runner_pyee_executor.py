"""pyee ``ExecutorEventEmitter``: handlers run in a ``ThreadPoolExecutor``; covered by futures.

Read against pyee 13: ``ExecutorEventEmitter._emit_run`` calls
``self._executor.submit(f, *args, **kwargs)`` once per handler, in the thread that
calls ``emit``: the futures entry carries that thread's context to each handler
(runner ``ThreadPoolExecutor``).  No pyee-specific runner patch is needed.
"""

from __future__ import annotations

import contextvars
import queue
from typing import Any

import pytest

import ctxrelay
from ctxrelay import attributes
from helpers import parent_of

pyee_executor = pytest.importorskip("pyee.executor")

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("test_pyee_tenant", default="<unset>")

TIMEOUT = 10


def emit_three(tracer: Any) -> dict[str, str]:
    """Emit from two 'requests' (tenant A, B) and one with nothing set."""
    seen: queue.Queue[tuple[str, str]] = queue.Queue()
    with pyee_executor.ExecutorEventEmitter() as emitter:

        @emitter.on("job")
        def on_job(tag: str) -> None:
            with tracer.start_as_current_span("listener"):
                seen.put((tag, tenant.get()))
                tenant.set("dirty")  # must not reach a later handler on this thread

        def request(tag: str, name: str | None) -> None:
            if name is not None:
                tenant.set(name)
            with tracer.start_as_current_span(f"emit {tag}"):
                emitter.emit("job", tag)

        for tag, name in (("a", "A"), ("b", "B"), ("c", None)):
            contextvars.copy_context().run(request, tag, name)
    # leaving the block shut the executor down and waited for every handler
    return dict(seen.get(timeout=TIMEOUT) for _ in range(3))


def test_handlers_see_the_context_of_the_emitter(tracer: Any) -> None:
    lost = emit_three(tracer)
    assert lost["a"] != "A" and lost["b"] != "B"  # the loss, without ctxrelay
    assert set(lost.values()) <= {"<unset>", "dirty"}

    ctxrelay.instrument(spans=False)
    assert emit_three(tracer) == {"a": "A", "b": "B", "c": "<unset>"}


def test_handler_exception_reaches_the_error_event_unchanged() -> None:
    boom = ValueError("boom")
    errors: queue.Queue[BaseException] = queue.Queue()
    ctxrelay.instrument()
    with pyee_executor.ExecutorEventEmitter() as emitter:

        @emitter.on("job")
        def fail() -> None:
            raise boom

        emitter.on("error", errors.put)
        emitter.emit("job")
        # Inside the block: pyee submits the "error" handler to the same executor,
        # which refuses new work once the block has shut it down.
        assert errors.get(timeout=TIMEOUT) is boom
    assert errors.empty()


def ancestors(span: Any, exporter: Any) -> list[Any]:
    chain = []
    for _ in range(10):
        span = parent_of(span, exporter)
        if span is None:
            break
        chain.append(span)
    return chain


def test_hop_span_is_a_child_of_the_span_current_at_emit(exporter: Any, tracer: Any) -> None:
    # The pyee listener bus (ctxrelay.listeners.pyee) adds dispatch spans of its own
    # around the hand-over; left out here, the hop's parent is the span around emit().
    ctxrelay.instrument(exclude=["pyee"])
    emit_three(tracer)

    listeners = [s for s in exporter.get_finished_spans() if s.name == "listener"]
    assert len(listeners) == 3
    parents = []
    for listener in listeners:
        hop = parent_of(listener, exporter)
        assert hop is not None and hop.attributes[attributes.ATTR_RUNNER] == "ThreadPoolExecutor"
        emit = parent_of(hop, exporter)
        assert emit is not None
        parents.append(emit.name)
    assert sorted(parents) == ["emit a", "emit b", "emit c"]


def test_with_the_listener_bus_the_hop_still_sits_under_its_emit(
    exporter: Any, tracer: Any
) -> None:
    ctxrelay.instrument()
    emit_three(tracer)

    listeners = [s for s in exporter.get_finished_spans() if s.name == "listener"]
    assert len(listeners) == 3
    emits = []
    for listener in listeners:
        chain = ancestors(listener, exporter)
        runners = [(s.attributes or {}).get(attributes.ATTR_RUNNER) for s in chain]
        # one hop per handler, however many spans the bus adds around it
        assert runners.count("ThreadPoolExecutor") == 1
        emits.extend(s.name for s in chain if s.name.startswith("emit "))
    assert sorted(emits) == ["emit a", "emit b", "emit c"]
