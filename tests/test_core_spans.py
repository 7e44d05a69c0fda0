"""Hop spans: the tree across threads, their attributes, errors and the quiet cases."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import StatusCode

import ctxrelay
from ctxrelay import attributes, spans
from helpers import parent_of, spans_named

var: contextvars.ContextVar[str] = contextvars.ContextVar("ctxrelay_span_var", default="EMPTY")


def _work(tracer: trace.Tracer) -> str:
    with tracer.start_as_current_span("inner"):
        return var.get()


def test_thread_pool_and_executor_hops_are_children_of_the_origin(exporter, tracer) -> None:
    ctxrelay.instrument()

    async def in_loop() -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _work, tracer)
        await asyncio.to_thread(_work, tracer)

    def scenario() -> None:
        var.set("secret-value")
        with tracer.start_as_current_span("root"):
            t = threading.Thread(target=_work, args=(tracer,), name="hop-thread")
            t.start()
            t.join()
            with ThreadPoolExecutor(1, thread_name_prefix="hop-pool") as pool:
                pool.submit(_work, tracer).result()
            asyncio.run(in_loop())

    contextvars.copy_context().run(scenario)

    root = spans_named(exporter, "root")[0]
    expected = {
        "Thread _work": "Thread",
        "ThreadPoolExecutor _work": "ThreadPoolExecutor",
        "run_in_executor _work": "run_in_executor",
        "to_thread _work": "to_thread",
    }
    for name, runner in expected.items():
        (hop,) = spans_named(exporter, name)
        assert parent_of(hop, exporter) is root
        assert hop.context.trace_id == root.context.trace_id
        attrs = dict(hop.attributes)
        assert attrs[attributes.ATTR_RUNNER] == runner
        assert attrs[attributes.CODE_FUNCTION_NAME] == f"{__name__}._work"
        assert attrs[attributes.ATTR_ORIGIN_THREAD_NAME] == "MainThread"
        assert attrs[attributes.ATTR_ORIGIN_THREAD_ID] == threading.main_thread().ident
        assert attrs[attributes.THREAD_ID] != attrs[attributes.ATTR_ORIGIN_THREAD_ID]
        # The figures themselves: test_queue_wait_* and test_context_vars_* below.
        assert isinstance(attrs[attributes.ATTR_QUEUE_WAIT_MS], float)
        assert isinstance(attrs[attributes.ATTR_CONTEXT_VARS], int)
        assert "secret-value" not in repr(attrs), "ContextVar values are never recorded"
    names = {
        dict(s.attributes)[attributes.THREAD_NAME]
        for s in exporter.get_finished_spans()
        if s.name.endswith(" _work")
    }
    assert "hop-thread" in names
    assert any(n.startswith("hop-pool") for n in names)
    # The user's span inside the work is a child of the hop, in the worker thread.
    for inner in spans_named(exporter, "inner"):
        assert parent_of(inner, exporter).name.endswith(" _work")
    # asyncio.to_thread already copies: one hop, not a second one from the pool patch.
    assert not spans_named(exporter, "ThreadPoolExecutor partial")


def _noop() -> None:
    pass


def test_queue_wait_is_the_time_the_work_waited_for_a_worker(exporter, tracer) -> None:
    """A task queued behind a busy worker waits at least as long as the worker is held.

    Bounds from the test's own clock (the one the span uses), not thresholds: the wait
    began before the hold and ended before ``result()`` returned.
    """
    ctxrelay.instrument()
    release = threading.Event()
    with ThreadPoolExecutor(1) as pool, tracer.start_as_current_span("root"):
        busy = pool.submit(release.wait, 10)
        before_ns = time.perf_counter_ns()
        queued = pool.submit(_noop)
        hold_start_ns = time.perf_counter_ns()
        time.sleep(0.05)
        held_ns = time.perf_counter_ns() - hold_start_ns
        release.set()
        queued.result(10)
        elapsed_ns = time.perf_counter_ns() - before_ns
        assert busy.result(10) is True

    (hop,) = spans_named(exporter, "ThreadPoolExecutor _noop")
    wait_ms = hop.attributes[attributes.ATTR_QUEUE_WAIT_MS]
    assert held_ns / 1e6 <= wait_ms <= elapsed_ns / 1e6


def test_context_vars_is_the_number_of_variables_carried(exporter, tracer) -> None:
    """The count is the size of the hand-over's context: set three more, count three more."""
    ctxrelay.instrument()
    extra = [contextvars.ContextVar(f"ctxrelay_span_extra_{i}") for i in range(3)]

    def hand_over(n: int) -> int:
        for v in extra[:n]:
            v.set("x")
        with tracer.start_as_current_span(f"root {n}"):
            carried = len(contextvars.copy_context())
            t = threading.Thread(target=_noop, name=f"vars-{n}")
            t.start()
            t.join(10)
        return carried

    # Each in a new, empty context: only what hand_over sets is in it.
    carried = {n: contextvars.Context().run(hand_over, n) for n in (0, 3)}
    counted = {}
    for hop in spans_named(exporter, "Thread _noop"):
        n = int(hop.attributes[attributes.THREAD_NAME].removeprefix("vars-"))
        counted[n] = hop.attributes[attributes.ATTR_CONTEXT_VARS]
    assert counted == carried
    assert carried[3] - carried[0] == 3


