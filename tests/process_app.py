"""An app for the process-boundary tests, run in a subprocess (plain or activated).

Under a span ``request`` it sets the three variables and hands one task to each
process engine named on the command line, in every start method; it prints one
``PROC {json}`` line: what each task saw, and the request span's ids.  The pools are
ended the way applications end them: ``ProcessPoolExecutor`` by ``shutdown`` (the
``with`` block), ``multiprocessing.Pool`` by ``terminate`` (its ``with`` block).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

from opentelemetry import trace

import process_support as ps


def main(engines: list[str]) -> None:
    tracer = trace.get_tracer("process_app")
    tasks: list[dict] = []
    with tracer.start_as_current_span("request") as request:
        ps.set_all("r-1", "t-1", "s-1")
        for method in ("fork", "forkserver", "spawn"):
            ctx = multiprocessing.get_context(method)
            if "process_pool" in engines:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    tasks.append(pool.submit(ps.seen, f"ppe-{method}").result())
                    try:
                        pool.submit(ps.fail, "boom").result()
                    except ValueError as exc:
                        tasks.append({"tag": f"ppe-fail-{method}", "error": str(exc)})
            if "multiprocessing" in engines:
                with ctx.Pool(1) as pool:
                    tasks.append(pool.apply(ps.seen, (f"pool-{method}",)))
                queue = ctx.Queue()
                process = ctx.Process(target=ps.report_to, args=(queue, f"process-{method}"))
                process.start()
                tasks.append(queue.get(timeout=60))
                process.join(60)
        span = request.get_span_context()
    print(
        "PROC "
        + json.dumps(
            {
                "trace_id": format(span.trace_id, "032x"),
                "span_id": format(span.span_id, "016x"),
                "tasks": tasks,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
