"""Cost of each step on the ``submit`` hot path, measured one at a time.

The whole-pool numbers of ``workloads.py`` say *how much* ctxrelay adds; this says
*where*: each allocation, call and lookup that ``ThreadPoolExecutor.submit`` goes
through with ctxrelay installed, against what the OpenTelemetry threading instrumentor
does at the same place, and the pieces of a sampled hop span against the SDK's own
span.  Every figure is the best of several timeit runs, in process-CPU nanoseconds.

Run alone (``python benchmarks/hotpath.py``) or from ``run.py``; prints a JSON list of
``[group, step, ns]`` rows.  A step the current code no longer has is reported as
``null`` instead of failing: the core evolves, the benchmark must keep running.
"""

from __future__ import annotations

import json
import sys
import time
import timeit
import types
from collections.abc import Callable
from concurrent.futures import Future
from contextvars import copy_context
from functools import partial
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from workloads import DroppingExporter, noop

RUNNER = "ThreadPoolExecutor"
NUMBER = 20_000
REPEAT = 7

Row = tuple[str, str, "float | None"]


def per_call(stmt: Callable[[], Any], number: int = NUMBER, repeat: int = REPEAT) -> float:
    """Best-of-``repeat`` process-CPU ns per call of ``stmt``, less the empty-loop cost."""
    timer = timeit.Timer(stmt, timer=time.process_time)
    empty = timeit.Timer(lambda: None, timer=time.process_time)
    best = min(timer.repeat(repeat, number)) / number
    floor = min(empty.repeat(repeat, number)) / number
    return max(0.0, (best - floor) * 1e9)


def measure(
    rows: list[Row],
    group: str,
    step: str,
    make: Callable[[], Callable[[], Any]],
    number: int = NUMBER,
) -> None:
    """``make()`` returns a lambda calling the step: every step pays the same lambda
    call, which :func:`per_call` subtracts."""
    try:
        stmt = make()
        stmt()  # fails here, not inside timeit, if the step no longer exists
        rows.append((group, step, per_call(stmt, number)))
    except Exception as exc:  # report the gap, keep measuring the rest
        rows.append((group, f"{step} (not measurable: {type(exc).__name__})", None))


def submit_side(rows: list[Row]) -> None:
    import concurrent.futures.thread as pool_module

    import ctxrelay
    from ctxrelay import relay, spans

    original = pool_module._WorkItem
    future = Future()
    group = "submit side, spans off"
    measure(
        rows,
        group,
        "bare `_WorkItem(future, fn, args, kwargs)`",
        lambda: lambda: original(future, noop, (), {}),
    )

    passthrough = __import__("wrapt").FunctionWrapper(
        original, lambda w, i, a, k: w(*a, **k), enabled=[True]
    )
    measure(
        rows,
        group,
        "same through a pass-through wrapt wrapper",
        lambda: lambda: passthrough(future, noop, (), {}),
    )

    ctxrelay.instrument(spans=False, listener_spans=False)
    patched = pool_module._WorkItem
    measure(
        rows,
        group,
        "same through ctxrelay's patch (all of it)",
        lambda: lambda: patched(future, noop, (), {}),
    )
    measure(rows, group, "`relay.relayed(runner, fn)`", lambda: lambda: relay.relayed(RUNNER, noop))
    measure(rows, group, "`copy_context()`", lambda: lambda: copy_context())
    context = copy_context()
    measure(rows, group, "`partial(context.run, fn)`", lambda: lambda: partial(context.run, noop))
    measure(rows, group, "`spans.settings.hops` lookup", lambda: lambda: spans.settings.hops)
    ctxrelay.uninstrument()

    group = "worker side, spans off"
    relayed = partial(copy_context().run, noop)
    measure(rows, group, "bare `fn()`", lambda: lambda: noop())
    measure(rows, group, "`partial(context.run, fn)()`", lambda: lambda: relayed())

    group = "OpenTelemetry instrumentor, same places"
    measure(
        rows, group, "`context.get_current()` (submit)", lambda: lambda: otel_context.get_current()
    )

    def closure() -> Callable[[], None]:
        captured = otel_context.get_current()

        def wrapped_func() -> None:
            token = otel_context.attach(captured)
            try:
                noop()
            finally:
                otel_context.detach(token)

        return wrapped_func

    measure(rows, group, "closure creation (submit)", lambda: lambda: closure())
    wrapped = closure()
    measure(rows, group, "`attach` + `fn()` + `detach` (worker)", lambda: lambda: wrapped())


def span_checks(rows: list[Row], tracer: trace.Tracer) -> None:
    """What deciding "no span" costs under an unsampled parent."""
    import ctxrelay
    from ctxrelay import spans

    ctxrelay.instrument(spans=True, listener_spans=False)
    group = "deciding there is no span (unsampled parent)"
    with tracer.start_as_current_span("unsampled root", context=otel_context.Context()):
        measure(rows, group, "`trace.get_current_span()`", lambda: lambda: trace.get_current_span())
        current = trace.get_current_span()
        measure(
            rows,
            group,
            "`span.get_span_context().trace_flags.sampled`",
            lambda: lambda: current.get_span_context().trace_flags.sampled,
        )
        measure(
            rows,
            group,
            "`spans.admit(runner)` (returns None)",
            lambda: lambda: spans.admit(RUNNER),
        )
        from ctxrelay import relay

        measure(
            rows,
            group,
            "`relay.relayed(runner, fn)`, spans on",
            lambda: lambda: relay.relayed(RUNNER, noop),
        )
    ctxrelay.uninstrument()


