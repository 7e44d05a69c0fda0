"""Host safety, the user's outcome: span bookkeeping never changes what the caller gets.

Same scenario bare and instrumented (under a sampled span): the same return value, the
very same exception object, the function run once, and no ERROR status for a normal
end (a generator's ``StopIteration``, a thread's ``SystemExit``).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool
from typing import Any

import pytest

try:  # a framework extra: the light CI legs run without it
    import blinker
except ImportError:  # pragma: no cover
    blinker = None
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from safety_support import HANG, Outcome, assert_same, differential


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ failed")


class StrNotStr(Exception):
    def __str__(self) -> Any:
        return 42


def _raising(exc: BaseException, calls: list[int]) -> Callable[..., Any]:
    def work(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise exc

    return work


def via_submit(fn: Callable[..., Any]) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(HANG)


def via_thread_pool(fn: Callable[..., Any]) -> Any:
    with ThreadPool(1) as pool:
        return pool.apply_async(fn).get(HANG)


def via_run_in_executor(fn: Callable[..., Any]) -> Any:
    async def main() -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    return asyncio.run(main())


def via_thread(fn: Callable[..., Any]) -> Any:
    """Runs ``fn`` in a Thread; re-raises what ``threading.excepthook`` received."""
    received: list[Any] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: received.append(args.exc_value)
    try:
        thread = threading.Thread(target=fn)
        thread.start()
        thread.join(HANG)
    finally:
        threading.excepthook = previous
    if received:
        raise received[0]
    return None


def via_listener(fn: Callable[..., Any]) -> Any:
    signal = blinker.Signal()
    signal.connect(fn)
    return [value for _, value in signal.send("sender")]


RUNNERS = {
    "submit": via_submit,
    "ThreadPool": via_thread_pool,
    "run_in_executor": via_run_in_executor,
    "Thread": via_thread,
}
if blinker is not None:
    RUNNERS["listener"] = via_listener


def _scenario(runner: Callable[[Callable[..., Any]], Any], make: Callable[[], Any]) -> Outcome:
    calls: list[int] = []
    raised = make()
    try:
        value = runner(_raising(raised, calls))
    except BaseException as exc:  # compared below
        return Outcome(exception=exc, runs=len(calls), extra={"same object": exc is raised})
    return Outcome(value=value, runs=len(calls))


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("make", [StrRaises, StrNotStr], ids=["str raises", "str not a str"])
def test_an_exception_that_cannot_be_printed_reaches_the_caller_unchanged(
    runner: str, make: Callable[[], BaseException]
) -> None:
    bare, instrumented = differential(lambda: _scenario(RUNNERS[runner], make))
    assert bare.extra == {"same object": True} and bare.runs == 1
    assert_same(bare, instrumented)


class FailingOnEnd(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("span processor failed")


def _failing_provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(FailingOnEnd())
    return provider


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_failing_span_processor_changes_neither_result_nor_exception(runner: str) -> None:
    provider = _failing_provider()
    via = RUNNERS[runner]

    def returning() -> Outcome:
        calls: list[int] = []

        def work(*args: Any) -> str:
            calls.append(1)
            return "result"

        return Outcome(value=via(work), runs=len(calls))

    bare, instrumented = differential(returning, tracer_provider=provider)
    assert_same(bare, instrumented)
    bare, instrumented = differential(
        lambda: _scenario(via, lambda: ValueError("user's")), tracer_provider=provider
    )
    assert bare.extra == {"same object": True}
    assert_same(bare, instrumented)


def test_run_in_executor_refuses_a_coroutine_function_as_asyncio_does() -> None:
    """Debug mode: asyncio checks the callable; ctxrelay's must not hide it."""

    async def coroutine_function() -> None:
        pass

    def scenario() -> Outcome:
        async def main() -> Any:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, coroutine_function)

        try:
            return Outcome(value=asyncio.run(main(), debug=True))
        except TypeError as exc:
            return Outcome(exception=exc)

    bare, instrumented = differential(scenario)
    assert bare.exception_type is TypeError
    assert_same(bare, instrumented)


def _own_exporter() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _errors(exporter: InMemorySpanExporter) -> list[str]:
    return [
        s.name for s in exporter.get_finished_spans() if s.status.status_code is StatusCode.ERROR
    ]


def test_a_generator_step_that_ends_the_generator_is_not_an_error() -> None:
    provider, exporter = _own_exporter()

    def scenario() -> Outcome:
        try:
            return Outcome(value=via_submit(lambda: next(iter(()))))
        except StopIteration as exc:
            return Outcome(exception=exc)

    bare, instrumented = differential(scenario, tracer_provider=provider)
    assert bare.exception_type is StopIteration
    assert_same(bare, instrumented)
    assert [s.name for s in exporter.get_finished_spans()] == ["ThreadPoolExecutor <lambda>"]
    assert _errors(exporter) == []


def test_a_thread_ending_with_system_exit_is_not_an_error() -> None:
    provider, exporter = _own_exporter()

    def scenario() -> Outcome:
        calls: list[int] = []

        def work() -> None:
            calls.append(1)
            sys.exit(3)

        try:
            return Outcome(value=via_thread(work), runs=len(calls))
        except SystemExit as exc:  # what threading.excepthook was given
            return Outcome(exception=exc, runs=len(calls))

    bare, instrumented = differential(scenario, tracer_provider=provider)
    assert_same(bare, instrumented)
    assert [s.name for s in exporter.get_finished_spans()] == ["Thread work"]
    assert _errors(exporter) == []


def test_a_thread_that_fails_still_records_the_error() -> None:
    """The other side of the two tests above: a real failure is an ERROR on the hop."""
    provider, exporter = _own_exporter()
    bare, instrumented = differential(
        lambda: _scenario(via_thread, lambda: ValueError("boom")), tracer_provider=provider
    )
    assert_same(bare, instrumented)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: boom"


def test_a_streamed_sync_generator_ends_without_an_error_span() -> None:
    starlette = pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    assert starlette
    provider, exporter = _own_exporter()

    def numbers() -> Any:
        yield from (b"1", b"2", b"3")

    async def stream(request: Any) -> StreamingResponse:
        return StreamingResponse(numbers())

    def scenario() -> Outcome:
        with TestClient(Starlette(routes=[Route("/", stream)])) as client:
            return Outcome(value=client.get("/").content)

    bare, instrumented = differential(scenario, tracer_provider=provider)
    assert_same(bare, instrumented)
    assert bare.value == b"123"
    steps = [s for s in exporter.get_finished_spans() if s.name.startswith("anyio.to_thread")]
    assert len(steps) == 4  # three values and the end
    assert _errors(exporter) == []
