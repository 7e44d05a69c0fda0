"""``_thread.start_new_thread`` called directly: without ctxrelay the thread starts with an
empty context; with it, it runs in a copy of the caller's, as an ordinary hop.

Real OS threads started through ``_thread``; a real ``sys.unraisablehook`` for the
exception case (``_thread`` reports a raising function through it).
"""

from __future__ import annotations

import _thread
import contextvars
import sys
import threading

import ctxrelay
from helpers import parent_of, spans_named

user: contextvars.ContextVar[str] = contextvars.ContextVar("test_raw_user", default="<unset>")

TIMEOUT = 10


def _start_raw(fn, *args, **kwargs) -> None:
    done = threading.Event()

    def body() -> None:
        try:
            fn(*args, **kwargs)
        finally:
            done.set()

    _thread.start_new_thread(body, ())
    assert done.wait(TIMEOUT)


def test_raw_thread_without_then_with_ctxrelay(exporter, tracer) -> None:
    seen: list[tuple[str, int, int]] = []

    def work(a: int, b: int = 0) -> None:
        seen.append((user.get(), a, b))

    user.set("alice")
    with tracer.start_as_current_span("request"):
        _start_raw(work, 1, b=2)
    ctxrelay.instrument()
    with tracer.start_as_current_span("request"):
        _start_raw(work, 1, b=2)

    assert seen == [("<unset>", 1, 2), ("alice", 1, 2)]
    (hop,) = spans_named(exporter, "_thread.start_new_thread")
    assert hop.name == "_thread.start_new_thread body"
    assert parent_of(hop, exporter).name == "request"
    assert hop.attributes["thread.name"].startswith("thread-")


def test_raw_thread_gets_no_dummy_thread_object() -> None:
    """ctxrelay's run side never calls current_thread() (it would register a dummy)."""
    ctxrelay.instrument()
    idents: list[int] = []
    _start_raw(lambda: idents.append(_thread.get_ident()))
    assert idents and idents[0] not in threading._active


def test_raising_function_is_reported_by_name_as_without_ctxrelay() -> None:
    reports: list[str] = []
    previous = sys.unraisablehook

    def hook(unraisable) -> None:  # type: ignore[no-untyped-def]
        # 3.10-3.12 pass the function as ``object``; 3.13+ name it in ``err_msg``
        # ("Exception ignored in thread started by <function ...>") with object None.
        reports.append(
            f"{unraisable.exc_type.__name__}: {unraisable.exc_value} "
            f"{unraisable.object!r} {unraisable.err_msg}"
        )

    def boom() -> None:
        raise ValueError("boom")

    sys.unraisablehook = hook
    try:
        for on in (False, True):
            if on:
                ctxrelay.instrument()
            done = threading.Event()
            count = len(reports)
            _thread.start_new_thread(boom, ())
            # The hook runs in the raw thread after boom raised: wait for it.
            for _ in range(1000):
                if len(reports) > count:
                    break
                done.wait(0.01)
    finally:
        sys.unraisablehook = previous
    assert len(reports) == 2, reports
    assert reports[0] == reports[1], reports
    assert reports[0].startswith("ValueError: boom ") and "<function" in reports[0]
    assert "boom" in reports[0].split("ValueError: boom ", 1)[1], "reported by name"


def test_threading_threads_are_left_to_the_thread_patch(exporter, tracer) -> None:
    ctxrelay.instrument()
    with tracer.start_as_current_span("request"):
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join(TIMEOUT)
    assert not spans_named(exporter, "_thread.start_new_thread")
    assert len(spans_named(exporter, "Thread")) == 1


def test_excluding_the_runner_gives_the_old_behaviour() -> None:
    ctxrelay.instrument(exclude=["_thread"])
    seen: list[str] = []
    user.set("bob")
    _start_raw(lambda: seen.append(user.get()))
    assert seen == ["<unset>"]
