"""Security: exported spans never carry ContextVar values, arguments or event payloads.

A random secret is put in a ContextVar, passed as the work's argument and as every
event payload; the work goes through every runner and every event bus in ctxrelay's
table (each scenario skips cleanly when its framework is not installed).  Then every
exported span, serialised whole (name, attributes, events, links, status, resource),
must not contain the secret, while the work itself did receive it.  The positive
control: with ``record_payloads=True`` (the opt-in) the secret does show up, so the
scan can see it when it is there.  Finally, attribute sizes are bounded even for a
10,000-character function name, thread name or event name.
"""

from __future__ import annotations

import _thread
import asyncio
import socket
import socketserver
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context
from multiprocessing.pool import ThreadPool
from typing import Any

import pytest

import ctxrelay
from ctxrelay import attributes as ctx_spans
from ctxrelay import table

SECRET = f"s3cr3t-{uuid.uuid4().hex}"
SECRET_VAR: ContextVar[str] = ContextVar("security_secret", default="EMPTY")


class Seen:
    """What the work saw: it must have received the secret, or the test proves nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, bool]] = []

    def work(self, arg: Any = None, *args: Any, **kwargs: Any) -> str:
        payloads = (arg, *args, *kwargs.values())
        self.calls.append((any(SECRET in repr(p) for p in payloads), SECRET_VAR.get() == SECRET))
        return "done"


# --- runners ---------------------------------------------------------------------------


def run_threads(seen: Seen) -> None:
    for thread in (
        threading.Thread(target=seen.work, args=(SECRET,)),
        threading.Timer(0, seen.work, args=(SECRET,)),
    ):
        thread.start()
        thread.join()


def run_raw_thread(seen: Seen) -> None:
    done = threading.Event()

    def body() -> None:
        try:
            seen.work(SECRET)
        finally:
            done.set()

    _thread.start_new_thread(body, ())
    assert done.wait(10)


def run_futures(seen: Seen) -> None:
    with ThreadPoolExecutor(2) as pool:
        pool.submit(seen.work, SECRET).result()
        pool.submit(seen.work, secret=SECRET).result()
        list(pool.map(seen.work, [SECRET]))


def run_asyncio(seen: Seen) -> None:
    async def main() -> None:
        await asyncio.get_running_loop().run_in_executor(None, seen.work, SECRET)
        await asyncio.to_thread(seen.work, SECRET, secret=SECRET)

    asyncio.run(main())


def run_thread_pool(seen: Seen) -> None:
    with ThreadPool(2) as pool:
        pool.apply_async(seen.work, (SECRET,), {"secret": SECRET}).get(30)
        pool.map(seen.work, [SECRET])
        list(pool.imap_unordered(seen.work, [SECRET]))


def run_socketserver(seen: Seen) -> None:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            seen.work(self.rfile.readline().decode())
            self.wfile.write(b"ok\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        server.daemon_threads = True
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        serving.start()
        try:
            with socket.create_connection(server.server_address, timeout=30) as client:
                client.sendall(SECRET.encode() + b"\n")
                assert client.makefile().readline() == "ok\n"
        finally:
            server.shutdown()
            serving.join()


def run_anyio(seen: Seen) -> None:
    pytest.importorskip("anyio")
    import anyio.to_thread

    async def main() -> None:
        await anyio.to_thread.run_sync(seen.work, SECRET)

    anyio.run(main)


def _generator(seen: Seen) -> Any:
    seen.work(SECRET)
    yield SECRET
    seen.work(SECRET)


def run_starlette(seen: Seen) -> None:
    pytest.importorskip("starlette")
    import anyio
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    async def main() -> None:
        await run_in_threadpool(seen.work, SECRET)
        async for _ in iterate_in_threadpool(_generator(seen)):
            pass

    anyio.run(main)


def run_gradio(seen: Seen) -> None:
    pytest.importorskip("gradio")
    import anyio
    from gradio.utils import SyncToAsyncIterator

    async def main() -> None:
        async for _ in SyncToAsyncIterator(_generator(seen), limiter=None):
            pass

    anyio.run(main)


# --- event buses -----------------------------------------------------------------------


def run_griptape(seen: Seen) -> None:
    pytest.importorskip("griptape")
    from attrs import define, field
    from griptape.events import BaseEvent, EventBus, EventListener

    @define
    class SecretEvent(BaseEvent):
        secret: str = field(kw_only=True)

    EventBus.add_event_listeners([EventListener(on_event=lambda event: seen.work(event.secret))])
    try:
        EventBus.publish_event(SecretEvent(secret=SECRET, meta={"secret": SECRET}))
    finally:
        EventBus.clear_event_listeners()


def run_blinker(seen: Seen) -> None:
    blinker = pytest.importorskip("blinker")
    signal = blinker.Signal("security")
    signal.connect(seen.work)
    signal.send(SECRET, secret=SECRET)


def run_django(seen: Seen) -> None:
    pytest.importorskip("django")
    from django.dispatch import Signal

    signal = Signal()
    signal.connect(seen.work, weak=False)
    signal.send(sender=SECRET, secret=SECRET)
    signal.send_robust(sender=SECRET, secret=SECRET)


def run_pyee(seen: Seen) -> None:
    pytest.importorskip("pyee")
    from pyee import EventEmitter
    from pyee.executor import ExecutorEventEmitter

    emitter = EventEmitter()
    emitter.on("security", seen.work)
    emitter.emit("security", SECRET, secret=SECRET)
    with ExecutorEventEmitter() as executor_emitter:
        executor_emitter.on("security", seen.work)
        executor_emitter.emit("security", SECRET)


def run_pubsub(seen: Seen) -> None:
    pytest.importorskip("pubsub")
    from pubsub import pub

    def listener(secret: str) -> None:  # pubsub checks the signature against the topic
        seen.work(secret)

    pub.subscribe(listener, "security")
    try:
        pub.sendMessage("security", secret=SECRET)
    finally:
        pub.unsubscribe(listener, "security")


def run_celery(seen: Seen) -> None:
    pytest.importorskip("celery")
    from celery.utils.dispatch import Signal

    signal = Signal(name="security")
    signal.connect(seen.work, weak=False)
    signal.send(sender=SECRET, secret=SECRET)


# --- process boundaries: the carrier crosses pickled; its task runs here, where the
# exporter is (tests/test_process_spans.py runs real worker processes) ---------------


def _across(runner_module: str, seen: Seen) -> None:
    import importlib
    import pickle

    from ctxrelay import carrier

    ctxrelay.instrument(process_vars=[SECRET_VAR])  # declared: its value crosses
    module = importlib.import_module(f"ctxrelay.runners.{runner_module}")
    task = ctxrelay.relay.carried_task(module.RUNNER, seen.work)  # what each runner ships
    shipped = pickle.loads(pickle.dumps(task.carrier))  # as a worker process gets it
    copy_context().run(lambda: (SECRET_VAR.set("EMPTY"), carrier.Task(seen.work, shipped)(SECRET)))


def run_process_pool(seen: Seen) -> None:
    _across("process_pool", seen)


def run_multiprocessing(seen: Seen) -> None:
    _across("multiprocessing", seen)


def run_dask(seen: Seen) -> None:
    pytest.importorskip("distributed")
    _across("dask", seen)


def run_celery_tasks(seen: Seen) -> None:
    pytest.importorskip("celery")
    from celery import Celery

    from ctxrelay.runners import celery as celery_runner

    ctxrelay.instrument(process_vars=[SECRET_VAR])
    app = Celery("security", broker="memory://", set_as_current=False)
    task = app.task(name="security")(seen.work)
    headers: dict[str, Any] = {}
    celery_runner.on_publish(sender="security", headers=headers)

    def worker() -> None:
        SECRET_VAR.set("EMPTY")
        task.push_request(**headers)
        try:
            celery_runner.on_prerun(task_id="1", task=task)
            seen.work(SECRET)
            celery_runner.on_postrun(task_id="1", retval="done", state="SUCCESS")
        finally:
            task.pop_request()

    copy_context().run(worker)


SCENARIOS: dict[str, Callable[[Seen], None]] = {
    "threading": run_threads,
    "_thread": run_raw_thread,
    "futures": run_futures,
    "asyncio": run_asyncio,
    "thread_pool": run_thread_pool,
    "socketserver": run_socketserver,
    "anyio": run_anyio,
    "starlette": run_starlette,
    "gradio": run_gradio,
    "griptape": run_griptape,
    "blinker": run_blinker,
    "django": run_django,
    "pyee": run_pyee,
    "pubsub": run_pubsub,
    "celery": run_celery,
    "process_pool": run_process_pool,
    "multiprocessing": run_multiprocessing,
    "celery_tasks": run_celery_tasks,
    "dask": run_dask,
}
#: buses whose payload record_payloads describes with the secret inside the bounded repr
#: (the positive control; griptape's payload is the event object, whose repr starts
#: with its id, timestamp and meta: the bound cuts it before the secret field)
BUSES = ("blinker", "django", "pyee", "pubsub", "celery")


def test_every_runner_and_bus_in_the_table_has_a_scenario() -> None:
    assert set(table.names()) <= set(SCENARIOS), sorted(set(table.names()) - set(SCENARIOS))


def _run(name: str, tracer: Any) -> Seen:
    seen = Seen()

    def origin() -> None:
        SECRET_VAR.set(SECRET)
        with tracer.start_as_current_span("origin"):
            SCENARIOS[name](seen)

    copy_context().run(origin)
    return seen


def _ours(exporter: Any) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "ctxrelay"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_secret_in_exported_spans(name: str, exporter, tracer) -> None:
    ctxrelay.instrument()
    seen = _run(name, tracer)
    assert seen.calls, "the work ran"
    assert all(got_arg for got_arg, _ in seen.calls), "the work received the secret argument"
    assert all(got_var for _, got_var in seen.calls), "and saw the secret ContextVar"
    assert _ours(exporter), "ctxrelay recorded spans for this runner or bus"
    for span in exporter.get_finished_spans():
        assert SECRET not in span.to_json(), span.to_json()


@pytest.mark.parametrize("name", BUSES)
def test_opted_in_payloads_are_recorded_so_the_scan_would_see_them(
    name: str, exporter, tracer
) -> None:
    ctxrelay.instrument(record_payloads=True)
    _run(name, tracer)
    assert any(SECRET in span.to_json() for span in _ours(exporter))
    # ...and only as the payload attribute of the dispatch span, bounded.
    for span in _ours(exporter):
        for key, value in span.attributes.items():
            if SECRET in str(value):
                assert key == ctx_spans.ATTR_PAYLOAD
                assert len(value) <= ctx_spans.MAX_ATTRIBUTE_LENGTH


# --- attribute sizes -------------------------------------------------------------------

HUGE = 10_000


def _huge_function() -> Callable[..., str]:
    def fn(*args: Any) -> str:
        return "done"

    fn.__qualname__ = "q" * HUGE
    fn.__name__ = "n" * HUGE
    fn.__module__ = "m" * HUGE
    return fn


def _assert_bounded(exporter: Any) -> None:
    ours = _ours(exporter)
    assert ours
    for span in ours:
        assert len(span.name) <= 2 * ctx_spans.MAX_ATTRIBUTE_LENGTH + 64, len(span.name)
        for key, value in span.attributes.items():
            if isinstance(value, str):
                assert len(value) <= ctx_spans.MAX_ATTRIBUTE_LENGTH, (key, len(value))


def test_a_10k_character_function_name_is_truncated(exporter, tracer) -> None:
    ctxrelay.instrument()
    fn = _huge_function()
    with tracer.start_as_current_span("origin"):
        thread = threading.Thread(target=fn)
        thread.start()
        thread.join()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(fn).result()
    _assert_bounded(exporter)
    (hop,) = [s for s in _ours(exporter) if s.name.startswith("ThreadPoolExecutor ")]
    assert len(hop.attributes[ctx_spans.CODE_FUNCTION_NAME]) == ctx_spans.MAX_ATTRIBUTE_LENGTH


def test_a_10k_character_thread_name_is_truncated(exporter, tracer) -> None:
    ctxrelay.instrument()
    origin_name = "o" * HUGE

    def origin() -> None:
        with tracer.start_as_current_span("origin"):
            thread = threading.Thread(target=lambda: None, name="t" * HUGE)
            thread.start()
            thread.join()
            with ThreadPoolExecutor(1, thread_name_prefix="p" * HUGE) as pool:
                pool.submit(lambda: None).result()

    starter = threading.Thread(target=origin, name=origin_name)
    starter.start()
    starter.join()
    _assert_bounded(exporter)


def test_a_listener_dispatch_in_a_10k_character_thread_is_truncated(exporter, tracer) -> None:
    from attrs import define
    from griptape.events import BaseEvent, EventBus, EventListener

    @define
    class Tick(BaseEvent):
        pass

    ctxrelay.instrument()

    def dispatch_here() -> None:
        with EventListener(on_event=lambda e: None), tracer.start_as_current_span("origin"):
            EventBus.publish_event(Tick())

    thread = threading.Thread(target=dispatch_here, name="d" * HUGE)
    thread.start()
    thread.join()
    assert any(s.name.startswith("griptape dispatch") for s in exporter.get_finished_spans())
    _assert_bounded(exporter)


def test_a_10k_character_event_and_listener_name_are_truncated(exporter, tracer) -> None:
    pytest.importorskip("pyee")
    from pyee import EventEmitter

    ctxrelay.instrument(record_payloads=True)
    emitter = EventEmitter()
    emitter.on("e" * HUGE, _huge_function())
    with tracer.start_as_current_span("origin"):
        emitter.emit("e" * HUGE, "x" * HUGE)
    _assert_bounded(exporter)