def test_failing_work_gets_error_status_and_exception_event(exporter, tracer) -> None:
    ctxrelay.instrument()

    def fails() -> None:
        raise ZeroDivisionError("no")

    with tracer.start_as_current_span("root"), ThreadPoolExecutor(1) as pool:
        with pytest.raises(ZeroDivisionError, match="no"):
            pool.submit(fails).result()
    (hop,) = spans_named(exporter, "ThreadPoolExecutor fails")
    assert hop.status.status_code is StatusCode.ERROR
    assert [e.name for e in hop.events] == ["exception"]
    assert hop.events[0].attributes["exception.type"] == "ZeroDivisionError"


def test_failing_thread_and_subclass_record_the_exception(exporter, tracer) -> None:
    ctxrelay.instrument()

    class Worker(threading.Thread):
        def run(self) -> None:
            raise RuntimeError("from run")

    hooked: list[BaseException] = []
    old = threading.excepthook
    threading.excepthook = lambda args: hooked.append(args.exc_value)
    try:
        with tracer.start_as_current_span("root"):
            w = Worker(name="sub")
            w.start()
            w.join()
    finally:
        threading.excepthook = old
    assert [type(e) for e in hooked] == [RuntimeError], "the thread's excepthook still sees it"
    (hop,) = spans_named(exporter, "Thread run")
    assert hop.status.status_code is StatusCode.ERROR
    assert dict(hop.attributes)[attributes.CODE_FUNCTION_NAME].endswith("Worker.run")
    assert dict(hop.attributes)[attributes.THREAD_NAME] == "sub"
    assert "run" not in w.__dict__, "the instance is left as it was"


def test_timer_hop_is_named_timer(exporter, tracer) -> None:
    ctxrelay.instrument()
    with tracer.start_as_current_span("root"):
        t = threading.Timer(0.001, _work, args=(tracer,))
        t.start()
        t.join()
    (hop,) = spans_named(exporter, "Timer _work")
    assert dict(hop.attributes)[attributes.ATTR_RUNNER] == "Timer"


def test_no_span_without_an_active_span_but_context_still_carried(exporter) -> None:
    ctxrelay.instrument()

    def scenario() -> str:
        var.set("carried")
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(var.get).result()

    assert contextvars.copy_context().run(scenario) == "carried"
    assert exporter.get_finished_spans() == ()


def test_spans_false_propagates_without_spans(exporter, tracer) -> None:
    ctxrelay.instrument(spans=False)
    with tracer.start_as_current_span("root"), ThreadPoolExecutor(1) as pool:
        assert pool.submit(lambda: trace.get_current_span().is_recording()).result()
    assert [s.name for s in exporter.get_finished_spans()] == ["root"]


def test_unsampled_parent_skips_the_span_work() -> None:
    local = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(local))
    ctxrelay.instrument(tracer_provider=provider)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("unsampled"):
        assert spans.admit("Thread") is None, "no Hop is even allocated"
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: None).result()
    assert local.get_finished_spans() == ()


def test_sdk_own_threads_produce_no_spans_and_shutdown_does_not_hang(exporter, tracer) -> None:
    """A batch processor created and flushed while instrumented and inside a span."""
    ctxrelay.instrument()
    local = InMemorySpanExporter()
    provider = TracerProvider()
    with tracer.start_as_current_span("root"):
        provider.add_span_processor(BatchSpanProcessor(local, schedule_delay_millis=10))
        provider.get_tracer("x").start_span("one").end()
        assert provider.force_flush(5000)
    provider.shutdown()  # joins the processor's worker thread
    assert [s.name for s in local.get_finished_spans()] == ["one"]
    hops = [
        s for s in exporter.get_finished_spans() if attributes.ATTR_RUNNER in (s.attributes or {})
    ]
    assert hops == [], [h.name for h in hops]


def _hops_of_building_a_provider(exporter, tracer) -> list[str]:
    """A TracerProvider() built inside a sampled span: the hop spans that gives."""
    exporter.clear()
    with tracer.start_as_current_span("root"):
        TracerProvider().shutdown()  # runs its resource detectors in a thread pool
    return [
        s.name
        for s in exporter.get_finished_spans()
        if attributes.ATTR_RUNNER in (s.attributes or {})
    ]


def test_the_sdks_own_pool_work_records_no_hop_by_default(exporter, tracer) -> None:
    """Bare: no span; instrumented: none either (the detectors' hops are dropped), while
    with DROP_HOPS=none they would reach the global exporter (the SDK does use a pool)."""
    bare = _hops_of_building_a_provider(exporter, tracer)
    ctxrelay.instrument()
    instrumented = _hops_of_building_a_provider(exporter, tracer)
    ctxrelay.instrument(drop_hops=["none"])
    every_hop = _hops_of_building_a_provider(exporter, tracer)
    assert bare == instrumented == []
    assert every_hop and all(name.startswith("ThreadPoolExecutor") for name in every_hop)


def test_attribute_values_are_bounded() -> None:
    def fn() -> None: ...

    fn.__qualname__ = "x" * 10_000
    assert len(attributes.callable_name(fn)) <= attributes.MAX_ATTRIBUTE_LENGTH


def test_hand_over_after_the_parent_ended_still_records_the_hop(exporter, tracer) -> None:
    """A done-callback hands work over after its span ended: the hop stays in the trace."""
    ctxrelay.instrument()
    span = tracer.start_span("ended-parent")
    span.end()
    with trace.use_span(span, end_on_exit=False), ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: None).result()
    (hop,) = spans_named(exporter, "ThreadPoolExecutor <lambda>")
    assert hop.parent.span_id == span.get_span_context().span_id
