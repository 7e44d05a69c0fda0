"""Host safety, no trace on the user's objects: a thread and a traceback look as bare.

While a thread runs under a hop span its instance has no ``run`` attribute; a
``self.run = ...`` it makes survives; the traceback ``threading.excepthook`` receives
has no frame of ctxrelay.  Compared bare and instrumented (under a sampled span).
"""

from __future__ import annotations

import threading
import traceback
from pathlib import Path
from typing import Any

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
