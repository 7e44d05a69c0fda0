"""Other tools that replace thread start after (or before) ctxrelay: gevent's
``monkey.patch_all()`` and debugpy/pydevd.  Real tools, real subprocesses, both orders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activation_support import base_env, run

APP = """\
import contextvars, json, socket, sys
tool, order = sys.argv[1], sys.argv[2]

def other_tool():
    if tool == "gevent":
        from gevent import monkey
        monkey.patch_all()
    else:
        import debugpy
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        debugpy.listen(("127.0.0.1", port))  # pydevd patches thread start here

if order == "tool-first":
    other_tool()
    if sys.argv[3] == "instrument":
        import ctxrelay
        ctxrelay.instrument()
else:
    other_tool()  # after the start-up activation (or with no ctxrelay at all)

import threading
from concurrent.futures import ThreadPoolExecutor
REQUEST = contextvars.ContextVar("request", default="EMPTY")
REQUEST.set("r-42")
seen = []
t = threading.Thread(target=lambda: seen.append(REQUEST.get()))
t.start(); t.join()
with ThreadPoolExecutor(1) as pool:
    seen.append(pool.submit(REQUEST.get).result())
print("SEEN " + json.dumps(seen), flush=True)
"""


def _seen(tmp_path: Path, tool: str, order: str, how: str) -> list[str]:
    (tmp_path / "app.py").write_text(APP)
    env = base_env(
        CTXRELAY_ENABLED="1" if how == "pth" else "0", PYDEVD_DISABLE_FILE_VALIDATION="1"
    )
    result = run(["python", "app.py", tool, order, how], env, tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("SEEN ")]
    return json.loads(line[5:])  # type: ignore[no-any-return]


@pytest.mark.parametrize("tool", ["gevent", "debugpy"])
@pytest.mark.parametrize(
    ("order", "how"),
    [("ctxrelay-first", "pth"), ("tool-first", "instrument")],
)
def test_threads_carry_whichever_tool_came_first(
    tmp_path: Path, tool: str, order: str, how: str
) -> None:
    pytest.importorskip(tool)
    assert _seen(tmp_path, tool, order, "bare") == ["EMPTY", "EMPTY"]
    assert _seen(tmp_path, tool, order, how) == ["r-42", "r-42"]
