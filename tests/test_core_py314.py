"""Code that branches on Python 3.14 (``Thread(context=)``, ``thread_inherit_context``,
``_WorkItem(future, task)``, ``InterpreterPoolExecutor``), driven with simulated inputs
so that it is covered on the supported 3.10-3.13 too; then the same paths on a real
3.14 (GIL and free-threaded, ``thread_inherit_context`` 0 or 1), skipped before 3.14.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib.util
import sys
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

import ctxrelay
from ctxrelay.runners import futures, threads
from helpers import BASELINE_THREAD_INHERITS

TIMEOUT = 30

var: contextvars.ContextVar[str] = contextvars.ContextVar("ctxrelay_py314_var", default="EMPTY")


@pytest.mark.parametrize(
    ("has_thread_context", "explicit", "inherit", "carry"),
    [
        (False, False, False, True),  # <= 3.13: ctxrelay always carries
        (False, True, True, True),  # (inputs that cannot occur before 3.14 change nothing)
        (True, False, False, True),  # 3.14 GIL build default: start() gives an empty Context
        (True, False, True, False),  # free-threaded default: start() already copied
        (True, True, False, False),  # explicit context= wins
        (True, True, True, False),
    ],
)
def test_needs_carry(has_thread_context: bool, explicit: bool, inherit: bool, carry: bool) -> None:
    assert (
        threads.needs_carry(
            has_thread_context=has_thread_context, explicit_context=explicit, inherit_flag=inherit
        )
        is carry
    )


class _Recorder:
    """Stands in for ``_WorkItem``: records what the patch passes to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs


def test_work_item_314_task_triple_is_relayed() -> None:
    ctxrelay.instrument(spans=False)

    def scenario() -> Any:
        var.set("submitted")
        item = futures.relay_work_item(_Recorder, None, (Future(), (var.get, (), {})), {})
        var.set("later")
        fn, args, kwargs = item.args[1]
        assert fn is not var.get, "the callable was relayed"
        return fn(*args, **kwargs)

    assert contextvars.copy_context().run(scenario) == "submitted"


def test_interpreter_pool_task_is_left_untouched() -> None:
    """3.14's InterpreterPoolExecutor queues pickled bytes: never wrap them."""
    ctxrelay.instrument(spans=False)
    task = (b"pickled", "function")
    item = futures.relay_work_item(_Recorder, None, (Future(), task), {})
    assert item.args[1] is task


def test_work_item_called_by_keyword_is_passed_through() -> None:
    item = futures.relay_work_item(_Recorder, None, (), {"future": 1})
    assert (item.args, item.kwargs) == ((), {"future": 1})


# --- the same code paths on a real 3.14 interpreter ------------------------------------

needs_314 = pytest.mark.skipif(sys.version_info < (3, 14), reason="CPython 3.14+ only")


def _square(x: int) -> int:  # module level: InterpreterPoolExecutor pickles it by name
    return x * x


def _interpreter_pool_results() -> tuple[Any, ...]:
    from concurrent.futures import InterpreterPoolExecutor

    async def via_loop(pool: Any) -> int:
        return await asyncio.get_running_loop().run_in_executor(pool, _square, 4)

    var.set("submitted")  # never reaches the other interpreter: its own modules, own vars
    with InterpreterPoolExecutor(1) as pool:
        failed = pool.submit(_square, "x")
        return (
            pool.submit(_square, 3).result(TIMEOUT),
            list(pool.map(_square, [1, 2])),
            asyncio.run(via_loop(pool)),
            type(failed.exception(TIMEOUT)).__name__,
        )


@needs_314
@pytest.mark.skipif(
    importlib.util.find_spec("_interpreters") is None, reason="no subinterpreters in this build"
)
def test_interpreter_pool_work_is_left_exactly_as_it_is(tracer: Any, exporter: Any) -> None:
    """Its task crosses to another interpreter: no Context, no wrapper can go along."""
    expected = (9, [1, 4], 16, "TypeError")
    assert contextvars.copy_context().run(_interpreter_pool_results) == expected
    for spans_on in (False, True):
        ctxrelay.instrument(spans=spans_on)
        with tracer.start_as_current_span("request"):
            got = contextvars.copy_context().run(_interpreter_pool_results)
        ctxrelay.uninstrument()
        assert got == expected, f"spans={spans_on}"
    assert [s.name for s in exporter.get_finished_spans()] == ["request", "request"]