def hop_span(rows: list[Row], tracer: trace.Tracer) -> None:
    """The pieces of a sampled hop span against the SDK's own spans."""
    import threading

    import ctxrelay
    from ctxrelay import attributes, relay, spans

    ctxrelay.instrument(spans=True, listener_spans=False)
    group = "sampled hop span vs the SDK"
    few = NUMBER // 10
    with tracer.start_as_current_span("sampled root"):
        measure(
            rows,
            group,
            'SDK `tracer.start_span("x").end()`',
            lambda: lambda: tracer.start_span("x").end(),
            few,
        )
        measure(
            rows,
            group,
            "`spans.admit(runner)` (a `Hop`)",
            lambda: lambda: spans.admit(RUNNER),
            few,
        )
        hop = spans.admit(RUNNER)
        name = threading.current_thread().name
        measure(
            rows,
            group,
            "`attributes.callable_name(fn)`",
            lambda: lambda: attributes.callable_name(noop),
        )

        def start_end() -> None:
            span, token = spans.start_hop(hop, noop, 3, name)
            spans.end_hop(span, token)

        measure(rows, group, "`spans.start_hop` + `spans.end_hop`", lambda: start_end, few)
        measure(
            rows,
            group,
            "`relay.run_hop(hop, fn, ...)` (all of the worker side)",
            lambda: lambda: relay.run_hop(hop=hop, fn=noop, context_vars=3, thread_name=name),
            few,
        )
        attributes = {
            "ctxrelay.runner": RUNNER,
            "code.function.name": "workloads.noop",
            "thread.id": 1,
            "thread.name": name,
            "ctxrelay.origin.thread.id": 2,
            "ctxrelay.origin.thread.name": name,
            "ctxrelay.queue.wait_ms": 0.01,
            "ctxrelay.context.vars": 3,
        }
        for count in (2, 4, 8):
            some = dict(list(attributes.items())[:count])
            measure(
                rows,
                group,
                f"SDK span with {count} attributes",
                lambda some=some: lambda: tracer.start_span("x", attributes=dict(some)).end(),
                few,
            )

        def made_current() -> None:
            span = tracer.start_span("x")
            token = otel_context.attach(trace.set_span_in_context(span))
            otel_context.detach(token)
            span.end()

        measure(rows, group, "SDK span made current (attach/detach)", lambda: made_current, few)
    ctxrelay.uninstrument()


def skip_vars(rows: list[Row]) -> None:
    """What CTXRELAY_SKIP_VARS costs per hand-over, against the size of the context.

    Measured inside a context of N variables (one copy per call, as every hop makes):
    no name matching, and one matching variable present.
    """
    from contextvars import Context, ContextVar

    import ctxrelay
    from ctxrelay import relay

    for size in (10, 1_000):
        group = f"CTXRELAY_SKIP_VARS, {size:,} variables in the context"
        context = Context()
        variables = [ContextVar(f"bench_var_{i}", default=None) for i in range(size)]
        for var in variables:
            context.run(var.set, 1)
        measure(
            rows, group, "`copy_context()` (bare)", lambda c=context: lambda: c.run(copy_context)
        )
        ctxrelay.instrument(spans=False, listener_spans=False, skip_vars=["bench_no_such_var"])
        measure(
            rows,
            group,
            "`relay.capture()`, no name matches",
            lambda c=context: lambda: c.run(relay.capture),
        )
        ctxrelay.instrument(spans=False, listener_spans=False, skip_vars=["bench_var_0"])
        measure(
            rows,
            group,
            "`relay.capture()`, one variable skipped",
            lambda c=context: lambda: c.run(relay.capture),
        )
        # the same variable named by where it is defined: no pass over the context
        module = types.ModuleType("bench_skip_vars")
        module.VAR = variables[0]  # type: ignore[attr-defined]
        sys.modules[module.__name__] = module
        ctxrelay.instrument(spans=False, listener_spans=False, skip_vars=["bench_skip_vars:VAR"])
        measure(
            rows,
            group,
            "`relay.capture()`, one variable skipped by `module:attribute`",
            lambda c=context: lambda: c.run(relay.capture),
        )
        del sys.modules[module.__name__]
        ctxrelay.uninstrument()


def main() -> None:
    sampled = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    sampled.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    trace.set_tracer_provider(sampled)
    tracer = trace.get_tracer("ctxrelay.benchmarks")
    unsampled_tracer = TracerProvider(sampler=ParentBased(ALWAYS_OFF)).get_tracer(
        "ctxrelay.benchmarks"
    )

    rows: list[Row] = []
    submit_side(rows)
    span_checks(rows, unsampled_tracer)
    hop_span(rows, tracer)
    skip_vars(rows)
    sampled.shutdown()
    json.dump(rows, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
