"""Celery's gevent pool: tasks running at once in greenlets of one thread, and its start-up.

Read against Celery 5.7.0 (``celery/concurrency/gevent.py``, ``celery/__init__.py``
``maybe_patch_concurrency``) and gevent 26.9 / greenlet 3.5.  ``celery worker -P gevent``
monkey-patches (``gevent.monkey.patch_all()``) in its ``main()``, after the interpreter
started, so after ctxrelay's start-up activation ran; each task then runs in a greenlet of
its own (``gevent.pool.Pool.spawn``), all of them in the worker's one thread, and each
greenlet starts with an empty ``contextvars`` context (greenlet >= 1.0).  Celery sends
``task_prerun`` and ``task_postrun`` in the task's greenlet (``celery/app/trace.py``), so
the values and the OpenTelemetry context ctxrelay sets, and the tokens it resets them
with, stay in that greenlet; the receivers' ``(task id, threading.get_ident())`` key is
the greenlet's ident once ``threading`` is patched.

The sequential round (delay, apply_async, chain, group, chord, a failure, the next task)
runs for the gevent pool in tests/test_runner_celery.py beside the other pools.  Here: a
real Redis, real ``celery worker -P gevent -c 4`` subprocesses, bare first, then
activated (``CTXRELAY_ENABLED=1``, ``CTXRELAY_PROCESS_VARS``).
"""

from __future__ import annotations

import re
import uuid

import pytest

pytest.importorskip("celery")
pytest.importorskip("redis")
pytest.importorskip("gevent", reason="gevent is not installed (the frameworks extra)")

import ctxrelay
import process_support as ps
from celery_support import TIMEOUT, Worker

SUBMITTERS = 4


def _concurrent_round(app, tracer) -> dict:
    """Four submitters, each in a thread of its own with its own values and trace."""
    key = f"gathered-{uuid.uuid4().hex}"

    def submit(i: int) -> tuple:
        with tracer.start_as_current_span(f"submit-{i}") as span:
            result = app.gathered.apply_async((key, SUBMITTERS, i))
            context = span.get_span_context()
        return result, format(context.trace_id, "032x"), format(context.span_id, "016x")

    submitted = [ps.run_as((f"r-{i}", f"t-{i}", f"s-{i}"), submit, i) for i in range(SUBMITTERS)]
    out = {"tasks": []}
    for i, (result, trace_id, span_id) in enumerate(submitted):
        seen = result.get(TIMEOUT)
        out["tasks"].append({**seen, "i": i, "trace_id": trace_id, "span_id": span_id})
    ps.reset_all()
    out["next"] = app.seen.delay("next").get(TIMEOUT)
    try:
        app.fail.delay("boom").get(TIMEOUT)
    except Exception as exc:
        out["fail"] = (type(exc).__name__, str(exc))
    out["runs"] = int(app.app.backend.client.get(key))
    return out


def _one_thread_at_once(out: dict) -> None:
    tasks = out["tasks"]
    assert all(task["running"] == SUBMITTERS for task in tasks)  # all four ran at once
    assert out["runs"] == SUBMITTERS  # each exactly once
    assert len({task["before"]["pid"] for task in tasks}) == 1  # in one process
    assert len({task["os_thread"] for task in tasks}) == 1  # in one OS thread
    assert len({task["greenlet"] for task in tasks}) == SUBMITTERS  # in four greenlets


def test_gevent_tasks_at_once_each_see_their_own_submitter(
    app, redis, otlp, tracer, tmp_path
) -> None:
    otlp.clear()
    worker = Worker(redis, "gevent", otlp, False, tmp_path / "bare.log", concurrency=4)
    try:
        bare = _concurrent_round(app, tracer)
    finally:
        worker.stop()
    _one_thread_at_once(bare)
    for task in bare["tasks"]:
        for seen in (task["before"], task["after"]):
            assert (seen["request_id"], seen["tenant"], seen["secret"]) == ("-", "-", "-")
            assert seen["trace_id"] != task["trace_id"]
    assert otlp.wait_for(1, timeout=1) == []

    ctxrelay.instrument(process_vars=ps.DECLARED)
    log = tmp_path / "carried.log"
    worker = Worker(redis, "gevent", otlp, True, log, concurrency=4)
    try:
        out = _concurrent_round(app, tracer)
    finally:
        worker.stop()
    _one_thread_at_once(out)
    for task in out["tasks"]:
        i = task["i"]
        # Before the others all ran and after, while they did: its own submitter's
        # declared values and trace, never another's, never the undeclared SECRET.
        for seen in (task["before"], task["after"]):
            assert (seen["request_id"], seen["tenant"]) == (f"r-{i}", f"t-{i}"), task
            assert seen["secret"] == "-", task
            assert seen["trace_id"] == task["trace_id"], task
        assert task["before"]["span_id"] == task["after"]["span_id"]  # its own hop
    assert len({task["before"]["span_id"] for task in out["tasks"]}) == SUBMITTERS
    assert (out["next"]["request_id"], out["next"]["tenant"]) == ("-", "-")
    assert out["next"]["trace_id"] is None
    assert out["fail"] == bare["fail"] == ("ValueError", "boom")
    # Resetting in the greenlet that set: no "Failed to detach context" from OpenTelemetry.
    assert "Failed to detach" not in log.read_text()

    hops = otlp.wait_for(
        SUBMITTERS, where=lambda s: s["attributes"].get("ctxrelay.runner") == "celery"
    )
    gathered = {h["trace_id"]: h for h in hops if h["name"] == "celery gathered"}
    for task in out["tasks"]:
        hop = gathered[task["trace_id"]]
        assert hop["parent_id"] == task["span_id"]
        assert hop["span_id"] == task["after"]["span_id"]


def _warnings(text: str) -> set[str]:
    return set(re.findall(r"\b(\w+Warning)\b", text))


def test_gevent_worker_starts_and_stops_as_bare(app, redis, otlp, tracer, tmp_path) -> None:
    """Activation runs before Celery monkey-patches: no new warning, the same SIGTERM end.

    The OTLP exporter imports ``ssl``; imported at start-up, gevent would warn
    "Monkey-patching ssl after ssl has already been imported" (the start-up SDK imports
    an installed exporter with the first span instead).  The batch processor's schedule
    is longer than the test: the hop span can only arrive by the flush at the worker's
    end.
    """
    otlp.clear()
    ended = {}
    logs = {}
    for activated in (False, True):
        if activated:
            ctxrelay.instrument(process_vars=ps.DECLARED)
        log = tmp_path / f"worker-{int(activated)}.log"
        worker = Worker(
            redis, "gevent", otlp, activated, log, concurrency=4, OTEL_BSP_SCHEDULE_DELAY="600000"
        )
        try:
            with tracer.start_as_current_span("publish") as span:
                assert app.seen.delay("one").get(TIMEOUT)["tag"] == "one"
            trace_id = format(span.get_span_context().trace_id, "032x")
        finally:
            worker.stop()  # SIGTERM: Celery's warm shutdown
        ended[activated] = worker.proc.returncode
        logs[activated] = log.read_text()
        if not activated:
            assert otlp.wait_for(1, timeout=1) == []
    hops = otlp.wait_for(1, where=lambda s: s["name"] == "celery seen")
    assert [h["trace_id"] for h in hops if h["name"] == "celery seen"] == [trace_id]
    assert "ready." in logs[False] and "ready." in logs[True]
    assert _warnings(logs[True]) == _warnings(logs[False]), logs[True][:3000]
    assert "MonkeyPatchWarning" not in logs[True]
    assert ended[True] == ended[False] == 0
    assert "Warm shutdown" in logs[True]
