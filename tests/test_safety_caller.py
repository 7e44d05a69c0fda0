"""Host safety, the caller's side: whatever object a user hands over, ``start()``,
``submit()`` and friends behave as they do without ctxrelay (no crash, no hang).

Each test runs the same scenario bare and instrumented (under a sampled span, so the
span code runs too) and compares what the caller got.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool
from typing import Any

import attrs
import pydantic
import pytest
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from helpers import baseline
from safety_support import HANG, Outcome, assert_same, differential, without_hanging


@dataclasses.dataclass
class DataclassTarget:  # eq=True: __hash__ is None, the instance is unhashable
    calls: list[int]

    def __call__(self) -> str:
        self.calls.append(1)
        return "dataclass"


class PydanticTarget(pydantic.BaseModel):  # not frozen: unhashable
    calls: Any  # Any: pydantic keeps the very list (a list[int] field would copy it)

    def __call__(self) -> str:
        self.calls.append(1)
        return "pydantic"


@attrs.define
class AttrsTarget:  # attrs' eq=True default: unhashable
    calls: list[int]

    def __call__(self) -> str:
        self.calls.append(1)
        return "attrs"


class RaisingGetattr:
    """Any attribute it does not have raises something other than AttributeError."""

    def __init__(self, calls: list[int]) -> None:
        self.calls = calls

    def __call__(self) -> str:
        self.calls.append(1)
        return "getattr"

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} here")


class RaisingBool:
    def __init__(self, calls: list[int]) -> None:
        self.calls = calls

    def __call__(self) -> str:
        self.calls.append(1)
        return "bool"

    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")


TARGETS: dict[str, Callable[[list[int]], Any]] = {
    "dataclass": DataclassTarget,
    "pydantic": lambda calls: PydanticTarget(calls=calls),
    "attrs": AttrsTarget,
    "__getattr__ raises": RaisingGetattr,
    "__bool__ raises": RaisingBool,
}


def _thread(make: Callable[[list[int]], Any]) -> Outcome:
    calls: list[int] = []
    try:
        # Thread() itself reads target.__name__ (3.10+), as without ctxrelay
        thread = threading.Thread(target=make(calls))
        without_hanging(thread.start)
    except Exception as exc:  # the outcome to compare
        return Outcome(exception=exc, runs=len(calls))
    thread.join(HANG)
    return Outcome(runs=len(calls), extra={"alive": thread.is_alive()})


def _timer(make: Callable[[list[int]], Any]) -> Outcome:
    calls: list[int] = []
    timer = threading.Timer(0, make(calls))
    without_hanging(timer.start)
    timer.join(HANG)
    return Outcome(runs=len(calls))


def _submit(make: Callable[[list[int]], Any]) -> Outcome:
    calls: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        value = pool.submit(make(calls)).result(HANG)
    return Outcome(value=value, runs=len(calls))


def _apply_async(make: Callable[[list[int]], Any]) -> Outcome:
    calls: list[int] = []
    with ThreadPool(1) as pool:
        value = pool.apply_async(make(calls)).get(HANG)
    return Outcome(value=value, runs=len(calls))


def _run_in_executor(make: Callable[[list[int]], Any]) -> Outcome:
    calls: list[int] = []

    async def main() -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, make(calls))

    return Outcome(value=asyncio.run(main()), runs=len(calls))


RUNNERS = {
    "Thread": _thread,
    "Timer": _timer,
    "submit": _submit,
    "ThreadPool.apply_async": _apply_async,
    "run_in_executor": _run_in_executor,
}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("target", TARGETS)
def test_any_callable_is_handed_over_as_without_ctxrelay(runner: str, target: str) -> None:
    scenario = RUNNERS[runner]
    bare, instrumented = differential(lambda: scenario(TARGETS[target]))
    assert_same(bare, instrumented)
    if not (runner == "Thread" and target == "__getattr__ raises"):
        assert bare.runs == 1, bare  # (Thread() itself fails on that one, bare too)


class RaisingGetattrThread(threading.Thread):
    """A Thread subclass whose missing attributes raise something other than AttributeError."""

    def __init__(self, calls: list[int]) -> None:
        super().__init__()
        self.calls = calls

    def run(self) -> None:
        self.calls.append(1)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} here")


class RaisingBoolThread(RaisingGetattrThread):
    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)

    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")


@pytest.mark.parametrize("cls", [RaisingGetattrThread, RaisingBoolThread])
def test_thread_subclass_with_hostile_attributes_starts_and_runs(cls: type) -> None:
    """Under a recording span, start() used to hang: ctxrelay failed in _bootstrap_inner."""

    def scenario() -> Outcome:
        calls: list[int] = []
        thread = cls(calls)
        without_hanging(thread.start)
        thread.join(HANG)
        return Outcome(runs=len(calls), extra={"alive": thread.is_alive()})

    bare, instrumented = differential(scenario)
    assert bare == Outcome(runs=1, extra={"alive": False})
    assert instrumented == bare


class BlocksHopStart(SpanProcessor):
    """A span processor whose on_start blocks for hop spans until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if span.name == "Thread blocked_target":
            self.release.wait(3 * HANG)  # longer than the liveness bound below


def test_start_never_waits_for_span_bookkeeping() -> None:
    """A span processor that blocks (or a lock a fork left held in a child process)
    delays the new thread's span, never the caller's ``start()``."""
    processor = BlocksHopStart()
    provider = TracerProvider()
    provider.add_span_processor(processor)

    def scenario() -> Outcome:
        calls: list[int] = []

        def blocked_target() -> None:
            calls.append(1)

        thread = threading.Thread(target=blocked_target)
        try:
            without_hanging(thread.start)  # returns while on_start still blocks
        finally:
            processor.release.set()
        thread.join(HANG)
        processor.release.clear()
        return Outcome(runs=len(calls), extra={"alive": thread.is_alive()})

    bare, instrumented = differential(scenario, tracer_provider=provider)
    assert bare == Outcome(runs=1, extra={"alive": False})
    assert_same(bare, instrumented)


def _function_without_a_module(out: list[Any]) -> Any:
    """A function made from code alone (``types.FunctionType(code, {})``): ``__module__``
    is None, as for functions built by code generators and some C-level factories."""
    code = compile("def f(out, var):\n    out.append(var.get())\n", "<generated>", "exec")
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    made = types.FunctionType(namespace["f"].__code__, {})
    assert made.__module__ is None
    return made


def _function_with_an_unhashable_module(out: list[Any]) -> Any:
    def f(out: list[Any], var: contextvars.ContextVar[str]) -> None:
        out.append(var.get())

    f.__module__ = ["not", "a", "name"]  # type: ignore[assignment]
    return f


@pytest.mark.parametrize("make", [_function_without_a_module, _function_with_an_unhashable_module])
def test_a_thread_target_of_odd_shape_is_carried_like_any_function(make: Any) -> None:
    """Exemption goes by the target's module and name; one that has no usable module
    is simply not exempt (it used to fail the capture: the thread started uncarried)."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("odd_target", default="lost")

    def scenario() -> Outcome:
        out: list[Any] = []
        var.set("carried")
        thread = threading.Thread(target=make(out), args=(out, var))
        without_hanging(thread.start)
        thread.join(HANG)
        return Outcome(value=out, runs=len(out))

    bare, instrumented = contextvars.copy_context().run(differential, scenario, span=False)
    assert bare == Outcome(value=[baseline("lost", "carried")], runs=1)
    assert instrumented == Outcome(value=["carried"], runs=1)
