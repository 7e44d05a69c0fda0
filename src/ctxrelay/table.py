"""The table of everything ctxrelay patches: one entry per runner or event bus.

Adding a runner is one line here, one module under ``runners/`` declaring its
``PATCHES``, and one test file.  Modules are imported only when instrumenting, and
never import the framework they patch (that is patched when the application imports it).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

from ctxrelay.patching import Patch

#: runner modules under ctxrelay.runners
RUNNERS: tuple[str, ...] = (
    "threads",
    "raw_threads",
    "futures",
    "asyncio",
    "thread_pool",
    "socketserver",
    "anyio",
    "starlette",
    "gradio",
    "process_pool",
    "multiprocessing",
    "celery",
    "dask",
)

#: event-bus modules under ctxrelay.listeners
LISTENERS: tuple[str, ...] = (
    "griptape",
    "blinker",
    "django",
    "pyee",
    "pubsub",
    "celery",
    "generic",  # buses declared with ctxrelay.trace_dispatch()
)


def modules() -> Iterator[tuple[str, object]]:
    for name in RUNNERS:
        yield name, importlib.import_module(f"ctxrelay.runners.{name}")
    for name in LISTENERS:
        yield name, importlib.import_module(f"ctxrelay.listeners.{name}")


def names() -> list[str]:
    """Every patch name a user can include or exclude (``CTXRELAY_INCLUDE``/``_EXCLUDE``)."""
    seen: dict[str, None] = {}
    for _, module in modules():
        for patch in getattr(module, "PATCHES", ()):
            seen.setdefault(patch.name)
    return list(seen)


def patches() -> list[Patch]:
    found: list[Patch] = []
    for _, module in modules():
        found.extend(getattr(module, "PATCHES", ()))
    return found
