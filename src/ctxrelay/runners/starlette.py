"""Starlette/FastAPI streaming: a sync iterator keeps one context for its whole life.

Read against starlette 1.10 ``concurrency.py`` (same shape since 0.13) and fastapi
0.165 ``routing.py``.

``iterate_in_threadpool(iterator)`` (``StreamingResponse`` with a sync iterator,
FastAPI's sync server-sent-event generators) runs each step as
``anyio.to_thread.run_sync(_next, iterator)``, each in a fresh copy of the response
task's context: a value the generator set before its first ``yield`` is gone at the
second.  ``iterate_in_threadpool`` itself is imported by name into
``starlette.responses`` and ``fastapi.routing`` (wrapping it would miss them), but it
looks up the module global ``_next`` at every step: that is wrapped, to run every step
of one iterator in one context (:func:`ctxrelay.iterators.step_in_own_context`).

Everything else Starlette hands to threads (``run_in_threadpool``: sync endpoints,
background tasks, file I/O) goes through ``anyio.to_thread.run_sync``, which copies per
call; the anyio runner records those hops.  A server in a background thread
(``uvicorn.Server(config).run`` as a thread's target) is covered by the thread patch.
"""

from __future__ import annotations

from typing import Any

from ctxrelay import attributes, iterators, spans
from ctxrelay.patching import Patch

NAME = "starlette"


def _the_iterator(iterator: Any) -> Any:
    return iterator


def _the_endpoint(*args: Any, function: Any = None, **kwargs: Any) -> Any:
    return function


# Each step's hop is named after the user's generator, not after ``_next``; FastAPI's
# sync endpoints run as ``partial(_run_sync_endpoint, function=endpoint, ...)`` (FastAPI
# 0.165 ``routing.py``; the helper lives in ``fastapi.telemetry._api``).
attributes.name_hops_after("starlette.concurrency._next", _the_iterator)
attributes.name_hops_after("fastapi.telemetry._api._run_sync_endpoint", _the_endpoint)
attributes.name_hops_after("fastapi.routing._run_sync_endpoint", _the_endpoint)


def _stop_is_normal(concurrency: Any) -> None:
    # ``_next`` turns the generator's StopIteration into starlette's own _StopIteration
    # (a StopIteration cannot leave a thread through anyio): the normal end of a stream.
    stop = getattr(concurrency, "_StopIteration", None)
    if isinstance(stop, type) and issubclass(stop, BaseException):
        spans.add_normal_end(stop)


PATCHES = (
    Patch(
        NAME,
        "starlette.concurrency",
        "_next",
        iterators.stepping_in_own_context,
        on_apply=_stop_is_normal,
    ),
)
