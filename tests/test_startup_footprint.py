"""What the start-up activation leaves loaded, and that the deferred imports behind it
change nothing an application can see (ctxrelay.lean_imports).  Real subprocesses: bare,
then under CTXRELAY_ENABLED=1, side by side."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from activation_support import base_env, run

#: Modules that only helpers ctxrelay never calls need (wrapt's async helpers, wrapt's
#: entry-point discovery, the SDK's off-by-default resource detectors).
NOT_AT_STARTUP = ("asyncio", "importlib.metadata", "email", "ssl", "zipfile", "psutil")

#: wrapt 2.x's package imports asyncio (wrapt.synchronization); 1.17 does not.
WRAPT_IMPORTS_ASYNCIO = importlib.util.find_spec("wrapt.synchronization") is not None

PROBE = """\
import json, sys, threading
print("MODULES " + json.dumps(sorted(sys.modules)), flush=True)
print("THREADS " + str(threading.active_count()), flush=True)
"""


def _modules(tmp_path: Path, enabled: bool, exporter: str) -> tuple[set[str], int]:
    (tmp_path / "probe.py").write_text(PROBE)
    env = base_env(CTXRELAY_ENABLED="1" if enabled else "0", OTEL_TRACES_EXPORTER=exporter)
    result = run(["python", "probe.py"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    return set(json.loads(lines["MODULES"])), int(lines["THREADS"])


@pytest.mark.parametrize("exporter", ["none", "ctxrelay_tree"])
def test_activation_imports_no_module_only_unused_helpers_need(
    tmp_path: Path, exporter: str
) -> None:
    bare, bare_threads = _modules(tmp_path, enabled=False, exporter=exporter)
    assert not bare & set(NOT_AT_STARTUP)
    active, active_threads = _modules(tmp_path, enabled=True, exporter=exporter)
    assert "ctxrelay.patching" in active and "wrapt" in active  # it is active
    assert "opentelemetry.sdk.trace" in active
    assert not active & set(NOT_AT_STARTUP), sorted(active & set(NOT_AT_STARTUP))
    # No thread left behind by the set-up (the SDK's resource detection runs in a pool).
    assert active_threads == bare_threads == 1


# The application uses what was deferred: wrapt's helpers that need asyncio and
# importlib.metadata, the SDK's process detector (psutil), and its own `import asyncio`.
USE = """\
import json, sys
import wrapt
out = {"asyncio_loaded_before": "asyncio" in sys.modules}
from unittest import mock  # (it imports asyncio)
# A test double patched in through the dependency's own name for a deferred module,
# before anything used it (mock.patch sets the attribute on what that name holds).
import opentelemetry.sdk.resources as resources
with mock.patch("opentelemetry.sdk.resources.socket.gethostname", return_value="double"):
    out["patched_host"] = resources._HostResourceDetector().detect().attributes["host.name"]
import socket
out["host_restored"] = socket.gethostname() != "double"

@wrapt.synchronized
def locked():
    return "locked"

async def coro():
    return 21 * 2

out["sync"] = locked()
wrapt.discover_post_import_hooks("no-such-group")
if hasattr(wrapt, "async_to_sync"):  # wrapt 2.x: the helpers that need what was deferred
    from wrapt import synchronization, importer
    out["async_to_sync"] = wrapt.async_to_sync(coro)()
    out["same_asyncio"] = synchronization.asyncio is sys.modules["asyncio"]
    out["same_metadata"] = importer.importlib.metadata is sys.modules["importlib.metadata"]
else:  # wrapt 1.17 imports neither module
    out["async_to_sync"], out["same_asyncio"], out["same_metadata"] = 42, True, True
import asyncio
out["app_asyncio"] = asyncio.run(coro())
try:
    from opentelemetry.sdk.resources import ProcessResourceDetector
    out["process_attrs"] = sorted(ProcessResourceDetector().detect().attributes)[:3]
except ImportError as exc:
    out["process_attrs"] = type(exc).__name__
print("OUT " + json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("enabled", [False, True], ids=["bare", "activated"])
def test_deferred_modules_work_when_used(tmp_path: Path, enabled: bool) -> None:
    (tmp_path / "use.py").write_text(USE)
    env = base_env(CTXRELAY_ENABLED="1" if enabled else "0")
    result = run(["python", "use.py"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("OUT ")]
    out = json.loads(line[4:])
    assert out["sync"] == "locked"
    assert out["patched_host"] == "double" and out["host_restored"]
    assert out["async_to_sync"] == out["app_asyncio"] == 42
    assert out["same_asyncio"] and out["same_metadata"]
    if isinstance(out["process_attrs"], list):
        assert out["process_attrs"], out
    # Bare, wrapt 2.x imports asyncio itself; activated, it is not loaded until used.
    assert out["asyncio_loaded_before"] is (not enabled and WRAPT_IMPORTS_ASYNCIO)


@pytest.mark.skipif(not WRAPT_IMPORTS_ASYNCIO, reason="wrapt 1.17 imports no asyncio")
def test_lean_import_in_process_is_the_plain_module() -> None:
    """Differential, in a fresh interpreter: the module and its classes are the ones a
    plain ``import wrapt`` gives, and ``builtins.__import__`` is put back."""
    code = (
        "import builtins, sys\n"
        "original = builtins.__import__\n"
        "from ctxrelay import lean_imports\n"
        "w = lean_imports.load('wrapt', lean_imports.WRAPT)\n"
        "import wrapt\n"
        "assert w is wrapt and builtins.__import__ is original\n"
        "assert 'asyncio' not in sys.modules, 'asyncio loaded'\n"
        "assert lean_imports.load('wrapt', lean_imports.WRAPT) is wrapt\n"
        "import wrapt.synchronization as s\n"
        "assert 'imported on first use' in repr(s.asyncio)\n"
        "assert s.asyncio.iscoroutinefunction is not None\n"
        "import asyncio\n"
        "assert s.asyncio is asyncio\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
