"""The differential harness of the host-safety tests: the same scenario without
ctxrelay, then with it (under a sampled span, so that every hop records a span), and
what each run produced, to compare."""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

import ctxrelay

#: A liveness bound, not a speed assertion: a hang fails the test instead of the run.
HANG = 20.0


@dataclass
class Outcome:
    """What one run of a scenario produced, as the caller sees it."""

    value: Any = None
    exception: BaseException | None = None
    runs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exception_type(self) -> type[BaseException] | None:
        return None if self.exception is None else type(self.exception)


def assert_same(bare: Outcome, instrumented: Outcome) -> None:
    """The caller got the same thing: value, exception type and message, runs, extras."""
    assert instrumented.exception_type is bare.exception_type, (bare, instrumented)
    if bare.exception is not None:
        assert _message(instrumented.exception) == _message(bare.exception)
    assert (instrumented.value, instrumented.runs, instrumented.extra) == (
        bare.value,
        bare.runs,
        bare.extra,
    )


def _message(exc: BaseException | None) -> str:
    try:
        return str(exc)
    except Exception:
        return "<str() raises>"


#: CPython 3.14's ``sys.flags.thread_inherit_context``: with it on, a bare thread starts
#: in a copy of its starter's context, so the bare baseline of a thread scenario is
#: the very leak some of these tests check ctxrelay does not add.
BARE_THREADS_INHERIT = bool(getattr(sys.flags, "thread_inherit_context", 0))


def assert_expected(bare: Outcome, instrumented: Outcome, expected: Outcome) -> None:
    """ctxrelay gives ``expected``; so does bare Python, unless its threads inherit."""
    assert instrumented == expected
    if not BARE_THREADS_INHERIT:
        assert bare == expected
        assert_same(bare, instrumented)


def differential(
    scenario: Callable[[], Outcome], *, span: bool = True, **instrument: Any
) -> tuple[Outcome, Outcome]:
    """``(bare, instrumented)``: ``scenario()`` without ctxrelay, then with it."""
    ctxrelay.uninstrument()
    bare = scenario()
    ctxrelay.instrument(**instrument)
    try:
        if span:
            with trace.get_tracer("ctxrelay.tests").start_as_current_span("request"):
                instrumented = scenario()
        else:
            instrumented = scenario()
    finally:
        ctxrelay.uninstrument()
    return bare, instrumented


def without_hanging(action: Callable[[], Any]) -> Any:
    """Run ``action`` in a helper thread; fail if it has not returned within HANG."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(action())
        except BaseException as exc:  # reported to the test below
            error.append(exc)

    helper = threading.Thread(target=run, daemon=True)
    helper.start()
    helper.join(HANG)
    assert not helper.is_alive(), "hung"
    if error:
        raise error[0]
    return result[0]


def collected(ref: weakref.ref[Any]) -> bool:
    """True once nothing keeps the object of ``ref`` alive."""
    for _ in range(3):
        gc.collect()
    return ref() is None
