"""``Thread.start()`` failing ("can't start new thread"), bare and instrumented.

The failure is real: in a subprocess, the address space is limited to a little more than
the process already maps and the thread stack size asked for is larger than that, so
the OS refuses the thread.  Compared with the same start without ctxrelay: the
exception, ``threading.enumerate()``, what ``join()`` says, and that the Thread object
the application still holds keeps nothing of the caller's context alive.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import BASELINE_THREAD_INHERITS, baseline

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc")

_APP = textwrap.dedent(
    """
    import contextvars, gc, json, resource, sys, threading, weakref
    import ctxrelay
    mode = sys.argv[1]
    if mode != "bare":
        ctxrelay.instrument(spans=mode == "spans")

    var = contextvars.ContextVar("v", default="EMPTY")

    class Payload:
        pass

    def start_refused(thread):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * resource.getpagesize()
        threading.stack_size(1 << 30)  # 1 GiB stack ...
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (256 << 20), hard))  # ... 256 MiB left
        try:
            thread.start()
        except RuntimeError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            threading.stack_size(0)
        thread.join()
        return "started"

    def scenario():
        payload = Payload()
        var.set(payload)
        ref = weakref.ref(payload)
        del payload
        thread = threading.Thread(target=lambda: None, name="refused")
        return thread, ref, start_refused(thread)

    thread, ref, outcome = contextvars.copy_context().run(scenario)
    gc.collect()
    seen = []
    var.set("again")
    retried = threading.Thread(target=lambda: seen.append(var.get()))
    retried.start()
    retried.join()
    try:
        thread.join()
        joined = "joined"
    except RuntimeError as exc:
        joined = str(exc)
    print(json.dumps({
        "outcome": outcome,
        "alive": thread.is_alive(),
        "ident": thread.ident,
        "enumerate": sorted(t.name for t in threading.enumerate()),
        "join": joined,
        "started_event": type(thread.__dict__.get("_started")).__name__,
        "freed while the Thread is held": ref() is None,
        "retried saw": seen,
    }))
    """
)


def _run(mode: str) -> dict[str, object]:
    inherit = getattr(sys.flags, "thread_inherit_context", None)
    flags = [] if inherit is None else ["-X", f"thread_inherit_context={int(inherit)}"]
    done = subprocess.run(
        [sys.executable, *flags, "-c", _APP, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("mode", ["propagation", "spans"])
def test_a_refused_start_is_as_bare_and_keeps_no_capture(mode: str) -> None:
    bare = _run("bare")
    assert bare["outcome"] == "RuntimeError: can't start new thread", bare
    # bare start() has given the thread a copy of the caller's context when it inherits
    assert bare["freed while the Thread is held"] is not BASELINE_THREAD_INHERITS
    instrumented = _run(mode)
    # the only difference: the thread started afterwards is carried
    assert bare.pop("retried saw") == [baseline("EMPTY", "again")]
    assert instrumented.pop("retried saw") == ["again"]
    assert instrumented == bare
