"""Real ASGI servers for the runner tests: uvicorn in a background thread, as Gradio does.

Starlette's ``TestClient`` is not used on purpose: its portal copies the caller's
context into the app, which hides exactly the loss these tests are about.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from helpers import free_port

#: Bound for every wait on a server (start, stop); never reached when things work.
SERVER_TIMEOUT_S = 15.0


@contextlib.contextmanager
def uvicorn_in_thread(
    app: Any, *, name: str = "uvicorn-test-server", lifespan: str = "off"
) -> Iterator[str]:
    """Serve ``app`` from ``uvicorn.Server(config).run`` in a new thread named ``name``;
    yield its URL (``http://127.0.0.1:<port>``, no trailing slash).

    The thread is started by the caller's thread, so it inherits (with ctxrelay) the
    caller's context at this moment, like ``demo.launch()`` in Gradio.  ``lifespan`` is
    uvicorn's setting ("auto" for an app that needs its start-up events, as a mounted
    Gradio app does).
    """
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(SERVER_TIMEOUT_S)
        assert not thread.is_alive(), "uvicorn did not stop"
