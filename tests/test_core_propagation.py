"""The propagation mechanism itself: isolation, concurrency, exceptions, references."""

from __future__ import annotations

import contextvars
import gc
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import pytest

import ctxrelay
from helpers import baseline

var: contextvars.ContextVar[Any] = contextvars.ContextVar("ctxrelay_test_var", default="EMPTY")
other: contextvars.ContextVar[Any] = contextvars.ContextVar("ctxrelay_test_other", default="EMPTY")


def in_copy(fn, *args):
    return contextvars.copy_context().run(fn, *args)


def test_pool_task_sees_its_own_values_not_the_previous_tasks() -> None:
    """One worker, two tasks: B must not see what A set (stale snapshot / leak)."""

    def task_a() -> None:
        other.set("set-by-A")

    def task_b() -> tuple[Any, Any]:
        return var.get(), other.get()

    def scenario() -> tuple[Any, Any]:
        with ThreadPoolExecutor(1) as pool:
            var.set("A")
            pool.submit(task_a).result()
            var.set("B")
            return pool.submit(task_b).result()

    ctxrelay.instrument(spans=False)
    assert in_copy(scenario) == ("B", "EMPTY")


def test_worker_does_not_pin_the_context_that_started_it() -> None:
    """The first submit starts the worker thread; its context must not stick to it."""
    ctxrelay.instrument(spans=False)

    def scenario() -> Any:
        with ThreadPoolExecutor(1) as pool:
            var.set("first")
            pool.submit(lambda: None).result()
            # A callable queued by a thread with nothing set sees nothing.
            return contextvars.Context().run(lambda: pool.submit(var.get).result())

    assert in_copy(scenario) == "EMPTY"


def test_values_set_in_a_task_stay_in_the_task() -> None:
    ctxrelay.instrument(spans=False)

    def scenario() -> Any:
        var.set("origin")
        with ThreadPoolExecutor(2) as pool:
            pool.submit(var.set, "changed").result()
        return var.get()

    assert in_copy(scenario) == "origin"


def test_each_origin_keeps_its_own_value_under_concurrency() -> None:
    ctxrelay.instrument(spans=False)
    results: dict[int, Any] = {}
    with ThreadPoolExecutor(4) as pool:

        def origin(i: int) -> None:
            var.set(i)
            inner = threading.Thread(target=lambda: results.__setitem__(i, var.get()))
            inner.start()
            inner.join()

        futures = [pool.submit(origin, i) for i in range(64)]
        wait(futures)
        for f in futures:
            f.result()
    assert results == {i: i for i in range(64)}


def test_same_bound_callable_run_by_eight_threads_at_once() -> None:
    """The manual ctx.run workaround fails here; ctxrelay.bind copies per call."""
    barrier = threading.Barrier(8)

    def work() -> Any:
        barrier.wait(5)  # all eight inside the context at the same time
        return var.get()

    def run_eight(fn) -> tuple[list[Any], list[BaseException]]:
        results: list[Any] = []
        errors: list[BaseException] = []

        def call() -> None:
            try:
                results.append(fn())
            except BaseException as exc:  # collected for the assertion
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        barrier.reset()
        return results, errors

    def scenario() -> None:
        var.set("bound")
        ctx = contextvars.copy_context()
        manual = lambda: ctx.run(work)  # noqa: E731 - the usual manual workaround
        _, errors = run_eight(manual)
        assert any(isinstance(e, RuntimeError) and "cannot enter context" in str(e) for e in errors)

        results, errors = run_eight(ctxrelay.bind(work))
        assert errors == []
        assert results == ["bound"] * 8

    in_copy(scenario)


