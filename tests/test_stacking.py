"""Stacking with other patchers, in every order: OpenTelemetry's ``ThreadingInstrumentor``,
Sentry's ``ThreadingIntegration`` (real ``sentry-sdk``, no DSN) and griptape's
``OpenTelemetryObservabilityDriver`` (which instruments and uninstruments threading
itself on enter/exit).

Each sequence of steps is run twice: as given, and without ctxrelay's steps (the
*baseline*: what the other tools do on their own).  After every step:

* ctxrelay on: a thread, a pool task and a ``run_in_executor`` call see the origin's
  ContextVar, its trace and its Sentry scope;
* ctxrelay off (never on, or uninstrumented in any order): everything observed — what
  the work sees, and the wrapper layers on every attribute any tool patches — is
  exactly the baseline's, and ctxrelay's hook points are the original objects;
* ctxrelay on or off, the attributes other tools patch carry exactly the baseline's
  layers: ctxrelay never wraps, strips or reorders someone else's wrapper.

Sentry's integration patches once per process and cannot be undone, so every sequence
with Sentry runs in a fresh interpreter (``stacking_tools.py``).
"""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.threading import ThreadingInstrumentor

import ctxrelay
from helpers import BASELINE_THREAD_INHERITS

pytest.importorskip("griptape")
import stacking_tools

TOOL = Path(__file__).with_name("stacking_tools.py")
CTX_STEPS = ("ctx", "-ctx")
CTX_ATTRS = {f"{stacking_tools._name(o)}.{a}" for o, a in stacking_tools.CTXRELAY_ATTRS}


def without_ctx(steps: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(step for step in steps if step not in CTX_STEPS)


def check(
    steps: tuple[str, ...], states: list[dict[str, Any]], baseline: list[dict[str, Any]]
) -> None:
    # The loss: without ctxrelay no runner carries the ContextVar.  3.14 with the flag
    # on: every one does, as start() copies and each pool here is fresh (its worker
    # starts in the submit); ctxrelay on must then still carry all of it.
    assert all(
        seen["var"] is BASELINE_THREAD_INHERITS
        for state in baseline
        for seen in state["seen"].values()
    ), "the baseline"
    others = 0
    for state in states:
        if state["step"] not in (None, *CTX_STEPS):
            others += 1
        base = baseline[others]
        where = f"after {state['step']} in {steps}"
        for attr, layers in state["layers"].items():
            if attr not in CTX_ATTRS:
                assert layers == base["layers"][attr], f"{attr} {where}"
        if state["ctx"]:
            for runner, seen in state["seen"].items():
                assert all(seen.values()), f"{runner} {seen} {where}"
        else:
            assert state["seen"] == base["seen"], where
            assert state["layers"] == base["layers"], where
            assert state["ctx_points_original"], where


# --- in-process: ctxrelay, OpenTelemetry and griptape (all three can be undone) ------

IN_PROCESS = [
    install + removal
    for install in itertools.permutations(("ctx", "otel", "griptape"))
    for removal in itertools.permutations(("-ctx", "-otel", "-griptape"))
]


@functools.cache
def _baseline_in_process(steps: tuple[str, ...]) -> str:
    return json.dumps(_run_in_process(steps))


def _run_in_process(steps: tuple[str, ...]) -> list[dict[str, Any]]:
    stack_states: list[dict[str, Any]] = []
    try:
        # A copy: griptape's driver makes its root span current in the caller's context.
        stack_states = copy_context().run(stacking_tools.run_sequence, list(steps), False)
    finally:
        if ThreadingInstrumentor().is_instrumented_by_opentelemetry:
            ThreadingInstrumentor().uninstrument()
    return stack_states


@pytest.mark.parametrize("steps", IN_PROCESS, ids=[" ".join(s) for s in IN_PROCESS])
def test_every_order_with_opentelemetry_and_griptape(steps: tuple[str, ...]) -> None:
    states = _run_in_process(steps)
    check(steps, states, json.loads(_baseline_in_process(without_ctx(steps))))


def test_griptape_driver_exit_strips_opentelemetry_but_not_ctxrelay() -> None:
    """griptape's exit uninstruments OpenTelemetry's threading even when the user had
    instrumented it before: ctxrelay, hooked elsewhere, keeps carrying contexts."""
    states = _run_in_process(("otel", "ctx", "griptape", "-griptape"))
    last = states[-1]
    assert last["ctx"] and all(all(seen.values()) for seen in last["seen"].values())
    assert not ThreadingInstrumentor().is_instrumented_by_opentelemetry


# --- with Sentry: one fresh interpreter per sequence -----------------------------------

_INSTALLS = list(itertools.permutations(("ctx", "otel", "sentry", "griptape")))
_REMOVALS = list(itertools.permutations(("-ctx", "-otel", "-griptape")))
#: every install order, each with one of the removal orders (all six used in turn)
WITH_SENTRY = [install + _REMOVALS[i % len(_REMOVALS)] for i, install in enumerate(_INSTALLS)]
#: quick subset: ctxrelay first, last, and around Sentry
QUICK = {
    ("ctx", "otel", "sentry", "griptape"),
    ("sentry", "griptape", "otel", "ctx"),
    ("otel", "sentry", "ctx", "griptape"),
    ("griptape", "ctx", "sentry", "otel"),
}


def _run_fresh(steps: tuple[str, ...]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(TOOL), *steps],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TOOL.parent,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "steps",
    [s if s[:4] in QUICK else pytest.param(s, marks=pytest.mark.slow) for s in WITH_SENTRY],
    ids=[" ".join(s) for s in WITH_SENTRY],
)
def test_every_order_with_sentry_opentelemetry_and_griptape(steps: tuple[str, ...]) -> None:
    pytest.importorskip("sentry_sdk")
    # Two interpreters at once: the machine has two cores.
    with ThreadPoolExecutor(2) as pool:
        states, baseline = pool.map(_run_fresh, [steps, without_ctx(steps)])
    check(steps, states, baseline)
    # Sentry cannot be undone; it still propagates its scope after ctxrelay left.
    last = states[-1]
    assert not last["ctx"]
    assert all(seen["sentry"] for seen in last["seen"].values())


