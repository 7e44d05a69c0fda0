"""Gradio (real ``demo.launch()`` on 127.0.0.1, real ``gradio_client``): a griptape listener
added in the thread that launches the app fires inside sync, async and sync-generator
handlers, a generator keeps what it set before its first ``yield``, and the handlers'
spans sit under hop spans in the launcher's trace.

Each test first shows the loss without ctxrelay, then the fix.  ctxrelay is instrumented
before ``launch()``: the server thread inherits the launcher's context when it starts.
No test may reach the internet (telemetry, update checks, share links): name lookups
other than the loopback interface fail the test.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Before gradio is imported: no telemetry thread, no hub calls.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from attrs import define  # noqa: E402
from griptape.events import BaseEvent, EventBus, EventListener  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

import ctxrelay  # noqa: E402
from ctxrelay import attributes  # noqa: E402
from gradio_apps import launch_local  # noqa: E402
from helpers import parent_of, spans_named  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@define
class Ping(BaseEvent):
    handler: str = ""


class Received:
    """What the module-level listener saw: handler names, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: list[str] = []

    def __call__(self, event: BaseEvent) -> None:
        with self.lock:
            self.names.append(getattr(event, "handler", "?"))


def make_demo(tracer: trace.Tracer) -> Any:
    def sync_handler(text: str) -> str:
        with tracer.start_as_current_span("sync handler"):
            EventBus.publish_event(Ping(handler="sync"))
            return text

    async def async_handler(text: str) -> str:
        with tracer.start_as_current_span("async handler"):
            EventBus.publish_event(Ping(handler="async"))
            return text

    def generator_handler(text: str) -> Iterator[str]:
        # A per-request listener added before the first yield, as a streaming UI would:
        # events of every later step must still reach it.
        mine: list[BaseEvent] = []
        EventBus.add_event_listener(EventListener(mine.append))
        with tracer.start_as_current_span("generator handler"):
            for step in range(3):
                EventBus.publish_event(Ping(handler=f"generator {step}"))
                yield f"step {step}: {len(mine)} events reached my listener"

    with gr.Blocks(analytics_enabled=False) as demo:
        box_in, box_out = gr.Textbox(), gr.Textbox()
        gr.Button("sync").click(sync_handler, box_in, box_out, api_name="sync_handler")
        gr.Button("async").click(async_handler, box_in, box_out, api_name="async_handler")
        gr.Button("gen").click(generator_handler, box_in, box_out, api_name="generator_handler")
    return demo


def _without_fastapi_tracing() -> dict[str, Any]:
    """FastAPI >= 0.16x traces requests itself (when a tracer provider is set), and
    Gradio's queue tasks descend from the request that started the queue: every
    handler span would then sit in that one, long-ended, request's trace (with or
    without ctxrelay).  The span test switches FastAPI's request spans off to look at
    the hops alone."""
    import inspect

    from fastapi import FastAPI

    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "operation_spans": False}}
    return {}


def launch_and_call(
    tracer: trace.Tracer, *, in_span: bool = False, fastapi_tracing: bool = True
) -> tuple[list[str], list[str]]:
    """Module-level setup in a thread of its own context: add the listener, launch, call
    each handler through gradio_client, close.  Returns (listener saw, generator yields).
    """
    received = Received()
    app_kwargs = {} if fastapi_tracing else _without_fastapi_tracing()

    def scenario() -> tuple[list[str], list[str]]:
        EventBus.add_event_listener(EventListener(received))
        demo = make_demo(tracer)
        url = launch_local(demo, app_kwargs)
        try:
            client = gradio_client.Client(url, verbose=False, download_files=False)
            client.predict("x", api_name="/sync_handler")
            client.predict("x", api_name="/async_handler")
            steps = list(client.submit("x", api_name="/generator_handler"))
        finally:
            demo.close()
        return sorted(received.names), steps

    run: Callable[[], tuple[list[str], list[str]]] = scenario
    if in_span:

        def run() -> tuple[list[str], list[str]]:
            with tracer.start_as_current_span("launch"):
                return scenario()

    return contextvars.copy_context().run(run)


ALL_HANDLERS = ["async", "generator 0", "generator 1", "generator 2", "sync"]
KEPT = [f"step {n}: {n + 1} events reached my listener" for n in range(3)]
LOST = [f"step {n}: 1 events reached my listener" for n in range(3)]


