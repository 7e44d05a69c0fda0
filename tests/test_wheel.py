"""The wheel of ``make dist``, installed into a fresh venv: ``ctxrelay demo`` works there.

The package is not on PyPI: users build the wheel (``make dist``) and ``pip install`` it.
This builds it with ``make dist`` into a temporary directory, creates a fresh venv and
installs the wheel with pip (its dependencies from pip's configured index, the local
mirrors here, as ``make venv`` gets them), then runs the installed ``ctxrelay``:

1. without the demo's frameworks, ``ctxrelay demo`` names the missing modules and the
   ``demo`` extra and exits with status 2;
2. with them, it runs the demo app that ships in the wheel, without and then with
   ctxrelay.

For step 2 the frameworks are not installed into the fresh venv again: Gradio alone
pulls in ~80 distributions (numpy, pandas, pillow, ...), a minute or two and hundreds of
megabytes per run.  A ``.pth`` line appends this venv's site-packages to the fresh venv's
path instead (after its own, so ``ctxrelay`` is the wheel's: asserted; ``.pth`` files of
an appended directory are not processed, so this venv's editable ``ctxrelay`` and its
start-up hook stay out).  That the ``demo`` extra names what the app imports is checked
on the wheel's metadata.
"""

from __future__ import annotations

import email
import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from ctxrelay.demo import NEEDS
from ctxrelay.version import __version__

ROOT = Path(__file__).resolve().parent.parent
_MISSING = [m for m in NEEDS if importlib.util.find_spec(m) is None]

# Building, a venv and an install: ~20 s, once, on the default Python (e2e): the light
# matrix venvs would each pay it for the same wheel.
pytestmark = [pytest.mark.timeout(600), pytest.mark.e2e]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CTXRELAY_", "OTEL_", "PYTHONPATH")) and k != "VIRTUAL_ENV"
    }
    env.update(extra)
    return env


def _run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make dist`` into a temporary directory (``-o venv``: this venv is the one to use)."""
    dist = tmp_path_factory.mktemp("dist")
    venv = Path(sys.executable).parent.parent
    done = _run(
        ["make", "-s", "-C", ROOT, "dist", f"DIST={dist}", f"VENV={venv}", "-o", "venv"],
        env=_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (found,) = dist.glob("ctxrelay-*.whl")
    assert found.name == f"ctxrelay-{__version__}-py3-none-any.whl"
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel pip-installed; returns its bin directory."""
    venv = tmp_path_factory.mktemp("venv")
    base = getattr(sys, "_base_executable", sys.executable)
    assert _run([base, "-m", "venv", venv]).returncode == 0
    done = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return venv / "bin"


def test_the_demo_extra_names_what_the_demo_app_imports(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = email.message_from_bytes(
            archive.read(f"ctxrelay-{__version__}.dist-info/METADATA")
        )
    assert "ctxrelay/demo_app.py" in names and "zz_ctxrelay.pth" in names
    assert "demo" in metadata.get_all("Provides-Extra", [])
    demo = {
        re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("-", "_")
        for requirement in metadata.get_all("Requires-Dist", [])
        if re.search(r"""extra\s*==\s*['"]demo['"]""", requirement)
    }
    assert demo == set(NEEDS)


def test_readme_names_the_wheel_make_dist_builds(wheel: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"ctxrelay-[0-9][^\s'\[]*\.whl", readme))
    assert named == {wheel.name}, named


def test_ctxrelay_demo_without_its_frameworks_names_the_extra(installed: Path) -> None:
    done = _run([installed / "ctxrelay", "demo"], env=_env())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the demo app needs attrs, griptape, fastapi" in done.stderr, done.stderr
    assert f"ctxrelay-{__version__}-py3-none-any.whl[demo]" in done.stderr
    assert "Traceback" not in done.stderr
    version = _run([installed / "ctxrelay", "--version"], env=_env())
    assert version.stdout.strip() == f"ctxrelay {__version__}"


@pytest.mark.skipif(bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed (demo extra)")
def test_ctxrelay_demo_from_the_wheel_runs_both_and_without_really_is_without(
    installed: Path,
) -> None:
    python = installed / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    bridge = Path(site.stdout.strip()) / "zz_zz_test_frameworks.pth"
    bridge.write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    try:
        where = _run([python, "-c", "import ctxrelay.demo_app as m; print(m.__file__)"])
        assert where.stdout.startswith(str(installed.parent)), where.stdout + where.stderr
        # Even with ctxrelay switched on in the shell, the first run must be plain.
        done = _run([installed / "ctxrelay", "demo"], env=_env(CTXRELAY_ENABLED="1"))
    finally:
        bridge.unlink()
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = done.stdout.split("=== 2/2", 1)
    assert "=== 1/2 without ctxrelay: python -m ctxrelay.demo_app" in first
    assert "ctxrelay OFF" in first and "8 of 9 handlers ran without the listener" in first
    assert "ctxrelay ON" in second and "all 9 handlers saw the listener" in second
    assert "⇢ Thread" in done.stderr and "⇢ gradio.queue sync_handler" in done.stderr
