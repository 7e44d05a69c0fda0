"""Run a sequence of instrument/uninstrument steps of several patchers and observe each state.

Used by ``tests/test_stacking.py``, in-process (OpenTelemetry's threading instrumentor and
griptape's driver can be undone) and as a script in a fresh interpreter when Sentry is
involved (its ``ThreadingIntegration`` patches ``Thread.start`` and ``submit`` once per
process, for good)::

    python stacking_tools.py ctx otel sentry griptape -griptape -ctx -otel

Steps: ``ctx``/``-ctx`` (ctxrelay), ``otel``/``-otel`` (``ThreadingInstrumentor``),
``griptape``/``-griptape`` (entering/leaving griptape's ``Observability`` with its
``OpenTelemetryObservabilityDriver``, which instruments and uninstruments threading
itself), ``sentry`` (``sentry_sdk.init`` with ``ThreadingIntegration``, no DSN: nothing
is sent).  After each step the state is observed: what a thread, a pool task and a
``run_in_executor`` call see (our ContextVar, the OpenTelemetry trace, a Sentry scope
tag), and the layers of wrappers on every attribute any of the tools patches.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import concurrent.futures.thread as pool_module
import json
import multiprocessing.pool  # noqa: F401 - loaded, so its ctxrelay patches are checked too
import socketserver  # noqa: F401 - idem
import sys
import threading
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context
from typing import Any

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.threading import ThreadingInstrumentor

import ctxrelay

VAR: ContextVar[str] = ContextVar("stacking_var", default="EMPTY")
#: wrapt 2.x: FunctionWrapper derives from BaseObjectProxy, no longer from ObjectProxy
PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)
_START = (
    "_start_joinable_thread"
    if hasattr(threading, "_start_joinable_thread")
    else "_start_new_thread"
)

#: (owner, attribute) for everything ctxrelay, OpenTelemetry, Sentry or griptape patch.
PATCHED: list[tuple[Any, str]] = [
    (threading.Thread, "start"),
    (threading.Thread, "run"),
    (threading.Timer, "run"),
    (ThreadPoolExecutor, "submit"),
    (pool_module, "_WorkItem"),
    (threading, _START),
    (asyncio.base_events.BaseEventLoop, "run_in_executor"),
]
#: the attributes above that ctxrelay itself wraps (the others belong to other tools)
CTXRELAY_ATTRS: list[tuple[Any, str]] = PATCHED[4:]


def _raw(owner: Any, attr: str) -> Any:
    # A class's own attribute, not an inherited one: removal must not leave a copy behind.
    return owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)


def _name(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return (
        f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    )


def layers(obj: Any) -> list[str]:
    """The wrappers around an attribute, outermost first, ending with what they wrap."""
    found: list[str] = []
    for _ in range(16):
        if isinstance(obj, PROXY):
            found.append("wrapt:" + _name(getattr(obj, "_self_wrapper", None)))
            obj = obj.__wrapped__
        elif callable(obj) and hasattr(obj, "__wrapped__"):  # functools.wraps (Sentry)
            found.append("wraps:" + _name(obj))
            obj = obj.__wrapped__
        else:
            found.append(_name(obj))
            break
    return found


def ctxrelay_points() -> dict[str, Any]:
    """Every attribute in ctxrelay's patch table whose module is loaded, as found now."""
    from ctxrelay import table

    points = {}
    for patch in table.patches():
        module = sys.modules.get(patch.module)
        if module is not None:
            owner, attr, _ = wrapt.resolve_path(module, patch.path)
            points[f"{patch.module}:{patch.path}"] = _raw(owner, attr)
    return points


def describe() -> dict[str, list[str]]:
    return {f"{_name(owner)}.{attr}": layers(_raw(owner, attr)) for owner, attr in PATCHED}


