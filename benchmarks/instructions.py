"""Instructions per operation, counted by callgrind: figures a noisy machine cannot move.

``make bench`` reports CPU time, which a shared 2-core machine under load inflates
(cache misses, frequency changes, neighbours).  ``valgrind --tool=callgrind`` counts
the instructions the process executes, all of its threads together, whatever else the
machine is doing: the same binary, inputs and environment give the same count to a few
parts in ten thousand.  Instructions are not time (a cache miss costs more than an
add), so these figures complement the timed ones, they do not replace them.

Each (configuration, scenario) runs twice, with ``n`` and ``2n`` operations, each in a
fresh process under callgrind; the difference divided by ``n`` is the cost of one
operation, with the interpreter's start-up and the set-up cancelled out.

    .venv/bin/python benchmarks/instructions.py            # every scenario, ~10 min
    .venv/bin/python benchmarks/instructions.py --only thread,hop_span
    # wrapt 1.17 and 2.x side by side (the light venvs .ci/run builds):
    .venv/bin/python benchmarks/instructions.py --python .venv-wrapt1/bin/python \
        --python .venv-wrapt2/bin/python --only pool_hop,wrapper

``startup`` counts one ``python -c pass`` bare and with ``CTXRELAY_ENABLED=1`` (no
n/2n difference: the start-up is the operation); ``wrapper`` is one call through a
``wrapt.FunctionWrapper`` whose wrapper calls straight through, ``closure`` the same
through a plain Python closure, ``plain_call`` the bare call (what any wrapt-based
patch pays per call, whatever it does).

Configurations are those of ``workloads.py`` (bare, ctxrelay spans off, sampled,
unsampled, the OpenTelemetry threading instrumentor).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: scenario -> (operations at n, configurations it is measured under)
SCENARIOS: dict[str, tuple[int, tuple[str, ...]]] = {
    # ThreadPoolExecutor(1): submit + run of a no-op task (the CPU cost of a pool hop),
    # the n tasks queued behind a gate, then run
    "pool_hop": (2_000, ("bare", "off", "sampled", "unsampled", "otel")),
    # Thread(target=noop).start(); join()
    "thread": (300, ("bare", "off", "sampled", "otel")),
    # the SDK's own span, the reference of the hop-span target
    "sdk_span": (2_000, ("bare",)),
    # the SDK span a hop is: 8 attributes at creation, made current, ended
    "sdk_span_like_hop": (2_000, ("bare",)),
    # one call through wrapt.FunctionWrapper / through a Python closure / plain (see above)
    "wrapper": (5_000, ("bare",)),
    "closure": (5_000, ("bare",)),
    "plain_call": (5_000, ("bare",)),
    # `python -c pass`, bare and with CTXRELAY_ENABLED=1 (counted once each)
    "startup": (1, ("bare", "enabled")),
    # relay.capture() (a hop's copy) in a context of 10 / 1,000 variables: nothing to
    # leave behind, CTXRELAY_SKIP_VARS naming nothing present, one variable skipped by
    # name, the same one skipped by `module:attribute`
    "capture_10": (2_000, ("bare", "no_match", "by_name", "by_path")),
    "capture_1000": (2_000, ("bare", "no_match", "by_name", "by_path")),
    # ProcessPoolExecutor(1, spawn): submit(noop).result(), both processes counted (the
    # worker too: --trace-children), bare / ctxrelay with nothing declared / 3 declared
    # small variables carried (what benchmarks/processes.py times)
    "process_round_trip": (200, ("bare", "nothing", "carried")),
    # the same pool's pickling of one call item (ForkingPickler.dumps) and the worker's
    # unpickling (pickle.loads): the plain function, the cheapest wrapper that could run
    # code on the worker (a one-slot class carrying nothing), a functools.partial, and
    # ctxrelay's Task with the 3 small declared values (docs/processes.md, "The floor")
    "task_pickle": (2_000, ("plain", "empty_wrapper", "partial", "task")),
    "task_unpickle": (2_000, ("plain", "empty_wrapper", "partial", "task")),
}


def _capture(config: str, size: int, n: int) -> None:
    import types
    from contextvars import Context, ContextVar

    import ctxrelay
    from ctxrelay import relay

    context = Context()
    variables = [ContextVar(f"bench_var_{i}", default=None) for i in range(size)]
    for var in variables:
        context.run(var.set, 1)
    module = types.ModuleType("bench_skip_vars")
    module.VAR = variables[0]  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    skip = {"bare": [], "no_match": ["bench_no_such_var"], "by_name": ["bench_var_0"]}
    ctxrelay.instrument(
        spans=False, listener_spans=False, skip_vars=skip.get(config, ["bench_skip_vars:VAR"])
    )
    context.run(relay.capture)  # the first pass (names read once) before counting
    for _ in range(n):
        context.run(relay.capture)
    os._exit(0)


def _process_round_trip(config: str, n: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from processes import DECLARED, noop

    import ctxrelay

    workdir = _bench_vars_module()
    if config != "bare":
        ctxrelay.instrument(process_vars=DECLARED if config == "carried" else [], spans=False)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for _ in range(20):  # the worker started, every module the tasks need imported
            pool.submit(noop).result()
        for _ in range(n):
            pool.submit(noop).result()
    shutil.rmtree(workdir, ignore_errors=True)
    os._exit(0)


def _task_pickling(config: str, scenario: str, n: int) -> None:
    import functools
    import pickle
    from concurrent.futures import process
    from multiprocessing.reduction import ForkingPickler

    from processes import DECLARED, OneSlot, noop

    fn: Any = noop
    if config == "task":
        import ctxrelay
        from ctxrelay import relay

        _bench_vars_module()
        ctxrelay.instrument(process_vars=DECLARED, spans=False)
        fn = relay.carried_task("ProcessPoolExecutor", noop)
    elif config == "empty_wrapper":
        fn = OneSlot(noop)
    elif config == "partial":
        fn = functools.partial(noop)
    item = process._CallItem(1, fn, (), {})
    blob = bytes(ForkingPickler.dumps(item))
    for _ in range(n):
        if scenario == "task_pickle":
            ForkingPickler.dumps(item)
        else:
            pickle.loads(blob)
    os._exit(0)


def _bench_vars_module() -> Path:
    """``bench_vars`` (the 3 declared variables) importable and set, as processes.py has it;
    the folder it was written in."""
    import tempfile

    from processes import VARS_MODULE

    workdir = Path(tempfile.mkdtemp(prefix="ctxrelay-instructions-"))
    (workdir / "bench_vars.py").write_text(VARS_MODULE)
    sys.path.insert(0, str(workdir))  # a spawned worker gets the parent's sys.path
    import bench_vars

    bench_vars.A.set("req-0123456789")
    bench_vars.B.set("tenant-acme")
    bench_vars.C.set(42)
    return workdir


def _child(config: str, scenario: str, n: int) -> None:
    import gc
    import threading

    if scenario.startswith("task_"):
        _task_pickling(config, scenario, n)
    if scenario.startswith("capture_"):
        _capture(config, int(scenario.split("_")[1]), n)
    if scenario == "process_round_trip":
        _process_round_trip(config, n)

    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from workloads import _HOP_LIKE_ATTRIBUTES, noop, setup

    _, tracer = setup(config)
    root = tracer.start_span("root")
    otel_context.attach(trace.set_span_in_context(root))
    if scenario == "pool_hop":
        with ThreadPoolExecutor(1) as pool:
            pool.submit(noop).result()  # the worker exists before counting starts
            # The worker waits at a gate while the n tasks are queued, then drains them
            # without going to sleep in between: how often a worker racing the submits
            # sleeps and wakes depends on the scheduling, and moved the count by
            # ±8,000 per task between identical runs.  The collector is off: with n
            # tasks queued at once its passes grow faster than n, and the garbage it
            # has to look at per queued task is measured in time by run.py's TPE(8).
            gc.disable()
            gate = threading.Event()
            pool.submit(gate.wait)
            for _ in range(n):
                pool.submit(noop)
            gate.set()
    elif scenario == "thread":
        for _ in range(n):
            thread = threading.Thread(target=noop)
            thread.start()
            thread.join()
    elif scenario == "sdk_span":
        for _ in range(n):
            tracer.start_span("x").end()
    elif scenario in ("wrapper", "closure", "plain_call"):
        import wrapt

        def through(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            return wrapped(*args, **kwargs)

        def closure(*args: Any, **kwargs: Any) -> Any:
            return through(noop, None, args, kwargs)

        call: Any = {
            "wrapper": wrapt.FunctionWrapper(noop, through, enabled=[True]),
            "closure": closure,
            "plain_call": noop,
        }[scenario]
        for _ in range(n):
            call()
    elif scenario == "sdk_span_like_hop":
        for _ in range(n):
            span = tracer.start_span("x", attributes=_HOP_LIKE_ATTRIBUTES)
            token = otel_context.attach(trace.set_span_in_context(span))
            otel_context.detach(token)
            span.end()
    os._exit(0)  # no exit-time work (the batch processor's flush) in the count


_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _count(config: str, scenario: str, n: int, python: str) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    if scenario == "process_round_trip":  # the worker process is counted too
        command.append("--trace-children=yes")
    command.append(python)
    if scenario == "startup":
        command += ["-c", "pass"]
    else:
        command += [str(Path(__file__).resolve()), "--child", config, scenario, str(n)]
    # PYTHONDONTWRITEBYTECODE (some shells and CI images set it) would have every run
    # compile ctxrelay from source, which no installed copy does (see _compile_first).
    unset = ("CTXRELAY_", "OTEL_", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    env["PYTHONPATH"] = str(HERE.parent / "src")
    env["PYTHONHASHSEED"] = "0"  # the same dict layouts every run
    if scenario == "startup" and config == "enabled":
        env["CTXRELAY_ENABLED"] = "1"
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = [int(count) for count in _COLLECTED.findall(done.stderr)]  # one per process
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{config} {scenario} {n}: {done.stderr[-2000:]}")
    return sum(found)


def per_operation(config: str, scenario: str, python: str = sys.executable) -> float:
    n = SCENARIOS[scenario][0]
    if scenario == "startup":
        return float(_count(config, scenario, n, python))
    return (_count(config, scenario, 2 * n, python) - _count(config, scenario, n, python)) / n


def _wrapt_of(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import wrapt; print(wrapt.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"wrapt {done.stdout.strip() or '?'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated scenarios")
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "SCENARIO", "N"))
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        help="interpreter to count under (repeat for side by side, e.g. both wrapt lines)",
    )
    args = parser.parse_args()
    if args.child:
        config, scenario, n = args.child
        _child(config, scenario, int(n))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    _compile_first()
    pythons = args.python or [sys.executable]
    if len(pythons) == 1:
        results: dict[tuple[str, str], float] = {}
        for scenario in chosen:
            for config in SCENARIOS[scenario][1]:
                results[scenario, config] = per_operation(config, scenario, pythons[0])
                print(f"{scenario:20} {config:10} {results[scenario, config]:12,.0f}", flush=True)
        print()
        _summary(results)
        return 0
    _side_by_side(chosen, pythons)
    return 0


def _compile_first() -> None:
    """Write the .pyc files of ctxrelay and of these benchmarks before anything is counted.

    Otherwise the first run after an edit (or every run, under PYTHONDONTWRITEBYTECODE)
    compiles them from source, and of the n and 2n runs only one pays for it: the
    difference, divided by n, comes out wildly wrong (negative, seen here).
    """
    import compileall

    for folder in (HERE.parent / "src", HERE):
        compileall.compile_dir(folder, quiet=1)


def _side_by_side(chosen: list[str], pythons: list[str]) -> None:
    """One column per interpreter (e.g. wrapt 1.17 and 2.x), then each one's summary."""
    labels = [_wrapt_of(p) for p in pythons]
    per: list[dict[tuple[str, str], float]] = [{} for _ in pythons]
    print(f"{'scenario':20} {'config':10} " + " ".join(f"{label:>16}" for label in labels))
    for scenario in chosen:
        for config in SCENARIOS[scenario][1]:
            cells = []
            for i, python in enumerate(pythons):
                per[i][scenario, config] = per_operation(config, scenario, python)
                cells.append(f"{per[i][scenario, config]:16,.0f}")
            print(f"{scenario:20} {config:10} " + " ".join(cells), flush=True)
    for label, results in zip(labels, per, strict=True):
        print(f"\n--- {label}")
        _summary(results)


