"""A small app that loses its griptape event listeners in other threads, unless ctxrelay runs.

Griptape's ``EventBus`` keeps its listeners in a ``ContextVar``.  This app adds one
listener at import time, in the main thread, then calls the same handler nine ways,
as a real app does: directly, in a ``threading.Thread``, in a ``ThreadPoolExecutor``,
through asyncio's ``run_in_executor``, as two endpoints of a FastAPI app served by
uvicorn in a background thread, and as the sync, generator and async handlers of a
Gradio ``gr.Blocks`` app (``demo.launch()`` on 127.0.0.1, driven by ``gradio_client``:
each call is enqueued by ``POST /gradio_api/queue/join`` and run later by Gradio's
queue).  For each, it prints how many listeners the handler saw and whether the event
reached it.

Run it both ways (``ctxrelay demo`` and ``make demo`` do)::

    python -m ctxrelay.demo_app                                        # listeners lost
    OTEL_TRACES_EXPORTER=ctxrelay_tree ctxrelay run python -m ctxrelay.demo_app

The second run also prints the trace trees on stderr at exit (ctxrelay's tree
exporter): the ``⇢`` lines are the hand-overs to other threads.

It ships in the wheel so that ``ctxrelay demo`` works after a plain install; its
frameworks are the ``demo`` extra (``pip install 'ctxrelay[demo]'``).  The app does not
use ctxrelay: it only asks it whether it is on (importing the package activates
nothing).  It uses the OpenTelemetry API only (spans are no-ops unless an SDK is
configured).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import uvicorn
from attrs import define, field
from fastapi import FastAPI, Request
from griptape.events import BaseEvent, EventBus, EventListener
from opentelemetry import trace

# Before gradio is imported: no usage statistics, no calls to the Hugging Face hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

tracer = trace.get_tracer("ctxrelay.demo")


@define
class HandlerCalled(BaseEvent):
    handler: str = field(default="", kw_only=True)


_delivered: set[str] = set()
_delivered_lock = threading.Lock()


def on_event(event: BaseEvent) -> None:
    if isinstance(event, HandlerCalled):
        with _delivered_lock:
            _delivered.add(event.handler)


# At import time, in the main thread: where apps (and the Griptape docs) add listeners.
EventBus.add_event_listeners([EventListener(on_event=on_event)])


def handle(name: str) -> dict[str, Any]:
    """The application's handler: publish an event, report what it saw."""
    with tracer.start_as_current_span(f"handle {name}"):
        EventBus.publish_event(HandlerCalled(handler=name))
        thread = threading.current_thread().name
        return {"listeners": len(EventBus.event_listeners), "thread": thread}


# --- the web server, started like Gradio starts uvicorn ------------------------------
app = FastAPI()


@app.middleware("http")
async def server_span(request: Request, call_next: Callable[[Request], Any]) -> Any:
    # What an ASGI tracing middleware does: one span per request.
    name = f"http.server {request.method} {request.url.path}"
    thread = {"thread.name": threading.current_thread().name}
    with tracer.start_as_current_span(name, attributes=thread):
        return await call_next(request)


@app.get("/sync")
def sync_endpoint() -> dict[str, Any]:  # FastAPI runs a def endpoint in its thread pool
    return handle("FastAPI def endpoint")


@app.get("/async")
async def async_endpoint() -> dict[str, Any]:  # runs in the server thread's event loop
    return handle("FastAPI async endpoint")


