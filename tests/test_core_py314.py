"""Code that branches on Python 3.14 (``Thread(context=)``, ``thread_inherit_context``,
``_WorkItem(future, task)``, ``InterpreterPoolExecutor``), driven with simulated inputs
so that it is covered on the supported 3.10-3.13 too.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future
from typing import Any

import pytest

import ctxrelay
from ctxrelay.runners import futures, threads

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
