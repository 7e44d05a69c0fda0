"""Shared fixtures.

One real SDK ``TracerProvider`` is installed globally for the whole session (the global
provider can be set only once per process), exporting synchronously into an in-memory
exporter that each test starts empty.  Every test ends uninstrumented, whatever it did.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import ctxrelay

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
trace.set_tracer_provider(_PROVIDER)

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run big load tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("CTXRELAY_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_state():
    """Each test starts and ends uninstrumented with an empty span list."""
    ctxrelay.uninstrument()
    _EXPORTER.clear()
    yield
    ctxrelay.uninstrument()


@pytest.fixture
def provider() -> TracerProvider:
    return _PROVIDER


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return _EXPORTER


@pytest.fixture
def tracer() -> trace.Tracer:
    return trace.get_tracer("ctxrelay.tests")


@pytest.fixture
def instrumented():
    """ctxrelay on, spans recorded into the session exporter."""
    ctxrelay.instrument()
    yield
    ctxrelay.uninstrument()


@pytest.fixture
def no_internet(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Refuse (and record) any name lookup that is not the loopback interface.

    Gradio has telemetry, update checks and share tunnels: a test must neither reach
    the internet nor hang waiting for it.  Tests assert the returned list is empty.
    """
    attempts: list[Any] = []
    real = socket.getaddrinfo

    def local_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in _LOCAL_HOSTS:
            attempts.append(host)
            raise socket.gaierror(f"test: no internet (tried {host!r})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    return attempts


# --- the Celery runner tests (tests/test_runner_celery*.py) ----------------------------
# Imported when a test asks: redis_support, otlp_receiver and celery_support need what
# a light venv may lack (opentelemetry-proto, celery), and those modules skip without it.


@pytest.fixture(scope="module")
def redis() -> Iterator[str]:
    """The URL of a real ``redis-server`` on 127.0.0.1 (a free port), one a module."""
    from redis_support import redis_url

    yield from redis_url()


@pytest.fixture(scope="module")
def otlp() -> Iterator[Any]:
    """A real OTLP/HTTP receiver (otlp_receiver.Receiver), one a module."""
    from otlp_receiver import receiver

    yield from receiver()


@pytest.fixture
def app(redis: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """tests/celery_app.py imported against ``redis``; closed and the values reset after."""
    from celery_support import imported_app

    with imported_app(redis, monkeypatch) as module:
        yield module
