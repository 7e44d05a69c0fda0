"""gunicorn's gthread worker: requests run in a ``ThreadPoolExecutor``; covered by futures.

Read against gunicorn 27 ``gunicorn/workers/gthread.py``: the worker's main thread
accepts connections and calls ``self.tpool.submit(self.handle, conn)`` (``enqueue_req``),
so each request is one pool task, handed over from the worker's main thread.

A real gunicorn (``--worker-class gthread``) is started on 127.0.0.1 in a subprocess,
queried with httpx, and stopped.  ctxrelay is switched on in the worker by a
``post_fork`` hook in a gunicorn config file.  The application module sets a
ContextVar at import time (as griptape's ``EventBus.add_event_listener`` does at
module level), in the worker's main thread, and makes a span current there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("gunicorn.workers.gthread")

from helpers import free_port  # noqa: E402

TIMEOUT = 10
START_TIMEOUT = 30

APP = """
import contextvars
import json
import threading

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("gunicorn-app")

# Module level, so in the worker's main thread: the thread that hands requests over.
tenant = contextvars.ContextVar("tenant", default="<unset>")
tenant.set("worker-main")
WORKER_SPAN = tracer.start_span("worker-main")
otel_context.attach(trace.set_span_in_context(WORKER_SPAN))


def app(environ, start_response):
    if environ["PATH_INFO"] == "/spans":
        body = {
            "worker_span": WORKER_SPAN.get_span_context().span_id,
            "spans": [
                {
                    "name": s.name,
                    "id": s.context.span_id,
                    "parent": s.parent.span_id if s.parent else None,
                    "runner": s.attributes.get("ctxrelay.runner"),
                }
                for s in EXPORTER.get_finished_spans()
            ],
        }
    else:
        with tracer.start_as_current_span("handler"):
            body = {"seen": tenant.get(), "thread": threading.current_thread().name}
            tenant.set("set-by-a-request")  # must not reach the next request
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response("200 OK", headers)
    return [data]
"""

CONFIG_WITH_CTXRELAY = """
def post_fork(server, worker):
    import ctxrelay
    ctxrelay.instrument()
"""


class Gunicorn:
    """``gunicorn --worker-class gthread`` in a subprocess; always stopped."""

    def __init__(self, tmp_path: Path, with_ctxrelay: bool) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ctx_app.py").write_text(APP)
        config = tmp_path / "gunicorn_conf.py"
        config.write_text(CONFIG_WITH_CTXRELAY if with_ctxrelay else "")
        self.port = free_port()
        self.log = (tmp_path / "gunicorn.log").open("w+")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CTXRELAY_", "OTEL_"))}
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--worker-class", "gthread", "--workers", "1", "--threads", "2",
                "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "2",
                "--config", str(config), "--chdir", str(tmp_path),
                "ctx_app:app",
            ],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, client: httpx.Client) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                client.get(self.url + "/spans", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.log.seek(0)
        pytest.fail(f"gunicorn did not start:\n{self.log.read()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)
        self.log.close()


Json = dict[str, Any]


def three_requests(tmp_path: Path, with_ctxrelay: bool) -> tuple[list[Json], Json]:
    server = Gunicorn(tmp_path, with_ctxrelay)
    try:
        with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
            server.wait_ready(client)
            seen = [client.get(server.url + "/").json() for _ in range(3)]
            return seen, client.get(server.url + "/spans").json()
    finally:
        server.stop()


def test_requests_see_the_worker_main_threads_context(tmp_path: Path) -> None:
    lost, _ = three_requests(tmp_path / "without", with_ctxrelay=False)
    # Without ctxrelay the handler never sees the worker's value; a pool thread also
    # keeps what an earlier request set.
    assert {r["seen"] for r in lost} <= {"<unset>", "set-by-a-request"}
    assert all(r["thread"].startswith("ThreadPoolExecutor") for r in lost)  # the gthread path

    fixed, _ = three_requests(tmp_path / "with", with_ctxrelay=True)
    assert [r["seen"] for r in fixed] == ["worker-main"] * 3
    assert all(r["thread"].startswith("ThreadPoolExecutor") for r in fixed)


def test_hop_span_is_a_child_of_the_span_current_in_the_worker_main_thread(tmp_path: Path) -> None:
    _, exported = three_requests(tmp_path, with_ctxrelay=True)
    by_id = {s["id"]: s for s in exported["spans"]}
    handlers = [s for s in exported["spans"] if s["name"] == "handler"]
    assert len(handlers) == 3
    for handler in handlers:
        hop = by_id[handler["parent"]]
        assert hop["runner"] == "ThreadPoolExecutor"
        assert hop["name"] == "ThreadPoolExecutor handle"
        assert hop["parent"] == exported["worker_span"]
