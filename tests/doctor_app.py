"""The app the doctor tests run in a subprocess: one of each thing the doctor reports.

* a raw ``_thread.start_new_thread`` thread (MARK:raw);
* a thread started inside a request span, living ~0.8 s (MARK:pinned), and a daemon
  thread still running at exit (MARK:daemon);
* pool tasks handed over with no active span (MARK:no-span);
* a foreign thread made by C code (``pthread_create`` through ctypes) that calls
  ``threading.current_thread()`` (MARK:foreign);
* an asyncio background task created inside a request span that hands work to a pool
  ~1.2 s after the request ended (MARK:late);
* a pool task handed over inside a request span that waits ~0.9 s in the queue of a busy
  one-worker pool: it starts after the request ended (MARK:queued);
* with APP_INSTRUMENT=1, a thread started before ``ctxrelay.instrument()`` (MARK:early);
* two griptape ``EventBus`` dispatches, one inside a span, one outside (if griptape is
  installed).

A ContextVar holds a planted secret the whole time: the report must never show it.
Exits with status 3 (APP_EXIT overrides), so the tests can check it is passed through.
"""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import ctypes
import ctypes.util
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace

SECRET = "s3cr3t-doctor-value-4711"
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
request_id.set(SECRET)

stop_early = threading.Event()


def early_worker() -> None:
    stop_early.wait(10)  # MARK:early-now


if os.environ.get("APP_INSTRUMENT") == "1":
    from opentelemetry.sdk.trace import TracerProvider

    early = threading.Thread(target=early_worker, name="early")
    early.start()  # MARK:early
    trace.set_tracer_provider(TracerProvider())
    import ctxrelay

    ctxrelay.instrument()

tracer = trace.get_tracer("doctor-app")


def raw_work(done: threading.Event) -> None:
    done.set()


def hold(seconds: float) -> None:
    time.sleep(seconds)


def noop() -> str:
    return "ok"


def enrich() -> str:
    return "enriched"


def export() -> str:
    return "exported"


def busy(request_over: threading.Event) -> None:
    request_over.wait(10)
    time.sleep(0.9)


def foreign_thread() -> None:
    """A thread created by C code: Python first sees it through current_thread()."""
    libc = ctypes.CDLL(ctypes.util.find_library("pthread") or ctypes.util.find_library("c"))
    seen: list[str] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)

    def from_c(_: int) -> int:
        seen.append(threading.current_thread().name)  # MARK:foreign
        return 0

    callback = callback_type(from_c)
    thread_id = ctypes.c_ulong()
    libc.pthread_create(ctypes.byref(thread_id), None, callback, None)
    libc.pthread_join(thread_id, None)
    assert seen, "the C thread ran"


async def background(pool: ThreadPoolExecutor) -> str:
    await asyncio.sleep(1.2)  # the request span has ended by now
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, enrich)  # MARK:late


async def handle_request(pool: ThreadPoolExecutor) -> asyncio.Task[str]:
    with tracer.start_as_current_span("GET /orders"):
        # Created inside the request: the task keeps the request's context for its life.
        return asyncio.create_task(background(pool))


async def serve(pool: ThreadPoolExecutor) -> None:
    task = await handle_request(pool)
    assert await task == "enriched"


def publish_events() -> None:
    try:
        from attrs import define
        from griptape.events import BaseEvent, EventBus, EventListener
    except ImportError:  # not in this environment: no bus row in the report
        return

    @define
    class Ping(BaseEvent):
        pass

    EventBus.add_event_listeners([EventListener(lambda event: None)])
    try:
        EventBus.publish_event(Ping())  # outside any span: a root dispatch span
        with tracer.start_as_current_span("agent run"):
            EventBus.publish_event(Ping())
    finally:
        EventBus.clear_event_listeners()


def main() -> int:
    one_worker = ThreadPoolExecutor(1)
    request_over = threading.Event()
    with tracer.start_as_current_span("GET /export"):
        one_worker.submit(busy, request_over)
        exported = one_worker.submit(export)  # MARK:queued
    request_over.set()  # the request has answered; its export waits behind busy()

    publish_events()
    done = threading.Event()
    _thread.start_new_thread(raw_work, (done,))  # MARK:raw
    assert done.wait(10)

    with tracer.start_as_current_span("GET /report"):
        poller = threading.Thread(target=hold, args=(0.8,), name="poller")
        poller.start()  # MARK:pinned
        daemon = threading.Thread(target=hold, args=(30,), name="watcher", daemon=True)
        daemon.start()  # MARK:daemon

    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            pool.submit(noop).result()  # MARK:no-span
        foreign_thread()
        asyncio.run(serve(pool))
    poller.join()
    assert exported.result() == "exported"
    one_worker.shutdown()
    stop_early.set()
    return int(os.environ.get("APP_EXIT", "3"))


if __name__ == "__main__":
    status = main()
    print(f"doctor loaded: {'ctxrelay.doctor' in sys.modules}", flush=True)
    sys.exit(status)