def _summary(results: dict[tuple[str, str], float]) -> None:
    """The added instructions per operation, and the ratios the targets are stated in."""
    plain = results.get(("plain_call", "bare"))
    for kind in ("wrapper", "closure"):
        value = results.get((kind, "bare"))
        if value is not None and plain is not None:
            what = "wrapt.FunctionWrapper" if kind == "wrapper" else "a Python closure"
            print(f"{kind}: a call through {what} adds {value - plain:,.0f} instructions")
    bare_start, enabled_start = (
        results.get(("startup", "bare")),
        results.get(("startup", "enabled")),
    )
    if bare_start and enabled_start:
        print(
            f"startup: CTXRELAY_ENABLED=1 adds {enabled_start - bare_start:,.0f} instructions "
            f"({enabled_start:,.0f} vs {bare_start:,.0f} bare)"
        )
    for scenario in ("capture_10", "capture_1000"):
        bare = results.get((scenario, "bare"))
        if bare is None:
            continue
        for config in ("no_match", "by_name", "by_path"):
            value = results.get((scenario, config))
            if value is not None:
                print(f"{scenario}: CTXRELAY_SKIP_VARS {config} adds {value - bare:,.0f}")
    bare = results.get(("process_round_trip", "bare"))
    for config in ("nothing", "carried"):
        value = results.get(("process_round_trip", config))
        if bare and value is not None:
            print(
                f"process_round_trip: {config} adds {value - bare:,.0f} instructions per task "
                f"(+{(value - bare) / bare:.1%} of bare's {bare:,.0f}, both processes)"
            )
    for scenario in ("task_pickle", "task_unpickle"):
        plain = results.get((scenario, "plain"))
        for config in ("empty_wrapper", "partial", "task"):
            value = results.get((scenario, config))
            if plain is not None and value is not None:
                print(f"{scenario}: {config} adds {value - plain:,.0f} instructions per call item")
    for scenario in ("pool_hop", "thread"):
        bare = results.get((scenario, "bare"))
        if bare is None:
            continue
        for config in ("off", "sampled", "unsampled", "otel"):
            value = results.get((scenario, config))
            if value is not None:
                print(
                    f"{scenario}: {config} adds {value - bare:,.0f} instructions per operation "
                    f"({value / bare:.2f}x bare)"
                )
    sdk = results.get(("sdk_span", "bare"))
    like = results.get(("sdk_span_like_hop", "bare"))
    hop = results.get(("pool_hop", "sampled"))
    off = results.get(("pool_hop", "off"))
    if sdk and hop and off:
        added = hop - off
        print(f"hop span: {added:,.0f} instructions added, {added / sdk:.2f}x the SDK's bare span")
        if like:
            print(
                f"  the SDK's own span with the hop's attributes, made current: {like:,.0f} "
                f"({like / sdk:.2f}x); ctxrelay's share of the hop span: {added - like:,.0f}"
            )


if __name__ == "__main__":
    sys.exit(main())
