"""uvicorn / FastAPI / Starlette with the server in a background thread (real server,
real HTTP client): endpoints see the context of the thread that started the server, and
a sync generator streamed by ``StreamingResponse`` keeps one context for its whole life.

Each test first shows the loss without ctxrelay, then the fix.  ctxrelay is instrumented
before the server thread starts: that thread inherits the caller's context at start().
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

import httpx
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

import ctxrelay
from asgi_servers import SERVER_TIMEOUT_S, uvicorn_in_thread
from ctxrelay import attributes
from helpers import parent_of, spans_named

pytestmark = pytest.mark.timeout(120)

#: Set by the thread that starts the server; read by the endpoints.
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("test_tenant", default="lost")
#: Set by a streaming generator before its first yield.
STEP: contextvars.ContextVar[str] = contextvars.ContextVar("test_step", default="lost")


def _endpoints(tracer: trace.Tracer) -> tuple[Any, Any, Any]:
    def sync_endpoint(request: Request) -> PlainTextResponse:
        with tracer.start_as_current_span("sync endpoint"):
            return PlainTextResponse(TENANT.get())

    async def async_endpoint(request: Request) -> PlainTextResponse:
        with tracer.start_as_current_span("async endpoint"):
            return PlainTextResponse(TENANT.get())

    def stream(request: Request) -> StreamingResponse:
        def chunks() -> Iterator[str]:
            with tracer.start_as_current_span("stream generator"):
                STEP.set("kept")
                yield f"{TENANT.get()}/{STEP.get()};"
                yield f"{TENANT.get()}/{STEP.get()};"
                yield f"{TENANT.get()}/{STEP.get()};"

        return StreamingResponse(chunks(), media_type="text/plain")

    return sync_endpoint, async_endpoint, stream


def make_app(tracer: trace.Tracer, kind: str) -> Any:
    """The same three endpoints as a plain Starlette app or a FastAPI app."""
    sync_endpoint, async_endpoint, stream = _endpoints(tracer)
    if kind == "starlette":
        return Starlette(
            routes=[
                Route("/sync", sync_endpoint),
                Route("/async", async_endpoint),
                Route("/stream", stream),
            ]
        )
    app = FastAPI()
    app.get("/sync")(sync_endpoint)
    app.get("/async")(async_endpoint)
    app.get("/stream")(stream)
    return app


def serve_and_get(
    tracer: trace.Tracer, paths: list[str], *, kind: str = "starlette", in_span: bool = False
) -> list[str]:
    """Start the server from a context where TENANT is set (and, if asked, under a span
    "serve"), GET each path, stop it.

    Runs in a copy of the test's context so that nothing set here leaks into other tests.
    """

    def scenario() -> list[str]:
        TENANT.set("main")
        with uvicorn_in_thread(make_app(tracer, kind)) as url:
            with httpx.Client(base_url=url, timeout=SERVER_TIMEOUT_S) as client:
                return [client.get(path).text for path in paths]

    if not in_span:
        return contextvars.copy_context().run(scenario)

    def with_span() -> list[str]:
        with tracer.start_as_current_span("serve"):
            return scenario()

    return contextvars.copy_context().run(with_span)


KINDS = pytest.mark.parametrize("kind", ["starlette", "fastapi"])


@KINDS
def test_endpoints_see_the_context_of_the_thread_that_started_the_server(
    tracer: trace.Tracer, kind: str
) -> None:
    assert serve_and_get(tracer, ["/sync", "/async"], kind=kind) == ["lost", "lost"]

    ctxrelay.instrument()
    assert serve_and_get(tracer, ["/sync", "/async"], kind=kind) == ["main", "main"]


@KINDS
def test_streamed_sync_generator_keeps_one_context(tracer: trace.Tracer, kind: str) -> None:
    # Without ctxrelay: the server thread starts empty, and each step runs in a fresh
    # copy, so what the generator set before its first yield is gone at the next step.
    assert serve_and_get(tracer, ["/stream"], kind=kind) == ["lost/kept;lost/lost;lost/lost;"]

    ctxrelay.instrument()
    assert serve_and_get(tracer, ["/stream"], kind=kind) == ["main/kept;main/kept;main/kept;"]


def test_two_streams_at_once_keep_their_own_context(tracer: trace.Tracer) -> None:
    """Interleaved steps of two generators: each sees only what it set itself."""
    app = FastAPI()

    @app.get("/count/{name}")
    def count(name: str) -> StreamingResponse:
        def chunks() -> Iterator[str]:
            STEP.set(name)
            for i in range(20):
                yield f"{STEP.get()}{i} "

        return StreamingResponse(chunks(), media_type="text/plain")

    def fetch_both() -> list[str]:
        import concurrent.futures

        with uvicorn_in_thread(app) as url:
            with httpx.Client(base_url=url, timeout=SERVER_TIMEOUT_S) as client:
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    futures = [pool.submit(client.get, f"/count/{name}") for name in ("a", "b")]
                    return [f.result(SERVER_TIMEOUT_S).text for f in futures]

    expected = [" ".join(f"{n}{i}" for i in range(20)) + " " for n in ("a", "b")]
    lost = " ".join(f"{'a' if i == 0 else 'lost'}{i}" for i in range(20)) + " "
    assert contextvars.copy_context().run(fetch_both)[0] == lost

    ctxrelay.instrument()
    assert contextvars.copy_context().run(fetch_both) == expected


def nearest_hop(span: Any, exporter: InMemorySpanExporter) -> Any:
    """The closest ancestor that is a ctxrelay hop span (framework spans may sit between)."""
    parent = parent_of(span, exporter)
    while parent is not None and attributes.ATTR_RUNNER not in parent.attributes:
        parent = parent_of(parent, exporter)
    return parent


def test_endpoint_spans_are_children_of_hop_spans(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    # Without ctxrelay the endpoints' spans start new traces: nothing links them to the
    # span that was current where the server was started.
    serve_and_get(tracer, ["/sync", "/async"], in_span=True)
    (serve,) = spans_named(exporter, "serve")
    for name in ("sync endpoint", "async endpoint"):
        (span,) = spans_named(exporter, name)
        assert span.parent is None and span.context.trace_id != serve.context.trace_id

    exporter.clear()
    ctxrelay.instrument()
    serve_and_get(tracer, ["/sync", "/async", "/stream"], in_span=True)
    (serve,) = spans_named(exporter, "serve")

    # The server thread runs uvicorn's own code: a framework hop, not recorded by default
    # (CTXRELAY_DROP_HOPS); its context is carried all the same.
    server_hops = [
        s
        for s in spans_named(exporter, "Thread ")
        if s.attributes[attributes.THREAD_NAME] == "uvicorn-test-server"
    ]
    assert server_hops == []

    # A sync endpoint runs under an anyio.to_thread hop named after it, under "serve".
    (sync_span,) = spans_named(exporter, "sync endpoint")
    to_thread = parent_of(sync_span, exporter)
    assert to_thread.attributes[attributes.ATTR_RUNNER] == "anyio.to_thread"
    assert to_thread.name == "anyio.to_thread sync_endpoint"
    assert parent_of(to_thread, exporter).context.span_id == serve.context.span_id

    # An async endpoint runs in the server thread's event loop, in its carried context.
    (async_span,) = spans_named(exporter, "async endpoint")
    assert parent_of(async_span, exporter).context.span_id == serve.context.span_id

    # The generator's own span starts at its first step, under that step's hop; each
    # step is named after the generator (not Starlette's ``_next``), and the last one,
    # Starlette's ``_StopIteration``, is its normal end, not an error.
    (generator_span,) = spans_named(exporter, "stream generator")
    first_step = parent_of(generator_span, exporter)
    assert first_step.attributes[attributes.ATTR_RUNNER] == "anyio.to_thread"
    assert first_step.name == "anyio.to_thread chunks"
    steps = spans_named(exporter, "anyio.to_thread chunks")
    assert len(steps) == 4  # three chunks, then the end
    assert [s.status.status_code.name for s in steps] == ["UNSET"] * 4
    traces = {s.context.trace_id for s in (sync_span, async_span, generator_span)}
    assert traces == {serve.context.trace_id}


def test_fastapi_request_span_stays_the_root_and_the_hop_sits_inside_it(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    """FastAPI (>= 0.13x) traces each request itself, from the request's headers: a new
    trace per request, whatever the server thread carries.  ctxrelay leaves that alone
    and puts the thread-pool hop inside the request's trace."""
    if not fastapi_traces_requests(tracer, exporter):
        pytest.skip("this FastAPI records no request spans of its own")
    exporter.clear()
    ctxrelay.instrument()
    serve_and_get(tracer, ["/sync"], kind="fastapi", in_span=True)
    (serve,) = spans_named(exporter, "serve")
    (request_span,) = spans_named(exporter, "GET /sync")
    assert request_span.parent is None and request_span.context.trace_id != serve.context.trace_id
    (sync_span,) = spans_named(exporter, "sync endpoint")
    hop = nearest_hop(sync_span, exporter)
    assert hop.attributes[attributes.ATTR_RUNNER] == "anyio.to_thread"
    assert hop.context.trace_id == request_span.context.trace_id


