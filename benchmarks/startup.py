"""Interpreter start-up (``python -c pass``) with and without ctxrelay installed.

The ``CTXRELAY_ENABLED`` hook is a ``.pth`` file, read by every interpreter start-up of
the environment it is installed in; with the variable unset it must cost nothing
measurable.  This script builds a wheel of this checkout, makes two throwaway venvs that
differ only by that wheel (both see the same dependencies through a plain path entry),
and times ``python -c pass`` in each, interleaved, reporting medians.  It also times the
hook's single line in-process, which is the only work it adds when the variable is unset.

The activated cases (``CTXRELAY_ENABLED=1`` with the default trace-tree exporter and
with ``OTEL_TRACES_EXPORTER=none``) are compared with ``opentelemetry-instrument``
(the anchor) and checked against the target: at most bare + 100 ms.  The load average
is printed before and after, so a reader can tell a quiet run from a loaded one.

    .venv/bin/python benchmarks/startup.py [--runs 60]
"""

from __future__ import annotations

import argparse
import os
import site
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PTH = ROOT / "src" / "zz_ctxrelay.pth"


def _venv(path: Path, wheel: Path | None) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    if wheel is not None:
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
        )
    purelib = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
    )
    # Same dependencies for both; a plain path line does not read that directory's .pth files.
    Path(purelib.strip(), "deps.pth").write_text(site.getsitepackages()[0] + "\n")
    return python


#: The start-up activation's target: at most this much more than a bare start-up.
TARGET_MS = 100.0


def _time_once(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on this platform
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60, help="start-ups per case (default 60)")
    args = parser.parse_args()

    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CTXRELAY_", "OTEL_", "PYTHON"))
    }
    with tempfile.TemporaryDirectory(prefix="ctxrelay-startup-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, str(ROOT)],
            check=True,
        )
        (wheel,) = Path(tmp).glob("ctxrelay-*.whl")
        bare = _venv(Path(tmp) / "bare", None)
        installed = _venv(Path(tmp) / "installed", wheel)
        quiet = {"OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "not installed": ([str(bare), "-c", "pass"], env),
            "installed, CTXRELAY_ENABLED unset": ([str(installed), "-c", "pass"], env),
            "CTXRELAY_ENABLED=1 (default: trace-tree exporter)": (
                [str(installed), "-c", "pass"],
                {**env, "CTXRELAY_ENABLED": "1"},
            ),
            "CTXRELAY_ENABLED=1, OTEL_TRACES_EXPORTER=none": (
                [str(installed), "-c", "pass"],
                {**env, "CTXRELAY_ENABLED": "1", "OTEL_TRACES_EXPORTER": "none"},
            ),
        }
        anchor = Path(sys.executable).parent / "opentelemetry-instrument"
        if anchor.exists():
            cases["opentelemetry-instrument, OTEL_TRACES_EXPORTER=console (anchor)"] = (
                [str(anchor), str(installed), "-c", "pass"],
                {**env, "OTEL_TRACES_EXPORTER": "console", **quiet},
            )
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for cmd, case_env in cases.values():  # warm the file cache
            _time_once(cmd, case_env)
        load_before = _load()
        for _ in range(args.runs):  # interleaved, so drift on a shared machine hits all cases
            for name, (cmd, case_env) in cases.items():
                samples[name].append(_time_once(cmd, case_env))
        load_after = _load()

    line = PTH.read_text().strip()
    code = compile(line, str(PTH), "exec")
    saved = os.environ.pop("CTXRELAY_ENABLED", None)
    try:
        per_call = min(timeit.repeat(lambda: exec(code, {}), number=20000, repeat=5)) / 20000
    finally:
        if saved is not None:
            os.environ["CTXRELAY_ENABLED"] = saved

    print(
        f"Python {sys.version.split()[0]} ({sysconfig.get_platform()}), "
        f"{args.runs} runs per case, interleaved; load average {load_before} before, "
        f"{load_after} after\n"
    )
    bare_ms = statistics.median(samples["not installed"])
    print("| case | median ms | p10 ms | p90 ms | added to bare, ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in samples.items():
        deciles = statistics.quantiles(values, n=10)
        median = statistics.median(values)
        print(
            f"| {name} | {median:.2f} | {deciles[0]:.2f} | {deciles[-1]:.2f} "
            f"| {median - bare_ms:+.1f} |"
        )
    for name, values in samples.items():
        if name.startswith("CTXRELAY_ENABLED=1"):
            added = statistics.median(values) - bare_ms
            verdict = "meets" if added <= TARGET_MS else "MISSES"
            print(f"\ntarget (bare + {TARGET_MS:.0f} ms) {verdict}: {name}: {added:+.1f} ms")
    print(f"\nThe .pth line alone, variable unset: {per_call * 1e6:.2f} µs per start-up.")


if __name__ == "__main__":
    main()