def detach_failures(caplog: pytest.LogCaptureFixture) -> int:
    return sum("Failed to detach context" in r.getMessage() for r in caplog.records)


def test_module_level_listener_fires_in_every_handler(
    tracer: trace.Tracer, no_internet: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Without ctxrelay the server thread starts with an empty context: no listener, and
    # the generator's own listener is gone after its first step (a fresh copy per step).
    # Its span, opened at the first step, cannot even be closed at the last one.
    caplog.set_level("ERROR", logger="opentelemetry.context")
    seen, steps = launch_and_call(tracer)
    assert seen == []
    assert steps == LOST
    assert detach_failures(caplog) == 1

    caplog.clear()
    ctxrelay.instrument()
    seen, steps = launch_and_call(tracer)
    assert seen == ALL_HANDLERS
    assert steps == KEPT
    assert detach_failures(caplog) == 0
    assert no_internet == []


def test_generator_context_only_without_the_thread_patch(
    tracer: trace.Tracer, no_internet: list[Any]
) -> None:
    """The generator fix stands on its own: with the thread patch excluded the launcher's
    listener is lost (nothing carries it into the server thread) but each generator
    still keeps its own context from step to step."""
    ctxrelay.instrument(exclude=["threading"])
    seen, steps = launch_and_call(tracer)
    assert seen == []
    assert steps == KEPT
    assert no_internet == []


def _runner(span: Any) -> Any:
    return span.attributes.get(attributes.ATTR_RUNNER) if span is not None else None


def test_handler_spans_are_children_of_hop_spans(
    tracer: trace.Tracer, exporter: InMemorySpanExporter, no_internet: list[Any]
) -> None:
    # Without ctxrelay: each handler's span starts a trace of its own.
    launch_and_call(tracer, in_span=True, fastapi_tracing=False)
    (launch,) = spans_named(exporter, "launch")
    for name in ("sync handler", "async handler", "generator handler"):
        (span,) = spans_named(exporter, name)
        assert span.parent is None and span.context.trace_id != launch.context.trace_id

    exporter.clear()
    ctxrelay.instrument()
    launch_and_call(tracer, in_span=True, fastapi_tracing=False)
    (launch,) = spans_named(exporter, "launch")

    # The server thread runs uvicorn's code (a framework hop, not recorded by default):
    # every job is a queue hop named after its handler, under the span current when it
    # was enqueued (no request spans here: the launcher's, carried into the server).
    assert [s for s in exporter.get_finished_spans() if _runner(s) == "gradio"] == []
    queue_hops = {s.name: s for s in exporter.get_finished_spans() if _runner(s) == "gradio.queue"}
    assert sorted(queue_hops) == [
        "gradio.queue async_handler",
        "gradio.queue generator_handler",
        "gradio.queue sync_handler",
    ]
    for hop in queue_hops.values():
        assert parent_of(hop, exporter).context.span_id == launch.context.span_id

    # Async handlers run in the job's task: directly under its queue hop.
    (async_span,) = spans_named(exporter, "async handler")
    assert parent_of(async_span, exporter) is queue_hops["gradio.queue async_handler"]

    # Sync handlers and generator steps run through anyio.to_thread: under its hop,
    # named after the user's function (the generator's too, not Gradio's helper).
    (sync_span,) = spans_named(exporter, "sync handler")
    sync_hop = parent_of(sync_span, exporter)
    assert _runner(sync_hop) == "anyio.to_thread"
    assert sync_hop.name == "anyio.to_thread sync_handler"
    assert parent_of(sync_hop, exporter) is queue_hops["gradio.queue sync_handler"]

    (generator_span,) = spans_named(exporter, "generator handler")
    first_step = parent_of(generator_span, exporter)
    assert first_step.name == "anyio.to_thread generator_handler"
    assert first_step.attributes[attributes.CODE_FUNCTION_NAME].endswith("generator_handler")
    assert parent_of(first_step, exporter) is queue_hops["gradio.queue generator_handler"]

    traces = {s.context.trace_id for s in (async_span, sync_span, generator_span)}
    assert traces == {launch.context.trace_id}
    assert no_internet == []