def fastapi_traces_requests(tracer: trace.Tracer, exporter: InMemorySpanExporter) -> bool:
    """Whether the installed FastAPI records a "GET /sync" span of its own."""
    exporter.clear()
    serve_and_get(tracer, ["/sync"], kind="fastapi")
    return bool(spans_named(exporter, "GET /sync"))


# --- iterate_in_threadpool on its own (no server): edge cases of the kept context ----


def _drain(iterable: Any, limit: int | None = None) -> list[Any]:
    """Iterate Starlette's iterate_in_threadpool over ``iterable`` (at most ``limit`` items)."""
    from starlette.concurrency import iterate_in_threadpool

    async def main() -> list[Any]:
        out: list[Any] = []
        stream = iterate_in_threadpool(iterable)
        async for item in stream:
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
        await stream.aclose()
        return out

    import asyncio

    return contextvars.copy_context().run(asyncio.run, main())


def _counting() -> Iterator[str]:
    STEP.set("kept")
    for i in range(3):
        yield f"{STEP.get()}{i}"


def test_kept_contexts_are_let_go() -> None:
    from ctxrelay import iterators

    assert _drain(_counting()) == ["kept0", "lost1", "lost2"]  # without ctxrelay

    ctxrelay.instrument()
    # Exhausted: dropped at the StopIteration step.
    assert _drain(_counting()) == ["kept0", "kept1", "kept2"]
    # Abandoned after one step: dropped when the generator is collected.
    assert _drain(_counting(), limit=1) == ["kept0"]
    import gc

    gc.collect()
    assert iterators._iterator_contexts == {}  # the registry must not grow


