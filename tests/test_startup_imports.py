"""Deferred patches apply however a module is imported: concurrently, through a finder
put in front of ctxrelay's, under real pytest, and again after ``importlib.reload``."""

from __future__ import annotations

import builtins
import importlib
import json
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import wrapt

from activation_support import base_env, run
from ctxrelay import patching
from helpers import baseline

# Request A builds a pool and hands it a first task (the worker threads start inside A);
# request B then hands it another.  Without ctxrelay the workers see neither request;
# with it each task sees its own; a pool that is not patched leaks A into B's task.
POOL_APP = """\
import contextvars, importlib, json, sys
REQUEST = contextvars.ContextVar("request", default="EMPTY")
how = sys.argv[1]
if how == "front-finder":
    import importlib.abc, importlib.machinery
    class Front(importlib.abc.MetaPathFinder):
        # answers for the pool's module itself, as pytest's assertion rewriter does for
        # the packages it rewrites: the finders behind it are never asked.
        def find_spec(self, name, path=None, target=None):
            if name in ("multiprocessing.pool", "concurrent.futures.thread"):
                return importlib.machinery.PathFinder.find_spec(name, path)
            return None
    sys.meta_path.insert(0, Front())
if how == "reload":
    import concurrent.futures.thread, multiprocessing.pool
    importlib.reload(concurrent.futures.thread)
    importlib.reload(multiprocessing.pool)
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool

seen = {}
def request(name, pool, submit):
    def run():
        REQUEST.set(name)
        return submit(pool, REQUEST.get)
    return contextvars.Context().run(run)

tpe, tp = ThreadPoolExecutor(1), ThreadPool(1)
for kind, pool, submit in (
    ("executor", tpe, lambda p, f: p.submit(f).result()),
    ("thread_pool", tp, lambda p, f: p.apply_async(f).get(10)),
):
    seen[kind] = [request("A", pool, submit), request("B", pool, submit)]
tpe.shutdown()
tp.close(); tp.join()
print("SEEN " + json.dumps(seen), flush=True)
"""


def _seen(app: Path, how: str, enabled: bool) -> dict[str, list[str]]:
    env = base_env(CTXRELAY_ENABLED="1" if enabled else "0")
    result = run(["python", "app.py", how], env, app)
    assert result.returncode == 0, result.stderr
    assert "could not patch" not in result.stderr, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("SEEN ")]
    return json.loads(line[5:])  # type: ignore[no-any-return]


@pytest.fixture
def pool_app(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(POOL_APP)
    return tmp_path


@pytest.mark.parametrize("how", ["front-finder", "reload"])
def test_pools_carry_each_requests_context(pool_app: Path, how: str) -> None:
    bare = _seen(pool_app, how, enabled=False)
    # 3.14 with thread_inherit_context=1: the executor's worker, started inside request
    # A, keeps a copy of A for its life and B's task sees A (ThreadPool's workers start
    # at construction, outside any request).
    executor = baseline(["EMPTY", "EMPTY"], ["A", "A"])
    assert bare == {"executor": executor, "thread_pool": ["EMPTY", "EMPTY"]}
    assert _seen(pool_app, "plain", enabled=True) == {
        "executor": ["A", "B"],
        "thread_pool": ["A", "B"],
    }
    assert _seen(pool_app, how, enabled=True) == {"executor": ["A", "B"], "thread_pool": ["A", "B"]}


UNDER_PYTEST = """\
import contextvars
import sys
from multiprocessing.pool import ThreadPool

import anyio
import anyio.to_thread

REQUEST = contextvars.ContextVar("request", default="EMPTY")

def test_pool():
    def request(name, pool):
        REQUEST.set(name)
        return pool.apply_async(REQUEST.get).get(10)
    pool = ThreadPool(1)
    seen = [contextvars.Context().run(request, name, pool) for name in "AB"]
    pool.close(); pool.join()
    print("SEEN", seen)
    assert seen in (["EMPTY", "EMPTY"], ["A", "B"]), seen


def test_anyio():
    # anyio ships a pytest plugin: pytest's rewriter answers for every anyio.* module.
    anyio.run(anyio.to_thread.run_sync, lambda: None)
    patching = sys.modules.get("ctxrelay.patching")
    modules = {p.module for p in patching.installed()} if patching else set()
    print("ANYIO_PATCHED", "anyio._backends._asyncio" in modules)
"""


def test_thread_pool_under_real_pytest(tmp_path: Path) -> None:
    """pytest puts its assertion rewriter first on ``sys.meta_path`` after start-up."""
    (tmp_path / "test_pool.py").write_text(UNDER_PYTEST)
    cmd = ["python", "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_pool.py"]
    pytest.importorskip("anyio")
    for enabled, expected in ((False, "['EMPTY', 'EMPTY']"), (True, "['A', 'B']")):
        env = base_env(CTXRELAY_ENABLED="1" if enabled else "0")
        result = run(cmd, env, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SEEN {expected}" in result.stdout, result.stdout
        assert f"ANYIO_PATCHED {enabled}" in result.stdout, result.stdout


def test_patched_once_a_concurrent_import_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``apply()`` while another thread is part-way through importing the module."""
    name = f"ctxrelay_slow_{uuid.uuid4().hex}"
    started, release = threading.Event(), threading.Event()
    builtins._ctxrelay_slow_events = (started, release)  # type: ignore[attr-defined]
    (tmp_path / f"{name}.py").write_text(
        "import builtins\n"
        "started, release = builtins._ctxrelay_slow_events\n"
        "started.set()\n"
        "assert release.wait(30)\n"
        "def work(x):\n"
        "    return x * 2\n"
    )
    calls: list[Any] = []

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append(args)
        return wrapped(*args, **kwargs)

    sys.path.insert(0, str(tmp_path))
    importer = threading.Thread(target=importlib.import_module, args=(name,))
    try:
        importer.start()
        assert started.wait(30)
        with caplog.at_level(logging.DEBUG, logger="ctxrelay"):
            patching.apply([patching.Patch("slow", name, "work", wrapper)])
        release.set()
        importer.join(30)
        module = sys.modules[name]
        # The import has ended; the patch follows it (in the importing thread, or in
        # ctxrelay's helper waiting on the import lock when the import began earlier).
        deadline = time.monotonic() + 30
        while not isinstance(module.__dict__["work"], wrapt.FunctionWrapper):
            assert time.monotonic() < deadline, "never patched"
            time.sleep(0.01)
        assert module.work(21) == 42  # the function's own result ...
        assert calls == [(21,)]  # ... through ctxrelay's wrapper
        assert "could not patch" not in caplog.text
    finally:
        release.set()
        patching.remove_all()
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
        del builtins._ctxrelay_slow_events  # type: ignore[attr-defined]
    assert module.work(1) == 2 and calls == [(21,)]  # off again
