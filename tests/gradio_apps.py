"""A Gradio app with a request-scoped ContextVar, served for real, for the queue tests.

The app is what a user writes: an ASGI middleware sets ``REQUEST_ID`` from the
``x-request-id`` header (and notes it on the request's span), and three handlers (sync,
sync generator, async) report the id they see.  It is served two ways: mounted in a
FastAPI app under uvicorn (``gr.mount_gradio_app``) and by ``demo.launch()``.  FastAPI
>= 0.16x records a span per request itself once a tracer provider is set; those are the
request spans the handler hops must sit under.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import urllib.request
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from opentelemetry import trace

from asgi_servers import uvicorn_in_thread
from helpers import free_port

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
#: The attribute the middleware puts on the request's span.
CLIENT_ATTR = "test.request_id"
HANDLERS = ("sync_handler", "gen_handler", "async_handler")
STEPS = 2


class RequestIdMiddleware:
    """Pure ASGI: ``REQUEST_ID`` for the request's whole life, from its header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        rid = None
        if scope["type"] == "http":
            rid = dict(scope["headers"]).get(b"x-request-id")
        if rid is None:
            await self.app(scope, receive, send)
            return
        token = REQUEST_ID.set(rid.decode())
        trace.get_current_span().set_attribute(CLIENT_ATTR, rid.decode())
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)


def make_demo(tracer: trace.Tracer) -> Any:
    import gradio as gr

    def sync_handler(text: str) -> str:
        with tracer.start_as_current_span(
            "sync handler", attributes={"seen": f"{REQUEST_ID.get()}"}
        ):
            return f"{text}={REQUEST_ID.get()}"

    def gen_handler(text: str) -> Iterator[str]:
        for _ in range(STEPS):
            with tracer.start_as_current_span(
                "gen handler", attributes={"seen": f"{REQUEST_ID.get()}"}
            ):
                pass
            yield f"{text}={REQUEST_ID.get()}"

    async def async_handler(text: str) -> str:
        with tracer.start_as_current_span(
            "async handler", attributes={"seen": f"{REQUEST_ID.get()}"}
        ):
            return f"{text}={REQUEST_ID.get()}"

    with gr.Blocks(analytics_enabled=False) as demo:
        box_in, box_out = gr.Textbox(), gr.Textbox()
        for handler in (sync_handler, gen_handler, async_handler):
            gr.Button(handler.__name__).click(handler, box_in, box_out, api_name=handler.__name__)
    return demo


@contextlib.contextmanager
def mounted(tracer: trace.Tracer) -> Iterator[str]:
    """``gr.mount_gradio_app`` on a FastAPI app with the middleware, under uvicorn."""
    import gradio as gr
    from fastapi import FastAPI

    app = FastAPI()
    app.add_middleware(RequestIdMiddleware)
    app = gr.mount_gradio_app(app, make_demo(tracer), path="/ui")
    with uvicorn_in_thread(app, name="uvicorn-gradio", lifespan="auto") as url:
        yield f"{url}/ui/"


def launch_local(demo: Any, app_kwargs: dict[str, Any] | None = None) -> str:
    """``demo.launch()`` on a free loopback port, quiet: no share link, no browser, no SSR
    server, the calling thread not blocked.  Returns the app's URL; ``demo.close()`` stops it.
    """
    demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        share=False,
        quiet=True,
        ssr_mode=False,
        inbrowser=False,
        app_kwargs=app_kwargs or {},
    )
    return str(demo.local_url)


@contextlib.contextmanager
def launched(tracer: trace.Tracer) -> Iterator[str]:
    """Plain ``demo.launch()``, the middleware passed through ``app_kwargs``."""
    from starlette.middleware import Middleware

    demo = make_demo(tracer)
    url = launch_local(demo, {"middleware": [Middleware(RequestIdMiddleware)]})
    try:
        yield url
    finally:
        demo.close()


def drive(url: str, client_id: str) -> dict[str, list[str]]:
    """One client, its own ``x-request-id``: each handler's outputs."""
    import gradio_client

    client = gradio_client.Client(
        url, verbose=False, download_files=False, headers={"x-request-id": client_id}
    )
    return {
        "sync_handler": [client.predict(client_id, api_name="/sync_handler")],
        "gen_handler": list(client.submit(client_id, api_name="/gen_handler"))[-STEPS:],
        "async_handler": [client.predict(client_id, api_name="/async_handler")],
    }


def drive_two(url: str) -> dict[str, dict[str, list[str]]]:
    """Two clients at once, ids ``alice`` and ``bob``."""
    results: dict[str, dict[str, list[str]]] = {}

    def one(client_id: str) -> None:
        results[client_id] = drive(url, client_id)

    threads = [threading.Thread(target=one, args=(cid,)) for cid in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def load_page(url: str) -> int:
    """GET the page and every asset it names, as a browser would; the number of assets."""
    with urllib.request.urlopen(url, timeout=30) as response:
        html = response.read().decode()
    assets = sorted(set(re.findall(r"""(?:src|href)="([^"]*assets/[^"]+)\"""", html)))
    base = url.split("://", 1)[1].split("/", 1)[0]
    for asset in assets:
        if asset.startswith("/"):
            asset = f"http://{base}{asset}"
        elif not asset.startswith("http"):
            asset = url.rstrip("/") + "/" + asset.lstrip("./")
        with urllib.request.urlopen(asset, timeout=30) as response:
            response.read()
    return len(assets)
