"""``ctxrelay run CMD``: activation in real subprocesses, for every way of starting Python.

Each case first runs the same command without ``ctxrelay run`` (the ContextVar and the
trace are lost in the workers) and then with it (both carried).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from activation_support import (
    CTXRELAY,
    base_env,
    carried,
    lost,
    probe_of,
    require,
    run,
    run_server_until_probe,
    write_probe,
)
from ctxrelay.version import __version__
from helpers import baseline, free_port


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_probe(tmp_path / "app")


def test_python_script(app_dir: Path) -> None:
    env = base_env()
    plain = probe_of(run(["python", "app.py"], env, app_dir))
    assert lost(plain) and not plain["imported"]

    report = probe_of(run([CTXRELAY, "run", "python", "app.py"], env, app_dir))
    assert carried(report)
    assert report["activated_by"] == "run"


def test_python_module(app_dir: Path) -> None:
    pkg = app_dir / "probepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("from probe import probe\nprobe('module')\n")
    env = base_env(PYTHONPATH=str(app_dir))
    assert lost(probe_of(run(["python", "-m", "probepkg"], env, app_dir)))

    report = probe_of(run([CTXRELAY, "run", "python", "-m", "probepkg"], env, app_dir))
    assert carried(report) and report["label"] == "module"


def test_exit_status_is_the_commands(app_dir: Path) -> None:
    env = base_env()
    result = run([CTXRELAY, "run", "python", "app.py", "7"], env, app_dir)
    assert result.returncode == 7
    assert carried(probe_of(result))
    crash = run([CTXRELAY, "run", "python", "-c", "raise KeyError('boom')"], env, app_dir)
    assert crash.returncode == 1 and "KeyError: 'boom'" in crash.stderr


def test_missing_command_is_127_and_named(app_dir: Path) -> None:
    result = run([CTXRELAY, "run", "no-such-command-xyz", "arg"], base_env(), app_dir)
    assert result.returncode == 127
    assert "no-such-command-xyz" in result.stderr


def test_version_and_help(app_dir: Path) -> None:
    version = run([CTXRELAY, "--version"], base_env(), app_dir)
    assert version.returncode == 0 and version.stdout.strip() == f"ctxrelay {__version__}"
    helped = run([CTXRELAY, "--help"], base_env(), app_dir)
    assert helped.returncode == 0 and "run" in helped.stdout
    run_help = run([CTXRELAY, "run", "--help"], base_env(), app_dir)
    assert run_help.returncode == 0 and "ctxrelay run" in run_help.stdout
    unknown = run([CTXRELAY, "frobnicate"], base_env(), app_dir)
    assert unknown.returncode == 2 and "frobnicate" in unknown.stderr
    # Arguments after CMD belong to CMD, even ones that look like ctxrelay's.
    passed = run(
        [CTXRELAY, "run", "python", "-c", "import sys; print(sys.argv[1:])", "--help"],
        base_env(),
        app_dir,
    )
    assert passed.stdout.strip() == "['--help']"


def test_users_sitecustomize_still_runs(app_dir: Path, tmp_path: Path) -> None:
    user_site = tmp_path / "usersite"
    user_site.mkdir()
    # It starts a thread of its own: ctxrelay is already active when it runs.
    (user_site / "sitecustomize.py").write_text(
        "import contextvars, threading\n"
        "V = contextvars.ContextVar('site_var', default='EMPTY')\n"
        "V.set('from-sitecustomize')\n"
        "box = []\n"
        "t = threading.Thread(target=lambda: box.append(V.get())); t.start(); t.join()\n"
        "print('USER_SITECUSTOMIZE', box[0], flush=True)\n"
    )
    env = base_env(PYTHONPATH=str(user_site))
    plain = run(["python", "app.py"], env, app_dir)
    # (3.14 with thread_inherit_context=1: start() itself copies.)
    assert f"USER_SITECUSTOMIZE {baseline('EMPTY', 'from-sitecustomize')}" in plain.stdout

    result = run([CTXRELAY, "run", "python", "app.py"], env, app_dir)
    assert "USER_SITECUSTOMIZE from-sitecustomize" in result.stdout
    report = probe_of(result)
    assert carried(report)
    assert report["sitecustomize"] == str(user_site / "sitecustomize.py")


def test_kill_switch(app_dir: Path) -> None:
    report = probe_of(
        run([CTXRELAY, "run", "python", "app.py"], base_env(CTXRELAY_ENABLED="0"), app_dir)
    )
    assert lost(report) and report["activated_by"] is None


def test_uvicorn_console_script(app_dir: Path) -> None:
    (app_dir / "asgi.py").write_text(
        "from probe import probe\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'lifespan':\n"
        "        await receive()\n"
        "        probe('uvicorn')\n"
        "        await send({'type': 'lifespan.startup.complete'})\n"
        "        await receive()\n"
        "        await send({'type': 'lifespan.shutdown.complete'})\n"
    )
    require("uvicorn")
    cmd = [
        "uvicorn",
        "asgi:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--lifespan",
        "on",
    ]
    plain, _ = run_server_until_probe(cmd, base_env(), app_dir)
    assert lost(plain)
    report, _ = run_server_until_probe([CTXRELAY, "run", *cmd], base_env(), app_dir)
    assert carried(report) and report["label"] == "uvicorn"


def test_flask_run_with_reloader_child(app_dir: Path) -> None:
    (app_dir / "webapp.py").write_text(
        "import os\nfrom flask import Flask\nfrom probe import probe\n"
        "app = Flask(__name__)\n"
        # Only the reloader's child serves: probing there shows the child is activated.
        "if os.environ.get('WERKZEUG_RUN_MAIN') == 'true':\n    probe('flask-child')\n"
    )
    require("flask")
    cmd = ["flask", "--app", "webapp", "run", "--reload", "--port", str(free_port())]
    plain, _ = run_server_until_probe(cmd, base_env(), app_dir)
    assert lost(plain)
    report, _ = run_server_until_probe([CTXRELAY, "run", *cmd], base_env(), app_dir)
    assert carried(report) and report["label"] == "flask-child"


def test_gradio_cli(app_dir: Path) -> None:
    (app_dir / "demo_app.py").write_text(
        "import gradio as gr\nfrom probe import probe\n"
        "probe('gradio')\n"
        "demo = gr.Interface(lambda s: s, 'text', 'text')\n"
        "if __name__ == '__main__':\n    demo.launch()\n"
    )
    require("gradio")
    env = base_env(GRADIO_SERVER_PORT=str(free_port()), GRADIO_ANALYTICS_ENABLED="False")
    plain, _ = run_server_until_probe(["gradio", "demo_app.py"], env, app_dir)
    assert lost(plain)
    report, _ = run_server_until_probe([CTXRELAY, "run", "gradio", "demo_app.py"], env, app_dir)
    assert carried(report) and report["label"] == "gradio"


def test_cli_module_entry(app_dir: Path) -> None:
    """``python -m ctxrelay.cli`` behaves like the console script."""
    result = subprocess.run(
        [sys.executable, "-m", "ctxrelay.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == f"ctxrelay {__version__}"


def test_python_without_ctxrelay_runs_with_a_warning(app_dir: Path) -> None:
    """A command whose interpreter cannot import ctxrelay still runs, and says why."""
    base = getattr(sys, "_base_executable", sys.executable)
    check = subprocess.run([base, "-c", "import ctxrelay"], capture_output=True, timeout=60)
    if check.returncode == 0 or base == sys.executable:
        pytest.skip(f"{base} can import ctxrelay")
    result = run([CTXRELAY, "run", base, "-c", "print('ran')"], base_env(), app_dir)
    assert result.returncode == 0 and result.stdout.strip() == "ran"
    assert "cannot import ctxrelay" in result.stderr and base in result.stderr