class Server:
    """uvicorn in a background thread on a free loopback port; stopped by :meth:`stop`."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))  # bound before the thread starts: no port race
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.socket]},
            name="uvicorn-server",
            daemon=True,  # whatever happens, the demo never hangs at exit
        )

    def start(self) -> None:
        self.thread.start()
        for _ in range(1000):  # up to ~10 s on a loaded machine
            if self.server.started or not self.thread.is_alive():
                break
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


# --- the Gradio app: the same handler as a sync, a generator and an async handler -----
class GradioApp:
    """A ``gr.Blocks`` app launched on a free loopback port, driven by ``gradio_client``."""

    def __init__(self) -> None:
        import gradio as gr

        def sync_handler(text: str) -> str:
            return json.dumps(handle("Gradio sync handler"))

        def gen_handler(text: str) -> Any:
            yield json.dumps(handle("Gradio generator handler"))

        async def async_handler(text: str) -> str:
            return json.dumps(handle("Gradio async handler"))

        with gr.Blocks(analytics_enabled=False) as self.blocks:
            box_in, box_out = gr.Textbox(), gr.Textbox()
            for fn in (sync_handler, gen_handler, async_handler):
                gr.Button(fn.__name__).click(fn, box_in, box_out, api_name=fn.__name__)
        self.client: Any = None

    def start(self) -> None:
        import gradio_client

        with socket.socket() as probe:  # a free port (Gradio binds it itself)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.blocks.launch(
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,
            share=False,
            quiet=True,
            ssr_mode=False,
            inbrowser=False,
        )
        self.client = gradio_client.Client(self.blocks.local_url, verbose=False)

    def stop(self) -> None:
        self.blocks.close()

    def call(self, api_name: str) -> Callable[[str], dict[str, Any]]:
        def run(name: str) -> dict[str, Any]:
            if api_name == "/gen_handler":
                *_, last = self.client.submit("x", api_name=api_name)
                return json.loads(last)  # type: ignore[no-any-return]
            return json.loads(self.client.predict("x", api_name=api_name))  # type: ignore[no-any-return]

        return run


# --- the nine ways to run the handler -------------------------------------------------
def direct(name: str) -> dict[str, Any]:
    return handle(name)


def in_thread(name: str) -> dict[str, Any]:
    box: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: box.append(handle(name)), name="worker-1")
    thread.start()
    thread.join(10)
    return box[0]


def in_pool(name: str) -> dict[str, Any]:
    with ThreadPoolExecutor(2, thread_name_prefix="pool") as pool:
        return pool.submit(handle, name).result(10)


def in_executor(name: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(None, handle, name)

    return asyncio.run(main())


def over_http(server: Server, path: str) -> Callable[[str], dict[str, Any]]:
    def call(name: str) -> dict[str, Any]:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
            response = client.get(path)
            response.raise_for_status()
            return response.json()  # type: ignore[no-any-return]

    return call


def ctxrelay_state() -> str:
    try:
        import ctxrelay
    except ImportError:
        return "not installed"
    return "ON" if ctxrelay.is_instrumented() else "OFF"


def main() -> int:
    server = Server()
    server.start()
    gradio = GradioApp()
    gradio.start()
    try:
        cases: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
            ("direct call", direct),
            ("threading.Thread", in_thread),
            ("ThreadPoolExecutor", in_pool),
            ("asyncio run_in_executor", in_executor),
            ("FastAPI def endpoint", over_http(server, "/sync")),
            ("FastAPI async endpoint", over_http(server, "/async")),
            ("Gradio sync handler", gradio.call("/sync_handler")),
            ("Gradio generator handler", gradio.call("/gen_handler")),
            ("Gradio async handler", gradio.call("/async_handler")),
        ]
        state = ctxrelay_state()
        print(f"ctxrelay {state} · griptape EventBus: 1 listener added at import, in MainThread")
        print(f"  {'handler':<26}{'ran in thread':<26}{'listeners':<11}event")
        lost = 0
        # thread.name on the root, as a tracing middleware would: the tree names the
        # root's thread from it (the SDK records no thread of its own).
        root_thread = {"thread.name": threading.current_thread().name}
        with tracer.start_as_current_span("demo", attributes=root_thread):
            for name, run in cases:
                seen = run(name)
                delivered = name in _delivered
                lost += not delivered
                mark = "✓" if delivered else "✗"
                outcome = "delivered" if delivered else "LOST"
                print(f"{mark} {name:<26}{seen['thread']:<26}{seen['listeners']:<11}{outcome}")
    finally:
        gradio.stop()
        server.stop()
    if lost:
        print(
            f"result: {lost} of {len(cases)} handlers ran without the listener; "
            "their events were lost."
        )
    else:
        print(f"result: all {len(cases)} handlers saw the listener; every event was delivered.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
