"""The Celery app of tests/test_runner_celery*.py: broker and backend from CTXRELAY_TEST_REDIS.

The tests import it afresh for each test (celery_support.imported_app): its tasks are
``shared=False``, so that a new import's app registers its own functions only, not the
ones an earlier import left in Celery's process-wide list of shared tasks (Celery 5.7
warns DuplicateTaskNameWarning about each of them).
"""

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


@app.task(name="seen", shared=False)
def seen(tag=None):
    return ps.seen(tag)


@app.task(name="set_then_seen", shared=False)
def set_then_seen(tag=None):
    return ps.set_then_seen(tag)


@app.task(name="fail", shared=False)
def fail(message):
    ps.fail(message)


@app.task(name="collect", shared=False)
def collect(results):
    """A chord body: what each header task saw, plus what the body itself sees."""
    return {"header": results, "body": ps.seen("body")}


@app.task(name="runs_counted", shared=False)
def runs_counted(path):
    return ps.runs_counted(path)


@app.task(name="gathered", shared=False)
def gathered(key, count, tag=None):
    """Wait until ``count`` tasks under ``key`` run at once, then report what each sees.

    For a gevent worker (tests/test_runner_celery_gevent.py): the wait polls Redis and
    sleeps, both of which yield to the other greenlets once Celery has monkey-patched;
    every task reads its values before the others are all running and again after a
    sleep, while they are.
    """
    import threading
    import time

    import redis
    from gevent.monkey import get_original

    client = redis.Redis.from_url(os.environ["CTXRELAY_TEST_REDIS"])
    before = ps.seen(tag)
    running = client.incr(key)
    deadline = time.monotonic() + 30
    while running < count and time.monotonic() < deadline:
        time.sleep(0.02)
        running = int(client.get(key))
    time.sleep(0.05)
    return {
        "before": before,
        "after": ps.seen(tag),
        "running": running,
        "greenlet": threading.get_ident(),  # gevent's, once patched
        "os_thread": get_original("threading", "get_native_id")(),
    }


if os.environ.get("CTXRELAY_TEST_OTEL_CELERY") == "1":
    # The worker side of tests/test_runner_celery_otel.py: OpenTelemetry's own Celery
    # instrumentation, on in the worker process (prefork children inherit its receivers).
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()
