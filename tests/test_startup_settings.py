"""Start-up settings, in real subprocesses: empty lists are unset, warnings are bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from activation_support import base_env, carried, lost, probe_of, run, write_probe


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_probe(tmp_path / "app")


@pytest.mark.parametrize("key", ["INCLUDE", "EXCLUDE", "SKIP_VARS", "DETACH"])
@pytest.mark.parametrize("value", ["", "   ", ",", " , ,, "])
def test_an_empty_list_setting_means_unset(app_dir: Path, key: str, value: str) -> None:
    """``${X:-}`` in a compose file gives ``X=``: ctxrelay behaves as if X were unset."""
    assert lost(probe_of(run(["python", "app.py"], base_env(), app_dir)))
    unset = run(["python", "app.py"], base_env(CTXRELAY_ENABLED="1"), app_dir)
    empty = run(
        ["python", "app.py"], base_env(CTXRELAY_ENABLED="1", **{f"CTXRELAY_{key}": value}), app_dir
    )
    assert carried(probe_of(unset)) and carried(probe_of(empty)), empty.stderr
    assert probe_of(empty)["instrumented"]
    assert empty.stderr == unset.stderr == "", empty.stderr


@pytest.mark.parametrize("key", ["INCLUDE", "EXCLUDE", "DETACH", "HOP_SPANS"])
def test_a_huge_bad_value_gives_one_short_warning(app_dir: Path, key: str) -> None:
    huge = ",".join(["true"] * 20_000) if key == "DETACH" else "x" * 100_000
    result = run(
        ["python", "app.py", "3"],
        base_env(CTXRELAY_ENABLED="1", **{f"CTXRELAY_{key}": huge}),
        app_dir,
    )
    assert result.returncode == 3  # the app ran to its own end
    lines = [line for line in result.stderr.splitlines() if f"CTXRELAY_{key}" in line]
    assert len(lines) == 1, result.stderr[:2000]
    assert len(result.stderr) < 1_000, result.stderr[:2000]
    assert "characters)" in lines[0] and "allowed values" in lines[0]
