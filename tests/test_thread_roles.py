"""Which threads never capture: decided once per module, the same answer at every start.

``_thread_roles.is_exempt`` remembers, per module name, what is exempt in it (a pool's
worker, a telemetry SDK's thread, nothing): these tests start real threads twice (the
first start decides, the second is answered from what was remembered), bare and with
ctxrelay, and check that the memory follows the registries and keeps nothing alive.
"""

from __future__ import annotations

import contextvars
import gc
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import ctxrelay
from ctxrelay.runners import _thread_roles
from helpers import baseline

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("thread_roles_var", default="EMPTY")


def _target(box: list[str], module: str | None = None, qualname: str | None = None) -> Any:
    """A thread target that notes what it sees, named as ``module``/``qualname`` says."""

    def target() -> None:
        box.append(VAR.get())

    if module is not None:
        target.__module__ = module
    if qualname is not None:
        target.__qualname__ = qualname
    return target


def _seen_in_thread(target: Callable[[], None]) -> None:
    def scenario() -> None:
        VAR.set("set")
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()

    contextvars.copy_context().run(scenario)


NAMED = {
    "the application's": (None, None),
    "a pool worker's": ("concurrent.futures.thread", "_worker"),
    "a telemetry SDK's": ("opentelemetry.sdk._fake_exporter", "Exporter._loop"),
}


@pytest.mark.parametrize("named", list(NAMED), ids=list(NAMED))
def test_every_start_gets_the_same_answer(named: str) -> None:
    module, qualname = NAMED[named]
    bare: list[str] = []
    for _ in range(2):
        _seen_in_thread(_target(bare, module, qualname))
    assert bare == [baseline("EMPTY", "set")] * 2, "without ctxrelay"

    ctxrelay.instrument(spans=False)
    carried: list[str] = []
    for _ in range(2):  # the first start decides, the second is answered from memory
        _seen_in_thread(_target(carried, module, qualname))
    # an exempt thread starts empty, with or without thread_inherit_context
    expected = "set" if module is None else "EMPTY"
    assert carried == [expected] * 2


def test_exempt_target_applies_to_a_module_already_decided(monkeypatch) -> None:
    ctxrelay.instrument(spans=False)
    box: list[str] = []
    target = _target(box)
    _seen_in_thread(target)  # this module is decided: nothing exempt in it
    assert box == ["set"]
    # exempt_target replaces the registry: the undo puts the original object back
    monkeypatch.setattr(_thread_roles, "EXEMPT_TARGETS", _thread_roles.EXEMPT_TARGETS)
    _thread_roles.exempt_target(target)
    _seen_in_thread(target)
    assert box == ["set", "EMPTY"], "exempt from the next start on"
    monkeypatch.undo()  # the registry as it was (a replacement, as a test makes it)
    _seen_in_thread(target)
    assert box == ["set", "EMPTY", "set"], "the original registry again"


def test_the_memory_is_bounded_and_keeps_no_function() -> None:
    ctxrelay.instrument(spans=False)
    box: list[str] = []
    target = _target(box, module="app_module_kept_by_name_only")
    ref = weakref.ref(target)
    _seen_in_thread(target)
    del target
    gc.collect()
    assert box == ["set"] and ref() is None, "the target function was let go"
    for i in range(_thread_roles._VERDICTS_MAX * 2):
        thread = threading.Thread(target=_target(box, module=f"generated_module_{i}"))
        assert not _thread_roles.is_exempt(thread)
    verdicts = _thread_roles._memory[2]
    assert 0 < len(verdicts) <= _thread_roles._VERDICTS_MAX
    assert all(type(key) is str for key in verdicts)
    # still right after being emptied when full
    worker = threading.Thread(target=_target(box, "concurrent.futures.thread", "_worker"))
    assert _thread_roles.is_exempt(worker)


def test_a_registration_during_a_decision_is_not_remembered_stale(monkeypatch) -> None:
    """``exempt_target`` racing a start that is deciding a module, while a third start
    decides another module: the decision taken from the registry as it was must not be
    remembered as the answer under the registry as it is now (the registered target
    would capture until the next registration).  The interleaving is made exact in one
    thread: a profile function runs the other two steps while the decision is being
    computed (at its prefix match, a C call the profiler sees).
    """
    monkeypatch.setattr(_thread_roles, "EXEMPT_TARGETS", _thread_roles.EXEMPT_TARGETS)
    box: list[str] = []
    job = _target(box, module="app_module_raced", qualname="job")
    other = threading.Thread(target=_target(box, module="app_module_other"))
    raced = threading.Thread(target=_target(box, module="app_module_raced", qualname="job"))
    monkeypatch.setattr(_thread_roles, "EXEMPT_TARGET_PREFIXES", ("some_sdk.",))  # cold
    steps: list[str] = []

    def interleave(frame: Any, event: str, arg: Any) -> None:
        if (
            event == "c_call"
            and not steps
            and getattr(arg, "__name__", None) == "startswith"
            and getattr(arg, "__self__", None) == "app_module_raced"
        ):
            steps.append("registered")
            _thread_roles.exempt_target(job)  # another thread registers ...
            _thread_roles.is_exempt(other)  # ... and a third start decides its module

    sys.setprofile(interleave)
    try:
        during = _thread_roles.is_exempt(raced)
    finally:
        sys.setprofile(None)
    assert steps == ["registered"], "the interleaving happened"
    assert during is False, "decided from the registry it read"
    assert _thread_roles.is_exempt(raced), "the registration holds from the next start on"
    ctxrelay.instrument(spans=False)
    _seen_in_thread(job)
    assert box == ["EMPTY"], "and the thread starts empty, as an exempt one does"
