"""Gradio's queue is a hand-over: each job runs in its join request's context.

Real servers on 127.0.0.1 (uvicorn with ``gr.mount_gradio_app``, and ``demo.launch()``),
real ``gradio_client`` clients, a middleware setting a request-scoped ContextVar from a
header (see ``gradio_apps.py``).  Two clients with different ids drive a sync, a
generator and an async handler at the same time.  Without ctxrelay no handler sees its
own id (jobs run in the queue loop's context); with it each one does, each handler's
spans sit in its own join request's trace under a ``gradio.queue <handler>`` hop, no
span lands in the trace of the request that started the queue, generator steps are
named after the user's function, no normal end is an error, and a page load records no
hop spans for the static files it serves (unless asked to).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

# Before gradio (and huggingface_hub) are imported: no telemetry, no hub calls.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

gr = pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402

import ctxrelay  # noqa: E402
import gradio_apps  # noqa: E402
from ctxrelay import attributes  # noqa: E402

pytestmark = pytest.mark.timeout(180)

SERVES: dict[str, Callable[..., Any]] = {
    "mounted": gradio_apps.mounted,
    "launched": gradio_apps.launched,
}
HANDLER_SPANS = {
    "sync handler": "sync_handler",
    "gen handler": "gen_handler",
    "async handler": "async_handler",
}


class Traces:
    """The finished spans, with parent links followed."""

    def __init__(self, finished: Any) -> None:
        self.all: list[ReadableSpan] = list(finished)
        self.by_id = {s.context.span_id: s for s in self.all}

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self.by_id.get(span.parent.span_id) if span.parent is not None else None

    def ancestors(self, span: ReadableSpan) -> list[ReadableSpan]:
        chain = []
        parent = self.parent(span)
        while parent is not None:
            chain.append(parent)
            parent = self.parent(parent)
        return chain

    def root(self, span: ReadableSpan) -> ReadableSpan:
        chain = self.ancestors(span)
        return chain[-1] if chain else span

    def hops(self) -> list[ReadableSpan]:
        return [s for s in self.all if attributes.ATTR_RUNNER in (s.attributes or {})]


def runner_of(span: ReadableSpan) -> Any:
    return (span.attributes or {}).get(attributes.ATTR_RUNNER)


def function_of(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get(attributes.CODE_FUNCTION_NAME))


def own_ids(results: dict[str, dict[str, list[str]]]) -> int:
    """How many handler outputs carry the id of the client that sent them."""
    return sum(
        out == f"{cid}={cid}"
        for cid, per in results.items()
        for outs in per.values()
        for out in outs
    )


TOTAL_OUTPUTS = 2 * (1 + gradio_apps.STEPS + 1)


@pytest.mark.parametrize("serve", SERVES, ids=list(SERVES))
def test_each_job_runs_in_its_join_requests_context(
    serve: str, tracer: Any, exporter: Any, no_internet: list[Any]
) -> None:
    # Without ctxrelay: every job runs in the queue loop's context (started by the
    # startup request, or by the lifespan when mounted): no handler sees its own id.
    with SERVES[serve](tracer) as url:
        results = gradio_apps.drive_two(url)
    assert sorted(results) == ["alice", "bob"]
    assert own_ids(results) == 0

    exporter.clear()
    ctxrelay.instrument()
    with SERVES[serve](tracer) as url:
        results = gradio_apps.drive_two(url)
        assets = gradio_apps.load_page(url)
    assert own_ids(results) == TOTAL_OUTPUTS, results
    assert assets > 0
    traces = Traces(exporter.get_finished_spans())

    # Each handler span is in the trace of the join request of the client it served,
    # under the queue hop named after the handler.
    handler_spans = [s for s in traces.all if s.name in HANDLER_SPANS]
    assert len(handler_spans) == 2 * (2 + gradio_apps.STEPS)
    for span in handler_spans:
        root = traces.root(span)
        assert "queue/join" in root.name, (span.name, root.name)
        assert root.attributes[gradio_apps.CLIENT_ATTR] == span.attributes["seen"]
        queue_hops = [
            a
            for a in traces.ancestors(span)
            if a.attributes.get(attributes.ATTR_RUNNER) == "gradio.queue"
        ]
        assert [h.name for h in queue_hops] == [f"gradio.queue {HANDLER_SPANS[span.name]}"]
        assert queue_hops[0].attributes[attributes.ATTR_QUEUE_WAIT_MS] >= 0

    queue_hops = [
        s for s in traces.hops() if s.attributes[attributes.ATTR_RUNNER] == "gradio.queue"
    ]
    assert sorted(s.name for s in queue_hops) == sorted(
        f"gradio.queue {h}" for h in gradio_apps.HANDLERS for _ in range(2)
    )
    for hop in queue_hops:
        assert "queue/join" in traces.root(hop).name

    # Generator steps are named after the user's function, every step one hop (the
    # last one ends the generator: not an error).
    steps = [s for s in traces.hops() if s.attributes[attributes.ATTR_RUNNER] == "anyio.to_thread"]
    assert sorted({s.name for s in steps}) == [
        "anyio.to_thread gen_handler",
        "anyio.to_thread sync_handler",
    ]
    gen_steps = [s for s in steps if s.name.endswith("gen_handler")]
    # (one per yield, one for the end; Gradio may step once more after the end)
    assert len(gen_steps) >= 2 * (gradio_apps.STEPS + 1)
    assert all(
        s.attributes[attributes.CODE_FUNCTION_NAME].endswith("gen_handler") for s in gen_steps
    )
    assert [s.name for s in traces.all if s.status.status_code is StatusCode.ERROR] == []

    # Every hop is in a join request's trace: none in the startup request's (or the
    # lifespan's), none for the page load's static files.
    roots = sorted({traces.root(h).name for h in traces.hops()})
    assert all("queue/join" in name for name in roots), roots
    startup = [s for s in traces.all if "startup-events" in s.name]
    assert len(startup) == (1 if serve == "launched" else 0)  # mounted: the lifespan
    for span in startup:
        same_trace = [s for s in traces.all if s.context.trace_id == span.context.trace_id]
        assert all(attributes.ATTR_RUNNER not in s.attributes for s in same_trace)
        assert all(s.name not in HANDLER_SPANS for s in same_trace)
    assert no_internet == []


def test_static_file_hops_come_back_when_asked(
    tracer: Any, exporter: Any, no_internet: list[Any]
) -> None:
    """By default a page load records no hop spans; ``drop_hops=["none"]`` records
    Starlette's file stat/open/read/close hops again."""
    ctxrelay.instrument()
    with gradio_apps.mounted(tracer) as url:
        gradio_apps.load_page(url)
    assert Traces(exporter.get_finished_spans()).hops() == []

    exporter.clear()
    ctxrelay.instrument(drop_hops=["none"])
    with gradio_apps.mounted(tracer) as url:
        gradio_apps.load_page(url)
    names = {s.name for s in Traces(exporter.get_finished_spans()).hops()}
    assert {"anyio.to_thread stat", "anyio.to_thread read"} <= names, names
    assert no_internet == []
