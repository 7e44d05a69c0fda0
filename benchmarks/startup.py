"""Interpreter start-up (``python -c pass``) with and without ctxrelay installed.

The ``CTXRELAY_ENABLED`` hook is a ``.pth`` file, read by every interpreter start-up of
the environment it is installed in; with the variable unset it must cost nothing
measurable.  This script builds a wheel of this checkout, makes two throwaway venvs that
differ only by that wheel (both see the same dependencies through a plain path entry),
and times ``python -c pass`` in each, interleaved, reporting medians.  It also times the
hook's single line in-process, which is the only work it adds when the variable is unset.

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


def _time_once(python: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], env=env, check=True)
    return (time.perf_counter() - start) * 1000


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
        cases = {
            "not installed": (bare, env),
            "installed, CTXRELAY_ENABLED unset": (installed, env),
            "installed, CTXRELAY_ENABLED=1 (activates, OTEL_TRACES_EXPORTER=none)": (
                installed,
                {**env, "CTXRELAY_ENABLED": "1", "OTEL_TRACES_EXPORTER": "none"},
            ),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for python, case_env in cases.values():  # warm the file cache
            _time_once(python, case_env)
        for _ in range(args.runs):  # interleaved, so drift on a shared machine hits all cases
            for name, (python, case_env) in cases.items():
                samples[name].append(_time_once(python, case_env))

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
        f"{args.runs} runs per case, interleaved\n"
    )
    print("| case | median ms | p10 ms | p90 ms |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in samples.items():
        deciles = statistics.quantiles(values, n=10)
        print(
            f"| {name} | {statistics.median(values):.2f} | {deciles[0]:.2f} | {deciles[-1]:.2f} |"
        )
    print(f"\nThe .pth line alone, variable unset: {per_call * 1e6:.2f} µs per start-up.")


if __name__ == "__main__":
    main()