@needs_314
@pytest.mark.parametrize("spans_on", [False, True])
def test_failed_run_in_executor_future_does_not_pin_the_context(
    spans_on: bool, tracer: Any
) -> None:
    """3.14's WorkerContext.run frame sits in the failed task's traceback."""
    ctxrelay.instrument(spans=spans_on)
    kept: list[BaseException] = []

    def fails() -> None:
        raise KeyError(repr(var.get()))

    async def main() -> None:
        with tracer.start_as_current_span("request"):
            try:
                await asyncio.get_running_loop().run_in_executor(None, fails)
            except KeyError as exc:
                kept.append(exc)

    ref = _payload_held_only_by_context(lambda: asyncio.run(main()))
    gc.collect()
    assert kept and kept[0].__traceback__ is not None
    assert kept[0].args == ("<payload>",), "the work ran in the submitter's context"
    assert ref() is None, "the kept exception's traceback pins the captured context"


class _Payload:
    def __repr__(self) -> str:
        return "<payload>"


def _payload_held_only_by_context(run: Any) -> weakref.ref[_Payload]:
    def scenario() -> weakref.ref[_Payload]:
        payload = _Payload()
        var.set(payload)  # type: ignore[arg-type]
        ref = weakref.ref(payload)
        del payload
        run()
        return ref

    return contextvars.copy_context().run(scenario)


@needs_314
def test_pool_workers_never_keep_the_first_submitters_context() -> None:
    """With thread_inherit_context=1, start() copies the submitter into a new worker."""
    seen: list[str] = []

    def submit_from_payload_context(pool: ThreadPoolExecutor) -> weakref.ref[_Payload]:
        def first() -> None:
            pool.submit(time.sleep, 0).result(TIMEOUT)  # this submit starts the worker

        return _payload_held_only_by_context(first)

    for instrumented in (False, True):
        if instrumented:
            ctxrelay.instrument(spans=False)
        with ThreadPoolExecutor(1, initializer=lambda: seen.append(repr(var.get()))) as pool:
            ref = submit_from_payload_context(pool)
            gc.collect()
            # A later submitter with nothing set sees nothing either way with ctxrelay;
            # without it, under the flag, the worker's stale copy of the first one.
            later = contextvars.Context().run(lambda: pool.submit(var.get).result(TIMEOUT))
            pinned = ref() is not None
        if instrumented:
            assert (pinned, later, seen[-1]) == (False, "EMPTY", "'EMPTY'")
        else:
            assert pinned is BASELINE_THREAD_INHERITS
            assert (later == "EMPTY") is not BASELINE_THREAD_INHERITS
            assert (seen[-1] == "<payload>") is BASELINE_THREAD_INHERITS


@needs_314
def test_finished_thread_does_not_pin_the_context_it_ran_in() -> None:
    threads: list[threading.Thread] = []  # the application keeps its threads

    def start_and_join() -> None:
        thread = threading.Thread(target=var.get)
        threads.append(thread)
        thread.start()
        thread.join(TIMEOUT)

    ref = _payload_held_only_by_context(start_and_join)
    gc.collect()
    # Without ctxrelay under the flag, CPython keeps its copy in thread._context.
    assert (ref() is not None) is BASELINE_THREAD_INHERITS
    ctxrelay.instrument(spans=False)
    ref = _payload_held_only_by_context(start_and_join)
    gc.collect()
    assert ref() is None


@needs_314
def test_skip_vars_apply_to_threads_under_the_flag() -> None:
    secret: contextvars.ContextVar[str] = contextvars.ContextVar("ctxrelay_py314_secret")
    seen: dict[str, str] = {}

    def read() -> None:
        seen["secret"] = secret.get("<unset>")
        seen["var"] = var.get()

    def scenario() -> None:
        secret.set("token")
        var.set("carried")
        thread = threading.Thread(target=read)
        thread.start()
        thread.join(TIMEOUT)

    ctxrelay.instrument(spans=False, skip_vars=["ctxrelay_py314_secret"])
    contextvars.copy_context().run(scenario)
    assert seen == {"secret": "<unset>", "var": "carried"}


@needs_314
def test_explicit_empty_thread_context_records_no_stray_trace(tracer: Any, exporter: Any) -> None:
    ctxrelay.instrument()
    seen: list[str] = []
    with tracer.start_as_current_span("request") as request:
        var.set("caller")
        for context in (contextvars.Context(), contextvars.copy_context()):
            thread = threading.Thread(target=lambda: seen.append(var.get()), context=context)
            thread.start()
            thread.join(TIMEOUT)
    assert seen == ["EMPTY", "caller"], "the explicit context= wins"
    finished = exporter.get_finished_spans()
    assert {s.context.trace_id for s in finished} == {request.get_span_context().trace_id}
    hops = [s for s in finished if s.name != "request"]
    assert len(hops) == 1, "one hop: the thread started in a copy holding the span"
    assert hops[0].parent is not None
    assert hops[0].parent.span_id == request.get_span_context().span_id
