"""Shared fixtures.

One real SDK ``TracerProvider`` is installed globally for the whole session (the global
provider can be set only once per process), exporting synchronously into an in-memory
exporter that each test starts empty.  Every test ends uninstrumented, whatever it did.
"""

from __future__ import annotations

import os

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
