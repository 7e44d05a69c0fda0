"""Shared pieces of the process-boundary tests: three ContextVars and probe tasks.

A module of its own, so that worker processes (spawn, forkserver, Celery, Dask) import
the same variables by name.  ``REQUEST_ID`` and ``TENANT`` are the declared ones in the
tests; ``SECRET`` is never declared and must never cross.
"""

from __future__ import annotations

import contextvars
import os
from typing import Any

from opentelemetry import trace

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")
SECRET: contextvars.ContextVar[str] = contextvars.ContextVar("secret", default="-")

DECLARED = ("process_support:REQUEST_ID", "process_support:TENANT")
ENV_DECLARED = ",".join(DECLARED)


def seen(tag: Any = None) -> dict[str, Any]:
    """What a task sees: the three variables, its trace and parent span, its pid."""
    context = trace.get_current_span().get_span_context()
    return {
        "tag": tag,
        "request_id": REQUEST_ID.get(),
        "tenant": TENANT.get(),
        "secret": SECRET.get(),
        "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
        "span_id": format(context.span_id, "016x") if context.is_valid else None,
        "pid": os.getpid(),
    }


def seen_pair(a: Any, b: Any) -> dict[str, Any]:
    return seen((a, b))


def set_all(request_id: str, tenant: str, secret: str) -> None:
    REQUEST_ID.set(request_id)
    TENANT.set(tenant)
    SECRET.set(secret)


def set_then_seen(tag: Any) -> dict[str, Any]:
    """Sets values inside the task: a later task on the same worker must not see them."""
    result = seen(tag)
    set_all(f"leaked-{tag}", f"leaked-{tag}", f"leaked-{tag}")
    return result


def fail(message: str) -> None:
    raise ValueError(message)


def runs_counted(path: str) -> int:
    """Append one line per run to ``path``: the task must run exactly once."""
    with open(path, "a") as f:
        f.write("run\n")
    return os.getpid()


def report_to(queue: Any, tag: Any) -> None:
    """A ``multiprocessing.Process`` target: put what it sees on ``queue``."""
    queue.put(seen(tag))


def run_as(values: tuple[str | None, str | None, str | None], fn: Any, *args: Any) -> Any:
    """Call ``fn`` in a new thread whose context holds only ``values`` (None = unset).

    The body runs in an empty Context (whatever the thread patch carried), playing a
    second submitter that set different values, or none.
    """
    import threading

    result: list[Any] = []

    def body() -> None:
        for var, value in zip((REQUEST_ID, TENANT, SECRET), values, strict=True):
            if value is not None:
                var.set(value)
        result.append(fn(*args))

    thread = threading.Thread(target=lambda: contextvars.Context().run(body))
    thread.start()
    thread.join()
    return result[0]


def reset_all() -> None:
    """Back to the defaults' value (a test's ``set`` would otherwise outlive it)."""
    set_all("-", "-", "-")


def remote_frames(exc: BaseException) -> list[str]:
    """The worker-side traceback a process pool attached to ``exc``: its ``File`` lines.

    ``ProcessPoolExecutor`` and ``multiprocessing.Pool`` format it on the worker and
    chain it as ``__cause__``; what the caller reads must not gain ctxrelay's frames.
    """
    text = str(getattr(exc.__cause__, "tb", exc.__cause__))
    return [line.strip() for line in text.splitlines() if line.strip().startswith("File ")]


def without_tolerated_frame(frames: list[str]) -> list[str]:
    """3.10 keeps the one frame that re-raises (``Task.__call__``); 3.11+ keeps none."""
    import sys

    if sys.version_info >= (3, 11):
        return frames
    return [f for f in frames if not ("ctxrelay" in f and "carrier.py" in f and "__call__" in f)]


async def seen_async(tag: Any = None) -> dict[str, Any]:
    """A coroutine task: Dask awaits it in the worker's event loop, not in a thread."""
    import asyncio

    await asyncio.sleep(0)
    return seen(tag)


def computes_inside(tag: Any) -> list[dict[str, Any]]:
    """A task that computes more from inside (``worker_client``): what each level sees."""
    import dask
    from distributed import worker_client

    outer = seen(tag)
    with worker_client() as client:
        graph = client.compute(dask.delayed(seen)(f"{tag}-graph")).result()
        submitted = client.submit(seen, f"{tag}-submit", pure=False).result()
    return [outer, graph, submitted]


def fails_once(path: str) -> dict[str, Any]:
    """Fails on its first run (counted in ``path``), succeeds on the retry."""
    with open(path, "a") as f:
        f.write("run\n")
    with open(path) as f:
        runs = len(f.readlines())
    if runs == 1:
        raise RuntimeError("first run fails")
    return seen(runs)
