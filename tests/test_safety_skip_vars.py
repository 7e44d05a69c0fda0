"""CTXRELAY_SKIP_VARS leaves exactly the named variables behind, in threads and pools.

A skipped variable with a default starts at its default in the other thread; one
without starts unset; every other variable is carried; a variable first seen after
the setting was made is skipped too.  (What it costs: ``make bench``.)
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context
from typing import Any

import pytest

import ctxrelay
from safety_support import BARE_THREADS_INHERIT, HANG

WITH_DEFAULT: ContextVar[str] = ContextVar("skip_with_default", default="default")
WITHOUT_DEFAULT: ContextVar[str] = ContextVar("skip_without_default")
KEPT: ContextVar[str] = ContextVar("skip_kept", default="default")


def _read() -> tuple[str, str, str]:
    return WITH_DEFAULT.get(), WITHOUT_DEFAULT.get("<unset>"), KEPT.get()


def _thread(fn: Callable[[], Any]) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join(HANG)
    return out[0]


def _pool(fn: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(HANG)


@pytest.mark.parametrize("via", [_thread, _pool], ids=["Thread", "submit"])
def test_skipped_variables_start_as_in_a_fresh_thread(via: Callable[..., Any]) -> None:
    def request() -> Any:
        WITH_DEFAULT.set("secret")
        WITHOUT_DEFAULT.set("secret")
        KEPT.set("carried")
        return via(_read)

    bare = copy_context().run(request)
    if not BARE_THREADS_INHERIT:  # (a pool's first worker starts in the submit)
        assert bare == ("default", "<unset>", "default")
    ctxrelay.instrument(skip_vars=["skip_with_default", "skip_without_default"])
    assert copy_context().run(request) == ("default", "<unset>", "carried")
    ctxrelay.instrument(skip_vars=["no_such_name"])
    assert copy_context().run(request) == ("secret", "secret", "carried")


def test_a_variable_created_after_the_setting_is_skipped_too() -> None:
    ctxrelay.instrument(skip_vars=["skip_created_later"])
    assert _thread(KEPT.get) == "default"  # the context has been looked at once already
    later: ContextVar[str] = ContextVar("skip_created_later", default="default")

    def request() -> Any:
        later.set("secret")
        return _pool(later.get)

    assert copy_context().run(request) == "default"


def test_a_variable_named_by_its_module_and_attribute_is_skipped_without_a_pass(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``module:attribute`` names one module-level variable, found once its module is
    imported (given before the import here): skipped, the others carried, and the
    context is never scanned for names."""
    from ctxrelay import left_behind

    (tmp_path / "skip_vars_app.py").write_text(
        "from contextvars import ContextVar\n"
        "SESSION = ContextVar('a_session', default='no session')\n"
        "OTHER = ContextVar('a_session', default='no session')  # the same name\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "skip_vars_app", raising=False)

    def request() -> Any:
        app = importlib.import_module("skip_vars_app")
        app.SESSION.set("the request's")
        app.OTHER.set("the request's")
        KEPT.set("carried")
        return _thread(lambda: (app.SESSION.get(), app.OTHER.get(), KEPT.get()))

    ctxrelay.instrument(skip_vars=["skip_vars_app:SESSION"])
    assert copy_context().run(request) == ("no session", "the request's", "carried")
    assert left_behind._seen == set()  # found by path: no pass over the context
    ctxrelay.uninstrument()
    bare = copy_context().run(request)
    if not BARE_THREADS_INHERIT:
        assert bare == ("no session", "no session", "default")