class Stack:
    """The tools, switched on and off by name."""

    def __init__(self, sentry: bool) -> None:
        self.sentry = sentry
        self.griptape: Any = None
        provider = trace.get_tracer_provider()
        if not hasattr(provider, "add_span_processor"):  # a fresh interpreter: set one up
            from opentelemetry.sdk.trace import TracerProvider

            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        self.tracer = trace.get_tracer("ctxrelay.stacking")

    def step(self, name: str) -> None:
        actions: dict[str, Callable[[], None]] = {
            "ctx": ctxrelay.instrument,
            "-ctx": ctxrelay.uninstrument,
            "otel": ThreadingInstrumentor().instrument,
            "-otel": ThreadingInstrumentor().uninstrument,
            "griptape": self._enter_griptape,
            "-griptape": self._leave_griptape,
            "sentry": self._init_sentry,
        }
        actions[name]()

    def _enter_griptape(self) -> None:
        from griptape.drivers.observability.open_telemetry import OpenTelemetryObservabilityDriver
        from griptape.observability import Observability
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        driver = OpenTelemetryObservabilityDriver(
            span_processor=SimpleSpanProcessor(InMemorySpanExporter())
        )
        self.griptape = Observability(observability_driver=driver)
        self.griptape.__enter__()

    def _leave_griptape(self) -> None:
        self.griptape.__exit__(None, None, None)
        self.griptape = None

    @staticmethod
    def _init_sentry() -> None:
        import sentry_sdk
        from sentry_sdk.integrations.threading import ThreadingIntegration

        # No DSN and no default integrations: a real client that sends nothing.
        sentry_sdk.init(
            integrations=[ThreadingIntegration(propagate_scope=True)],
            default_integrations=False,
            auto_enabling_integrations=False,
        )

    def observe(self) -> dict[str, dict[str, bool]]:
        """What each runner's work sees of the origin: our var, the trace, a Sentry tag."""
        return copy_context().run(self._observe)

    def _observe(self) -> dict[str, dict[str, bool]]:
        VAR.set("carried")
        if self.sentry:
            import sentry_sdk

            with sentry_sdk.isolation_scope() as scope:
                scope.set_tag("stacking", "tagged")
                return self._probe_all()
        return self._probe_all()

    def _probe_all(self) -> dict[str, dict[str, bool]]:
        with self.tracer.start_as_current_span("probe") as root:
            trace_id = root.get_span_context().trace_id
            seen: dict[str, Any] = {}
            thread = threading.Thread(target=lambda: seen.__setitem__("thread", self._probe()))
            thread.start()
            thread.join()
            with ThreadPoolExecutor(1) as pool:
                seen["pool"] = pool.submit(self._probe).result()

            async def in_loop() -> Any:
                return await asyncio.get_running_loop().run_in_executor(None, self._probe)

            seen["run_in_executor"] = asyncio.run(in_loop())
        return {
            runner: {
                "var": var == "carried",
                "trace": tid == trace_id,
                **({"sentry": tag == "tagged"} if self.sentry else {}),
            }
            for runner, (var, tid, tag) in seen.items()
        }

    def _probe(self) -> tuple[str, int, Any]:
        tag = None
        if self.sentry:
            import sentry_sdk

            tag = sentry_sdk.get_isolation_scope()._tags.get("stacking")
        return VAR.get(), trace.get_current_span().get_span_context().trace_id, tag


def run_sequence(steps: list[str], sentry: bool) -> list[dict[str, Any]]:
    """Observe the initial state and the state after each step."""
    stack = Stack(sentry)
    originals = ctxrelay_points()
    states = []
    try:
        for step in [None, *steps]:
            if step is not None:
                stack.step(step)
            now = ctxrelay_points()
            states.append(
                {
                    "step": step,
                    "ctx": ctxrelay.is_instrumented(),
                    "seen": stack.observe(),
                    "layers": describe(),
                    # ctxrelay off: its hook points are the very objects found at the start
                    # (or, for modules first loaded since, carry no ctxrelay wrapper).
                    "ctx_points_original": all(
                        now[point] is originals[point]
                        if point in originals
                        else not any(
                            layer.startswith("wrapt:ctxrelay.") for layer in layers(now[point])
                        )
                        for point in now
                    ),
                }
            )
    finally:
        if stack.griptape is not None:  # a failed step must not leave the global driver set
            stack.step("-griptape")
    return states


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(run_sequence(args, sentry="sentry" in args)))
