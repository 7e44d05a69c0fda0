"""tornado ``IOLoop.run_in_executor`` and ``@run_on_executor``: covered by existing patches.

Read against tornado 6.x: ``IOLoop.run_in_executor`` on the asyncio-backed loop calls
``asyncio_loop.run_in_executor`` (the asyncio entry, runner ``run_in_executor``), and
``@run_on_executor`` calls ``self.executor.submit`` (the futures entry, runner
``ThreadPoolExecutor``).  No tornado-specific patch is needed; these tests hold that.

A real tornado ``HTTPServer`` on 127.0.0.1 with an unused port, queried by an httpx
client: each request handler sets its own tenant, then hands work to a thread.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import ctxrelay
from ctxrelay import attributes
from helpers import parent_of, spans_named

httpx = pytest.importorskip("httpx")
tornado_web = pytest.importorskip("tornado.web")
from tornado.concurrent import run_on_executor  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.ioloop import IOLoop  # noqa: E402
from tornado.testing import bind_unused_port  # noqa: E402

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("test_tornado", default="<unset>")

TIMEOUT = 10


def make_work(tracer: Any) -> Callable[[], str]:
    def work() -> str:
        """Runs in a pool thread: report the tenant, then dirty the thread's context."""
        with tracer.start_as_current_span("work"):
            seen = tenant.get()
            tenant.set("dirty")
            return seen

    return work


def make_app(tracer: Any, executor: ThreadPoolExecutor) -> Any:
    work = make_work(tracer)

    class InExecutor(tornado_web.RequestHandler):
        async def get(self) -> None:
            name = self.get_argument("tenant", None)
            if name is not None:
                tenant.set(name)
            with tracer.start_as_current_span("handler"):
                seen = await IOLoop.current().run_in_executor(None, work)
            self.write({"seen": seen})

    class OnExecutor(tornado_web.RequestHandler):
        def initialize(self) -> None:
            self.executor = executor  # where @run_on_executor looks by default

        @run_on_executor
        def blocking(self) -> str:
            return work()

        async def get(self) -> None:
            name = self.get_argument("tenant", None)
            if name is not None:
                tenant.set(name)
            with tracer.start_as_current_span("handler"):
                seen = await self.blocking()
            self.write({"seen": seen})

    return tornado_web.Application([(r"/in_executor", InExecutor), (r"/on_executor", OnExecutor)])


def query(tracer: Any, path: str) -> list[str]:
    """Serve, then send A and B at once, then one request that sets nothing."""

    async def scenario() -> list[str]:
        executor = ThreadPoolExecutor(2)
        sock, port = bind_unused_port()
        server = HTTPServer(make_app(tracer, executor))
        server.add_sockets([sock])
        url = f"http://127.0.0.1:{port}{path}"
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT) as client:
                both = await asyncio.gather(
                    client.get(url, params={"tenant": "A"}), client.get(url, params={"tenant": "B"})
                )
                last = await client.get(url)
            return [r.json()["seen"] for r in (*both, last)]
        finally:
            server.stop()
            await server.close_all_connections()
            executor.shutdown(wait=True)

    return asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))


@pytest.mark.parametrize("path", ["/in_executor", "/on_executor"])
def test_executor_work_sees_the_request_handlers_context(path: str, tracer: Any) -> None:
    # Without ctxrelay the work never sees its request's tenant; worse, a pool thread
    # keeps what earlier work set, so a later request may see "dirty" (a leak).
    lost = query(tracer, path)
    assert set(lost) <= {"<unset>", "dirty"}

    ctxrelay.instrument(spans=False)
    # Each request's own value; the last request set nothing and sees nothing, though
    # the same pool threads ran (and dirtied) the earlier requests' work.
    assert query(tracer, path) == ["A", "B", "<unset>"]


@pytest.mark.parametrize(
    ("path", "runner"),
    [("/in_executor", "run_in_executor"), ("/on_executor", "ThreadPoolExecutor")],
)
def test_hop_span_is_a_child_of_the_handlers_span(
    path: str, runner: str, exporter: Any, tracer: Any
) -> None:
    ctxrelay.instrument()
    query(tracer, path)

    works = spans_named(exporter, "work")
    assert len(works) == 3
    for work in works:
        hop = parent_of(work, exporter)
        assert hop is not None and hop.attributes[attributes.ATTR_RUNNER] == runner
        handler = parent_of(hop, exporter)
        assert handler is not None and handler.name == "handler"
    assert len({w.context.trace_id for w in works}) == 3  # one trace per request
