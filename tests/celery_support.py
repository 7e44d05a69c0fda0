"""The Celery runner tests' real ``celery worker`` subprocess and the app they publish with.

Shared by tests/test_runner_celery.py, tests/test_runner_celery_gevent.py and
tests/test_runner_celery_otel.py; their ``redis``, ``otlp`` and ``app`` fixtures are in
tests/conftest.py.  The app is tests/celery_app.py, in the worker and in this process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

import process_support as ps
from activation_support import base_env
from otlp_receiver import Receiver

TESTS = Path(__file__).resolve().parent
CELERY = Path(sys.executable).parent / "celery"
TIMEOUT = 60


@contextmanager
def imported_app(redis: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """tests/celery_app.py, imported afresh against ``redis``; closed, and no value left, after.

    Never with OpenTelemetry's Celery instrumentation on at import (the worker side of
    tests/test_runner_celery_otel.py): a test turns it on in this process itself.
    """
    monkeypatch.setenv("CTXRELAY_TEST_REDIS", redis)
    monkeypatch.delenv("CTXRELAY_TEST_OTEL_CELERY", raising=False)
    sys.modules.pop("celery_app", None)
    import celery_app

    try:
        yield celery_app
    finally:
        celery_app.app.close()
        sys.modules.pop("celery_app", None)
        ps.reset_all()


class Worker:
    """``celery -A celery_app worker -P pool``, started until "ready.", its output in ``log``."""

    def __init__(
        self,
        redis: str,
        pool: str,
        otlp: Receiver,
        activated: bool,
        log: Path,
        concurrency: int = 1,
        **extra: str,
    ):
        env = base_env(
            otlp.env(),
            PYTHONPATH=str(TESTS),
            CTXRELAY_TEST_REDIS=redis,
            OTEL_SERVICE_NAME="celery-worker",
            CTXRELAY_PROCESS_VARS=ps.ENV_DECLARED,
            **extra,
        )
        if activated:
            env["CTXRELAY_ENABLED"] = "1"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(CELERY), "-A", "celery_app", "worker", "-P", pool, "-c", str(concurrency),
                 "--without-gossip", "--without-mingle", "--without-heartbeat",
                 "-l", "info", "-n", f"w-{pool}-{int(activated)}@%h"],
                cwd=TESTS, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while b"ready." not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"celery worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown, as a supervisor does
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