def test_exception_reaches_the_caller_unchanged_and_fn_runs_once() -> None:
    ctxrelay.instrument(spans=False)
    calls: list[int] = []
    error = ValueError("boom")

    def fails() -> None:
        calls.append(1)
        raise error

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fails)
        with pytest.raises(ValueError) as caught:
            future.result()
    assert caught.value is error
    assert calls == [1]

    seen: list[BaseException] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    try:
        thread = threading.Thread(target=fails)
        thread.start()
        thread.join()
    finally:
        threading.excepthook = old_hook
    assert seen == [error]
    assert calls == [1, 1]


class Payload:
    """An object that only a ContextVar holds."""


def _held_only_by_context(run_tasks) -> weakref.ref:
    def scenario() -> weakref.ref:
        payload = Payload()
        var.set(payload)
        ref = weakref.ref(payload)
        del payload
        run_tasks()
        return ref

    return contextvars.copy_context().run(scenario)


def test_context_freed_after_tasks_finish_and_pool_idles() -> None:
    ctxrelay.instrument(spans=False)
    pool = ThreadPoolExecutor(2)
    try:
        ref = _held_only_by_context(lambda: wait([pool.submit(var.get) for _ in range(10)]))
        gc.collect()
        assert ref() is None, "a worker or work item still holds the captured context"
    finally:
        pool.shutdown()

    ref = _held_only_by_context(lambda: _start_join(threading.Thread(target=var.get)))
    gc.collect()
    assert ref() is None


def _start_join(thread: threading.Thread) -> None:
    thread.start()
    thread.join()


@pytest.mark.parametrize("spans", [False, True])
def test_context_freed_while_failed_future_is_still_referenced(spans: bool, tracer) -> None:
    ctxrelay.instrument(spans=spans)
    kept: list[Any] = []

    def fails() -> None:
        raise KeyError(var.get().__class__.__name__)

    def run_tasks() -> None:
        with tracer.start_as_current_span("root"), ThreadPoolExecutor(1) as pool:
            future = pool.submit(fails)
            wait([future])
            kept.append(future)  # the future (and its traceback) outlives the scenario

    ref = _held_only_by_context(run_tasks)
    gc.collect()
    assert isinstance(kept[0].exception(), KeyError)
    assert kept[0].exception().__traceback__ is not None
    assert ref() is None, "the failed future's traceback pins the captured context"


def test_second_call_of_a_relayed_callable_does_not_reenter_the_context(tracer) -> None:
    from ctxrelay import relay

    ctxrelay.instrument()

    def scenario() -> tuple[Any, Any]:
        var.set("captured")
        with tracer.start_as_current_span("root"):
            relayed = relay.relayed("test", var.get)
        assert type(relayed) is relay.Relayed
        first = relayed()
        var.set("caller")
        return first, relayed()

    assert in_copy(scenario) == ("captured", "caller")


def test_uninstrument_restores_the_originals() -> None:
    import asyncio.base_events
    import concurrent.futures.thread as pool_module

    start_name = "_start_joinable_thread" if sys.version_info >= (3, 13) else "_start_new_thread"
    originals = (
        threading.Thread.__dict__["_bootstrap_inner"],
        getattr(threading, start_name),
        pool_module._WorkItem,
        asyncio.base_events.BaseEventLoop.__dict__["run_in_executor"],
    )
    for _ in range(3):
        ctxrelay.instrument()
        ctxrelay.instrument()  # idempotent
        assert ctxrelay.is_instrumented()
        assert getattr(threading, start_name) is not originals[1]
        ctxrelay.uninstrument()
        assert not ctxrelay.is_instrumented()
        assert (
            threading.Thread.__dict__["_bootstrap_inner"],
            getattr(threading, start_name),
            pool_module._WorkItem,
            asyncio.base_events.BaseEventLoop.__dict__["run_in_executor"],
        ) == originals


def test_concurrent_instrument_calls_patch_once() -> None:
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait(5)
        ctxrelay.instrument(spans=False)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctxrelay.uninstrument()
    # One layer only: after one uninstrument nothing of ctxrelay is left.
    import wrapt

    PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)  # wrapt 2.x

    from ctxrelay.runners import threads

    assert not isinstance(getattr(threading, threads._START), PROXY)


