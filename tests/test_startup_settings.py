"""Start-up settings, in real subprocesses: empty lists are unset, warnings are bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from activation_support import CTXRELAY, base_env, carried, lost, probe_of, run, write_probe


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


BROKEN_OTEL = "raise ImportError('this opentelemetry is broken')\n"


@pytest.mark.parametrize("how", ["pth", "run"])
@pytest.mark.parametrize("broken", ["raises", "empty"])
def test_a_broken_opentelemetry_never_stops_the_app(
    app_dir: Path, tmp_path: Path, how: str, broken: str
) -> None:
    """A bad ``opentelemetry`` package earlier on PYTHONPATH: the app starts, one line."""
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(BROKEN_OTEL if broken == "raises" else "")
    script = "import sys; print('APP RAN'); sys.exit(5)"
    env = base_env(PYTHONPATH=str(shadow.parent))
    bare = run(["python", "-c", script], env, app_dir)
    assert bare.returncode == 5 and "APP RAN" in bare.stdout and bare.stderr == ""

    if how == "pth":
        result = run(["python", "-c", script], {**env, "CTXRELAY_ENABLED": "1"}, app_dir)
    else:
        result = run([CTXRELAY, "run", "python", "-c", script], env, app_dir)
    assert result.returncode == 5 and "APP RAN" in result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "the application runs without it" in lines[0] and "opentelemetry" in lines[0]


@pytest.mark.parametrize(
    ("env", "failed"),
    [
        ({"OTEL_TRACES_EXPORTER": "no_such_exporter"}, "OTEL_TRACES_EXPORTER='no_such_exporter'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='carrier-pigeon'",
        ),
    ],
)
def test_a_failed_sdk_setup_says_what_failed_and_what_works(
    app_dir: Path, env: dict[str, str], failed: str
) -> None:
    result = run(["python", "app.py", "3"], base_env(CTXRELAY_ENABLED="1", **env), app_dir)
    assert result.returncode == 3
    assert carried(probe_of(result))  # propagation is on
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert failed in lines[0] and "context is still carried into threads" in lines[0]
    assert "runs without it" not in lines[0]


def test_one_failed_exporter_of_two_leaves_the_other(app_dir: Path) -> None:
    env = base_env(CTXRELAY_ENABLED="1", OTEL_TRACES_EXPORTER="no_such_exporter,console")
    result = run(["python", "app.py"], env, app_dir)
    assert carried(probe_of(result))
    assert '"name": "request"' in result.stdout  # the console exporter printed the spans
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("ctxrelay:")]
    assert "no_such_exporter" in line and "Spans still go to console" in line
