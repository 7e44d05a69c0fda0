"""ctxrelay and OpenTelemetry's threading instrumentor, in either order.

OpenTelemetry's ``unwrap`` strips whatever wrapper is outermost on ``Thread.start``,
``Thread.run`` and ``ThreadPoolExecutor.submit``.  ctxrelay hooks elsewhere, so each
tool's uninstrument removes only its own patches, whatever the order.
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import wrapt
from opentelemetry.instrumentation.threading import ThreadingInstrumentor

import ctxrelay
from helpers import baseline

#: wrapt 2.x: FunctionWrapper derives from BaseObjectProxy, no longer ObjectProxy
PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)

var: contextvars.ContextVar[str] = contextvars.ContextVar("ctxrelay_coexist_var", default="EMPTY")
#: ctxrelay's thread-start hook point (the module global start() calls)
_START = (
    "_start_joinable_thread"
    if hasattr(threading, "_start_joinable_thread")
    else "_start_new_thread"
)
PATCHED = [
    (threading.Thread, "start"),
    (threading.Thread, "run"),
    (threading, _START),
    (threading.Timer, "run"),
]


def _state() -> list[bool]:
    import concurrent.futures.thread as pool_module

    flags = [isinstance(owner.__dict__.get(attr), PROXY) for owner, attr in PATCHED]
    flags.append(isinstance(ThreadPoolExecutor.__dict__["submit"], PROXY))
    flags.append(isinstance(pool_module._WorkItem, PROXY))
    return flags


def _carried() -> tuple[Any, Any]:
    def scenario() -> tuple[Any, Any]:
        var.set("carried")
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(var.get()))
        t.start()
        t.join()
        with ThreadPoolExecutor(1) as pool:
            return box[0], pool.submit(var.get).result()

    return contextvars.copy_context().run(scenario)


@pytest.fixture
def otel_threading():
    instrumentor = ThreadingInstrumentor()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


ORDERS = {
    "otel-first, otel-uninstruments-first": ("otel", "ctx", "-otel", "-ctx"),
    "otel-first, ctx-uninstruments-first": ("otel", "ctx", "-ctx", "-otel"),
    "ctx-first, otel-uninstruments-first": ("ctx", "otel", "-otel", "-ctx"),
    "ctx-first, ctx-uninstruments-first": ("ctx", "otel", "-ctx", "-otel"),
}


@pytest.mark.parametrize("order", list(ORDERS.values()), ids=list(ORDERS))
def test_either_order_keeps_a_working_consistent_state(order, otel_threading) -> None:
    clean = _state()
    # The loss before anything is instrumented (3.14 with the flag on: start() copies,
    # and this fresh pool's worker starts inside the submit).
    lost = baseline(("EMPTY", "EMPTY"), ("carried", "carried"))
    assert _carried() == lost
    steps = {
        "otel": otel_threading.instrument,
        "-otel": otel_threading.uninstrument,
        "ctx": ctxrelay.instrument,
        "-ctx": ctxrelay.uninstrument,
    }
    for step in order:
        steps[step]()
        if ctxrelay.is_instrumented():
            assert _carried() == ("carried", "carried"), f"after {step}"
        else:
            assert _carried() == lost, f"after {step}: ctxrelay is off"
        if otel_threading.is_instrumented_by_opentelemetry:
            assert isinstance(threading.Thread.__dict__["start"], PROXY)
    assert _state() == clean, "every class is left as it was"


@pytest.mark.parametrize("first", ["otel", "ctx"])
def test_both_on_give_one_hop_span_named_after_the_users_function(
    exporter, tracer, otel_threading, first: str
) -> None:
    """OpenTelemetry's submit wrapper hands the pool a closure of its own (wrapped_func);
    whichever tool is instrumented first, the one hop span is named after the user's
    function.  That closure runs inside the hop and attaches the submitter's context
    again, so the user's spans are the hop's siblings, not its children (documented)."""
    steps = [otel_threading.instrument, ctxrelay.instrument]
    for step in steps if first == "otel" else reversed(steps):
        step()

    def user_task() -> None:
        tracer.start_span("inner").end()

    with tracer.start_as_current_span("root"), ThreadPoolExecutor(1) as pool:
        pool.submit(user_task).result()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == ["ThreadPoolExecutor user_task", "inner", "root"]
    hop = spans["ThreadPoolExecutor user_task"]
    assert hop.attributes["code.function.name"].endswith("user_task")
    assert hop.parent.span_id == spans["root"].context.span_id
    assert spans["inner"].parent.span_id == spans["root"].context.span_id