# --- another tool's wrapt wrapper on top of ctxrelay's own hook points ----------------

HOOK_POINTS = [
    (stacking_tools.pool_module, "_WorkItem"),
    (stacking_tools.threading, stacking_tools._START),
    (stacking_tools.asyncio.base_events.BaseEventLoop, "run_in_executor"),
]


def _passthrough(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    calls.append(1)
    return wrapped(*args, **kwargs)


calls: list[int] = []


@pytest.mark.parametrize("owner,attr", HOOK_POINTS, ids=[a for _, a in HOOK_POINTS])
def test_a_wrapper_stacked_on_ctxrelays_is_kept_and_ctxrelay_spliced_out(
    owner: Any, attr: str
) -> None:
    """Any wrapt-based tool (OpenTelemetry's unwrap style) wrapping after ctxrelay at the
    same place: ctxrelay's uninstrument() splices itself out of the chain, leaving the
    other wrapper directly around the original, and an OpenTelemetry-style unwrap of the
    other tool then restores the very original object."""
    import wrapt

    original = stacking_tools._raw(owner, attr)
    ctxrelay.instrument()
    wrapt.wrap_function_wrapper(owner, attr, _passthrough)
    try:
        ctxrelay.uninstrument()
        outer = stacking_tools._raw(owner, attr)
        assert stacking_tools.layers(outer)[0].endswith("._passthrough")
        assert outer.__wrapped__ is original, "ctxrelay's wrapper is out of the chain"
        calls.clear()
        stacking_tools.Stack(sentry=False).observe()
        assert calls, "the other tool still runs"
    finally:
        current = stacking_tools._raw(owner, attr)
        setattr(owner, attr, current.__wrapped__)  # what opentelemetry's unwrap does
    assert stacking_tools._raw(owner, attr) is original
    ctxrelay.instrument()  # and ctxrelay comes back cleanly, once
    assert [
        layer
        for layer in stacking_tools.layers(stacking_tools._raw(owner, attr))
        if "ctxrelay" in layer
    ]
    ctxrelay.uninstrument()
    assert stacking_tools._raw(owner, attr) is original
