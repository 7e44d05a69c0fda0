"""``CTXRELAY_ENABLED=1``: the ``.pth`` start-up hook, from an editable and a wheel install."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

import pytest

from activation_support import base_env, build_wheel, carried, lost, probe_of, run, write_probe

ROOT = Path(__file__).resolve().parents[1]
PTH_NAME = "zz_ctxrelay.pth"
NOT_LOADED = (
    "import sys; print(sorted(m for m in sys.modules"
    " if m.split('.')[0] in ('ctxrelay', 'wrapt', 'opentelemetry')))"
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_probe(tmp_path / "app")


def test_installed_with_the_package() -> None:
    """The editable install of this checkout ships the same hook as the source tree."""
    installed = [
        Path(d) / PTH_NAME for d in site.getsitepackages() if (Path(d) / PTH_NAME).exists()
    ]
    assert installed, (
        f"{PTH_NAME} missing from {site.getsitepackages()}: reinstall with pip install -e ."
    )
    assert installed[0].read_text() == (ROOT / "src" / PTH_NAME).read_text()


@pytest.mark.parametrize("value", [None, "", "0", "false", "OFF"])
def test_unset_or_off_imports_nothing(app_dir: Path, value: str | None) -> None:
    result = run(["python", "-c", NOT_LOADED], base_env(CTXRELAY_ENABLED=value), app_dir)  # type: ignore[arg-type]
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
    assert result.stderr == ""


def test_enabled_activates_at_startup(app_dir: Path) -> None:
    assert lost(probe_of(run(["python", "app.py"], base_env(), app_dir)))

    report = probe_of(run(["python", "app.py"], base_env(CTXRELAY_ENABLED="1"), app_dir))
    assert carried(report)
    assert report["activated_by"] == "pth"


def test_invalid_value_warns_once_and_runs_without(app_dir: Path) -> None:
    result = run(["python", "app.py", "4"], base_env(CTXRELAY_ENABLED="ture"), app_dir)
    assert result.returncode == 4
    assert lost(probe_of(result))
    warnings = [line for line in result.stderr.splitlines() if "CTXRELAY_ENABLED" in line]
    assert len(warnings) == 1, result.stderr
    assert "'ture'" in warnings[0] and "allowed values" in warnings[0]


def test_wheel_install_ships_the_hook(tmp_path: Path, app_dir: Path) -> None:
    """A regular (non-editable) wheel puts the hook at the top of site-packages.

    The wheel is built as pip builds it; it is installed with ``--no-deps`` into a fresh
    venv that sees this venv's packages through a plain path entry.
    """
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    purelib = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    assert (purelib / PTH_NAME).read_text() == (ROOT / "src" / PTH_NAME).read_text()
    assert (purelib / "ctxrelay" / "py.typed").is_file(), "type checkers read ctxrelay's hints"
    # Dependencies from this venv, appended after the fresh site-packages (a plain path
    # line: the .pth files of that directory, including its editable ctxrelay, are not read).
    (purelib / "deps.pth").write_text(site.getsitepackages()[0] + "\n")

    env = base_env()
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    assert run([python, "-c", NOT_LOADED], env, app_dir).stdout.strip() == "[]"
    assert lost(probe_of(run([python, "app.py"], env, app_dir)))
    report = probe_of(run([python, "app.py"], {**env, "CTXRELAY_ENABLED": "1"}, app_dir))
    assert carried(report) and report["activated_by"] == "pth"
    where = run([python, "-c", "import ctxrelay; print(ctxrelay.__file__)"], env, app_dir).stdout
    assert where.startswith(str(purelib)), where
    # ... and the console script works from the wheel too.
    report = probe_of(run([venv / "bin" / "ctxrelay", "run", "python", "app.py"], env, app_dir))
    assert carried(report) and report["activated_by"] == "run"


def test_a_bad_setting_warns_once_through_activation(app_dir: Path) -> None:
    """Activation reads the settings twice (to decide, then to instrument): still one warning."""
    env = base_env(CTXRELAY_ENABLED="1", CTXRELAY_HOP_SPANS="maybe")
    result = run(["python", "app.py"], env, app_dir)
    assert carried(probe_of(result))
    assert (
        len([line for line in result.stderr.splitlines() if "CTXRELAY_HOP_SPANS" in line]) == 1
    ), result.stderr
