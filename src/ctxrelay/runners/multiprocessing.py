"""``multiprocessing``: ``Process`` and the process ``Pool`` carry the declared values.

Read against ``Lib/multiprocessing/pool.py`` and ``process.py`` of CPython 3.11.7 (the
parts used are the same in 3.10-3.14).

* ``Pool.apply_async`` (``apply``), ``Pool._map_async`` (``map``, ``map_async``,
  ``starmap``, ``starmap_async``), ``Pool.imap`` and ``Pool.imap_unordered`` take the
  user's ``func`` in the caller: it becomes a :class:`ctxrelay.carrier.Task`, pickled
  into every chunk, and each item runs in a fresh context of its own (a hop each).
  ``ThreadPool`` inherits these methods and is left to the ``thread_pool`` runner.
* ``BaseProcess.start`` wraps ``target`` (when ``run`` is not overridden) in a task.
  With ``spawn``/``forkserver`` the child gets the declared values and the trace;
  a ``fork`` child keeps Python's semantics (a copy of the starting thread's whole
  context) and gains the trace and the hop span.  The worker processes of pools and
  engines (targets in ``multiprocessing``, ``concurrent.futures``, ``billiard``,
  ``celery``, ``distributed``, ``dask``) are left alone: they live for many tasks,
  each of which carries its own.
"""

from __future__ import annotations

import sys
from typing import Any

from ctxrelay import relay
from ctxrelay.patching import Patch

NAME = "multiprocessing"
RUNNER = "multiprocessing.Pool"
PROCESS_RUNNER = "multiprocessing.Process"
_POOL = "multiprocessing.pool"
_PROCESS = "multiprocessing.process"
_ENGINE_MODULES: tuple[str, ...] = (
    "multiprocessing.",
    "concurrent.",
    "billiard.",
    "celery.",
    "distributed.",
    "dask.",
)


def _is_thread_pool(instance: Any) -> bool:
    thread_pool = getattr(sys.modules.get(_POOL), "ThreadPool", None)
    return thread_pool is not None and isinstance(instance, thread_pool)


def relay_func(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Around ``Pool.<method>(func, ...)``: ``func`` carries its caller's values."""
    if _is_thread_pool(instance):
        return wrapped(*args, **kwargs)
    if args:
        return wrapped(relay.carried_task(RUNNER, args[0]), *args[1:], **kwargs)
    if "func" in kwargs:
        kwargs = dict(kwargs, func=relay.carried_task(RUNNER, kwargs["func"]))
    return wrapped(*args, **kwargs)


def _start_method(process: Any) -> str | None:
    method = getattr(type(process), "_start_method", None)
    if method:
        return str(method)
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=False)


def relay_start(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Around ``BaseProcess.start()``: the child's ``target`` runs with the carrier."""
    try:
        target = getattr(instance, "_target", None)
        base = getattr(sys.modules.get(_PROCESS), "BaseProcess", None)
        module = getattr(target, "__module__", None) or ""
        if (
            target is not None
            and base is not None
            and type(instance).run is base.run
            and not module.startswith(_ENGINE_MODULES)
        ):
            instance._target = relay.carried_task(
                PROCESS_RUNNER, target, fresh=_start_method(instance) != "fork"
            )
    except Exception:  # pragma: no cover - defensive: started unchanged
        pass
    return wrapped(*args, **kwargs)


PATCHES = (
    Patch(NAME, _POOL, "Pool.apply_async", relay_func),
    Patch(NAME, _POOL, "Pool._map_async", relay_func),
    Patch(NAME, _POOL, "Pool.imap", relay_func),
    Patch(NAME, _POOL, "Pool.imap_unordered", relay_func),
    Patch(NAME, _PROCESS, "BaseProcess.start", relay_start),
)