def test_process_pool_is_left_alone() -> None:
    from concurrent.futures import ProcessPoolExecutor

    ctxrelay.instrument()
    with ProcessPoolExecutor(1) as pool:
        assert pool.submit(abs, -3).result(30) == 3


def _start_in_two_steps(thread: threading.Thread) -> None:
    """What ``start()`` does, with ``uninstrument()`` between ctxrelay's wrapper (in the
    caller) and the real thread start (the new thread's first instruction)."""
    from ctxrelay.runners import threads

    if sys.version_info >= (3, 14):  # what start() does before the thread-start call
        inherit = sys.flags.thread_inherit_context  # type: ignore[attr-defined]
        thread._context = contextvars.copy_context() if inherit else contextvars.Context()  # type: ignore[attr-defined]
    if sys.version_info >= (3, 13):
        args: tuple[Any, ...] = (thread._bootstrap,)  # type: ignore[attr-defined]
        handle = vars(thread).get("_os_thread_handle", vars(thread).get("_handle"))  # 3.14 / 3.13
        kwargs = {"handle": handle, "daemon": thread.daemon}
    else:
        args, kwargs = (thread._bootstrap, ()), {}  # type: ignore[attr-defined]
    handed: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    threads._capture_at_start(lambda *a, **k: handed.append((a, k)), None, args, kwargs)
    assert not [key for key in thread.__dict__ if "ctxrelay" in key], "nothing on the Thread"
    ctxrelay.uninstrument()
    ((args, kwargs),) = handed
    handed.clear()
    threading._limbo[thread] = thread  # type: ignore[attr-defined]
    getattr(threading, threads._START)(*args, **kwargs)  # the original again
    args = kwargs = None  # type: ignore[assignment]
    assert thread._started.wait(10)  # type: ignore[attr-defined]
    thread.join(10)


def test_a_thread_started_before_uninstrument_runs_in_its_capture() -> None:
    """``uninstrument()`` between a thread's ``start()`` and its first instruction: the
    thread runs in what was captured for it (as a pool task queued before does), no
    ctxrelay attribute is left on the Thread object, and the capture is let go when the
    thread ends.  Bare first: the same thread started without ctxrelay."""
    seen: list[Any] = []

    def scenario(start: Any) -> weakref.ref:
        payload = Payload()
        var.set(payload)
        ref = weakref.ref(payload)
        del payload
        thread = threading.Thread(target=lambda: seen.append(type(var.get()).__name__))
        start(thread)
        return ref

    ref = contextvars.copy_context().run(scenario, _start_join)
    gc.collect()
    assert seen == [baseline("str", "Payload")] and ref() is None, "bare"
    seen.clear()
    ctxrelay.instrument(spans=False)
    ref = contextvars.copy_context().run(scenario, _start_in_two_steps)
    gc.collect()
    assert seen == ["Payload"], "carried, though uninstrumented before it ran"
    assert ref() is None, "the capture was let go when the thread ended"


@pytest.mark.parametrize("spans", [False, True])
def test_the_thread_start_still_names_its_thread(spans: bool) -> None:
    """What the real thread start receives names its Thread (``__self__``) and reads as
    the thread's ``_bootstrap``, as without ctxrelay: a tool between ctxrelay and the
    thread start (pydevd's start-up object) finds the Thread there."""
    from ctxrelay.runners import threads

    thread = threading.Thread(target=lambda: None)
    bare = thread._bootstrap  # type: ignore[attr-defined]
    ctxrelay.instrument(spans=spans)
    handed: list[Any] = []
    threads._capture_at_start(lambda *a, **k: handed.append(a[0]), None, (bare, ()), {})
    (function,) = handed
    assert function is not bare, "ctxrelay hands over its own start"
    assert function.__self__ is bare.__self__ is thread
    assert repr(function) == repr(bare)
