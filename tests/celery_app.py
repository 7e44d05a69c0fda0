"""The Celery app of tests/test_runner_celery.py: broker and backend from CTXRELAY_TEST_REDIS."""

from __future__ import annotations

import os

from celery import Celery

import process_support as ps

app = Celery(
    "ctxrelay_tests",
    broker=os.environ.get("CTXRELAY_TEST_REDIS", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("CTXRELAY_TEST_REDIS", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


@app.task(name="seen")
def seen(tag=None):
    return ps.seen(tag)


@app.task(name="set_then_seen")
def set_then_seen(tag=None):
    return ps.set_then_seen(tag)


@app.task(name="fail")
def fail(message):
    ps.fail(message)


@app.task(name="collect")
def collect(results):
    """A chord body: what each header task saw, plus what the body itself sees."""
    return {"header": results, "body": ps.seen("body")}


@app.task(name="runs_counted")
def runs_counted(path):
    return ps.runs_counted(path)


if os.environ.get("CTXRELAY_TEST_OTEL_CELERY") == "1":
    # The worker side of tests/test_runner_celery_otel.py: OpenTelemetry's own Celery
    # instrumentation, on in the worker process (prefork children inherit its receivers).
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()