def test_plain_iterators_and_errors_pass_through() -> None:
    ctxrelay.instrument()
    # A list iterator cannot be weakly referenced (and runs no user code): unchanged.
    assert _drain([1, 2, 3]) == [1, 2, 3]

    error = KeyError("boom")

    def failing() -> Iterator[int]:
        yield 1
        raise error

    with pytest.raises(KeyError) as caught:
        _drain(failing())
    assert caught.value is error


def test_an_iterator_stepped_from_two_threads_at_once_is_not_broken() -> None:
    """A Context cannot be entered by two threads at once: the overlapping step runs as
    it would without ctxrelay instead of failing with "cannot enter context"."""
    import threading

    from ctxrelay import iterators

    inside = threading.Event()
    release = threading.Event()

    class Slow:
        def __iter__(self) -> Slow:
            return self

        def __next__(self) -> str:
            if threading.current_thread().name == "first":
                inside.set()
                assert release.wait(SERVER_TIMEOUT_S)
            return threading.current_thread().name

    slow = Slow()
    iterators.step_in_own_context(lambda it: it, slow)  # the iterator now has its own context
    results: dict[str, Any] = {}

    def step(name: str, iterator: Slow) -> None:
        try:
            results[name] = iterators.step_in_own_context(next, iterator)
        except BaseException as exc:  # reported below
            results[name] = exc

    first = threading.Thread(target=step, args=("first", slow), name="first")
    first.start()
    assert inside.wait(SERVER_TIMEOUT_S)
    step("second", slow)  # overlaps the first step, from this thread
    release.set()
    first.join(SERVER_TIMEOUT_S)
    assert results == {"first": "first", "second": threading.current_thread().name}
    del slow
