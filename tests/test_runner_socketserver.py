"""Thread-per-request servers: ``http.server.ThreadingHTTPServer`` and Flask on werkzeug's
threaded development server (both ``socketserver.ThreadingMixIn``).

Real servers on 127.0.0.1 (port 0: the OS picks a free one), ``serve_forever`` in a
thread started by the test, real HTTP requests with ``urllib`` (stdlib only, so the
``http.server`` cases run on every supported Python; the Flask cases need Flask).
Each request handler reports the tenant it sees on entry; request A then sets its own
tenant and holds until request B has run, so B would see A's value if contexts were
shared.
"""

from __future__ import annotations

import contextvars
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

import ctxrelay
from ctxrelay import attributes
from helpers import baseline, parent_of, spans_named, wait_for_spans

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("test_ss_tenant", default="<unset>")

TIMEOUT = 10


class Gates:
    """Lets request A hold (with its own value set) while request B runs."""

    def __init__(self) -> None:
        self.a_has_set = threading.Event()
        self.b_done = threading.Event()


def handle(gates: Gates, set_to: str | None, tracer: Any) -> dict[str, str]:
    """The body of both servers' handler: what a request sees, and what it keeps."""
    with tracer.start_as_current_span("handler"):
        seen = tenant.get()
        if set_to is None:
            return {"seen": seen}
        tenant.set(set_to)
        if set_to == "A":
            gates.a_has_set.set()
            gates.b_done.wait(TIMEOUT)
        return {"seen": seen, "after": tenant.get()}


def make_http_server(gates: Gates, tracer: Any) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            query = parse_qs(urlparse(self.path).query)
            body = json.dumps(handle(gates, query.get("set", [None])[0], tracer)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def make_flask_server(gates: Gates, tracer: Any) -> Any:
    flask = pytest.importorskip("flask")
    werkzeug_serving = pytest.importorskip("werkzeug.serving")
    app = flask.Flask(__name__)

    @app.get("/")
    def index() -> Any:
        return flask.jsonify(handle(gates, flask.request.args.get("set"), tracer))

    return werkzeug_serving.make_server("127.0.0.1", 0, app, threaded=True)


SERVERS: dict[str, Callable[[Gates, Any], Any]] = {
    "http.server": make_http_server,
    "flask": make_flask_server,
}


# No proxy, whatever the environment says: the servers are on 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with _opener.open(url + query, timeout=TIMEOUT) as response:
        return json.loads(response.read())


@contextmanager
def serving(server: Any) -> Iterator[str]:
    """``serve_forever`` in a thread started here; always shut down and joined."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="server-thread"
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def two_overlapping_requests(make: Callable[[Gates, Any], Any], tracer: Any) -> dict[str, Any]:
    """Start the server from a context holding tenant=starter; A holds while B runs."""

    def scenario() -> dict[str, Any]:
        tenant.set("starter")
        gates = Gates()
        results: dict[str, Any] = {}
        with serving(make(gates, tracer)) as url:

            def request_a() -> None:
                results["A"] = get(url, set="A")

            a = threading.Thread(target=request_a)
            a.start()
            try:
                assert gates.a_has_set.wait(TIMEOUT)
                results["B"] = get(url, set="B")
                results["C"] = get(url)
            finally:
                gates.b_done.set()
                a.join(TIMEOUT)
        return results

    return contextvars.copy_context().run(scenario)


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_request_threads_see_the_context_of_the_thread_that_started_the_server(
    kind: str, tracer: Any
) -> None:
    lost = two_overlapping_requests(SERVERS[kind], tracer)
    # 3.14 with the flag on: every thread copies its starter's context at start(), so
    # the server thread and its request threads see the starter's value without ctxrelay.
    unset = baseline("<unset>", "starter")
    assert lost == {
        "A": {"seen": unset, "after": "A"},
        "B": {"seen": unset, "after": "B"},
        "C": {"seen": unset},
    }

    ctxrelay.instrument(spans=False)
    fixed = two_overlapping_requests(SERVERS[kind], tracer)
    # B runs while A holds its own value: B starts from the starter's value, not A's,
    # and A's value is still its own after B set another.
    assert fixed == {
        "A": {"seen": "starter", "after": "A"},
        "B": {"seen": "starter", "after": "B"},
        "C": {"seen": "starter"},
    }


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_request_hop_is_a_child_of_the_span_current_in_the_server_thread(
    kind: str, exporter: Any, tracer: Any
) -> None:
    ctxrelay.instrument()

    def scenario() -> None:
        with ExitStack() as stack:
            with tracer.start_as_current_span("startup"):
                url = stack.enter_context(serving(SERVERS[kind](Gates(), tracer)))
            assert get(url) == {"seen": "<unset>"}

    contextvars.copy_context().run(scenario)

    # ThreadingHTTPServer's request threads are daemons that server_close() does not
    # join: the response can arrive before the request thread has ended its hop span.
    (hop,) = wait_for_spans(exporter, "socketserver ")
    assert hop.name == "socketserver process_request_thread"
    assert hop.attributes[attributes.ATTR_RUNNER] == "socketserver"
    assert hop.attributes[attributes.ATTR_ORIGIN_THREAD_NAME] == "server-thread"
    # The span current at hand-over, in the serve_forever thread, is that thread's
    # own hop span, itself a child of the span that started the server.
    server_hop = parent_of(hop, exporter)
    assert server_hop is not None and server_hop.attributes[attributes.ATTR_RUNNER] == "Thread"
    assert server_hop.attributes[attributes.CODE_FUNCTION_NAME].endswith("serve_forever")
    startup = parent_of(server_hop, exporter)
    assert startup is not None and startup.name == "startup"
    (handler,) = spans_named(exporter, "handler")
    assert handler.parent is not None and handler.parent.span_id == hop.context.span_id


def test_excluding_the_entry_keeps_propagation_and_names_the_hop_thread(
    exporter: Any, tracer: Any
) -> None:
    ctxrelay.instrument(exclude=["socketserver"])

    def scenario() -> None:
        tenant.set("starter")
        with ExitStack() as stack:
            with tracer.start_as_current_span("startup"):
                url = stack.enter_context(serving(make_http_server(Gates(), tracer)))
            assert get(url) == {"seen": "starter"}

    contextvars.copy_context().run(scenario)
    assert len(wait_for_spans(exporter, "Thread process_request_thread")) == 1
    assert spans_named(exporter, "socketserver") == []
