"""Host safety, no trace on the user's objects: a thread and a traceback look as bare.

While a thread runs under a hop span its instance has no ``run`` attribute; a
``self.run = ...`` it makes survives; the traceback ``threading.excepthook`` receives
has no frame of ctxrelay.  Compared bare and instrumented (under a sampled span).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import pytest

import ctxrelay
from safety_support import HANG, Outcome, assert_same, differential

PACKAGE = str(Path(ctxrelay.__file__).parent)


def test_no_run_attribute_appears_on_a_running_thread() -> None:
    def scenario() -> Outcome:
        seen: dict[str, Any] = {}

        def work() -> None:
            me = threading.current_thread()
            seen["own attributes"] = sorted(k for k in vars(me) if "run" in k)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(HANG)
        seen["after"] = sorted(k for k in vars(thread) if "run" in k)
        return Outcome(extra=seen)

    bare, instrumented = differential(scenario)
    assert bare.extra == {"own attributes": [], "after": []}
    assert_same(bare, instrumented)


class ReplacesItsRun(threading.Thread):
    def run(self) -> None:
        self.run = self.replacement  # type: ignore[method-assign]

    def replacement(self) -> str:
        return "mine"


def test_a_run_the_thread_set_on_itself_survives() -> None:
    def scenario() -> Outcome:
        thread = ReplacesItsRun()
        thread.start()
        thread.join(HANG)
        own = vars(thread).get("run")
        return Outcome(value=own() if own is not None else None)

    bare, instrumented = differential(scenario)
    assert bare.value == "mine"
    assert_same(bare, instrumented)


def _fails() -> None:
    raise ValueError("boom")


def test_the_traceback_the_excepthook_receives_has_no_ctxrelay_frame() -> None:
    def scenario() -> Outcome:
        frames: list[tuple[str, str]] = []
        previous = threading.excepthook

        def hook(args: Any) -> None:
            frames.extend((f.filename, f.name) for f in traceback.extract_tb(args.exc_traceback))

        threading.excepthook = hook
        try:
            thread = threading.Thread(target=_fails)
            thread.start()
            thread.join(HANG)
        finally:
            threading.excepthook = previous
        return Outcome(extra={"frames": [name for _, name in frames]}, value=frames)

    bare, instrumented = differential(scenario)
    assert bare.extra["frames"] == ["_bootstrap_inner", "run", "_fails"]
    assert [f for f, _ in instrumented.value if f.startswith(PACKAGE)] == []
    assert instrumented.extra == bare.extra


# --- the traceback a caller gets from a pool task -------------------------------------


def _submit(fn: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(HANG)


def _thread_pool(fn: Callable[[], Any]) -> Any:
    with ThreadPool(1) as pool:
        return pool.apply_async(fn).get(HANG)


def _run_in_executor(fn: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    return asyncio.run(main())


def _to_thread(fn: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return await asyncio.to_thread(fn)

    return asyncio.run(main())


def _anyio_to_thread(fn: Callable[[], Any]) -> Any:
    anyio = pytest.importorskip("anyio")
    return anyio.run(anyio.to_thread.run_sync, fn)


def _starlette_iterate(fn: Callable[[], Any]) -> Any:
    pytest.importorskip("starlette")
    from starlette.concurrency import iterate_in_threadpool

    def generator() -> Any:
        yield fn()

    async def main() -> Any:
        return [item async for item in iterate_in_threadpool(generator())]

    return asyncio.run(main())


CALLERS = {
    "submit": _submit,
    "ThreadPool.apply_async": _thread_pool,
    "run_in_executor": _run_in_executor,
    "asyncio.to_thread": _to_thread,
    "anyio.to_thread.run_sync": _anyio_to_thread,
    "starlette iterate_in_threadpool": _starlette_iterate,
}


@pytest.mark.parametrize("caller", CALLERS)
def test_the_traceback_a_caller_gets_from_a_task_lists_the_frames_it_lists_bare(
    caller: str,
) -> None:
    """Same frames in the printed traceback, the very exception raised, its cause and
    context kept (3.10: one ctxrelay frame stays, docs/reliability.md)."""

    def scenario() -> Outcome:
        raised: list[BaseException] = []

        def task() -> None:
            try:
                raise KeyError("inner")
            except KeyError:
                error = ValueError("boom")
                raised.append(error)
                raise error from LookupError("cause")

        try:
            CALLERS[caller](task)
        except ValueError as exc:
            frames = [(f.filename, f.name) for f in traceback.extract_tb(exc.__traceback__)]
            return Outcome(
                exception=exc,
                value=frames,
                extra={
                    "the exception raised": exc is raised[0],
                    "frames": [name for _, name in frames],
                    "__cause__": repr(exc.__cause__),
                    "__context__": repr(exc.__context__),
                    "printed": "".join(traceback.format_exception_only(type(exc), exc)),
                },
            )
        raise AssertionError("no exception")

    bare, instrumented = differential(scenario)
    assert bare.extra["the exception raised"] is True
    ours = [name for file, name in instrumented.value if file.startswith(PACKAGE)]
    if sys.version_info >= (3, 11):
        assert ours == []
        assert_same(bare, instrumented)
    else:  # 3.10 re-raises the traceback entry of the frame that caught it
        assert ours in ([], ["__call__"], ["_run"], ["stepping_in_own_context"])
        instrumented.value = [f for f in instrumented.value if not f[0].startswith(PACKAGE)]
        instrumented.extra["frames"] = [name for _, name in instrumented.value]
        assert_same(bare, instrumented)
