"""The trace-tree exporter, with the real SDK: what a person reads on stderr.

Assertions are on content and nesting depth, not on exact whitespace.
"""

from __future__ import annotations

import contextvars
import io
import os
import random
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, format_trace_id

import ctxrelay
from ctxrelay.config import ConfigWarning
from ctxrelay.exporters.tree import TreeSpanExporter
from helpers import baseline

ROOT = Path(__file__).resolve().parent.parent


# --- helpers ---------------------------------------------------------------------------
def _tree_provider(**kwargs) -> tuple[TracerProvider, TreeSpanExporter, io.StringIO]:
    out = io.StringIO()
    exporter = TreeSpanExporter(out, **kwargs)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter, out


def _collected() -> tuple[trace.Tracer, InMemorySpanExporter]:
    """A tracer whose finished spans we can feed to the exporter in any order."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider.get_tracer("test"), memory


def _trees(text: str) -> list[list[str]]:
    """Split output into traces (header line first), dropping blank lines."""
    trees: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("── trace "):
            trees.append([line])
        elif line.strip():
            assert trees, f"span line before any header: {line!r}"
            trees[-1].append(line)
    return trees


_PREFIX = re.compile(r"^((?:│  |   )*)(?:├─ |└─ )?")


def _depth(line: str) -> int:
    """0 for a root, 1 for its children, ... (each level is a 3-character column)."""
    match = _PREFIX.match(line)
    indent = match.group(1)
    return 0 if match.group(0) == "" else len(indent) // 3 + 1


def _find(lines: list[str], needle: str) -> int:
    hits = [i for i, line in enumerate(lines) if needle in line]
    assert len(hits) == 1, f"{needle!r} in {hits} of:\n" + "\n".join(lines)
    return hits[0]


def _assert_child(lines: list[str], parent: str, child: str) -> None:
    """``child`` is printed under ``parent``, exactly one level deeper."""
    p, c = _find(lines, parent), _find(lines, child)
    assert c > p and _depth(lines[c]) == _depth(lines[p]) + 1, "\n".join(lines)
    assert all(_depth(lines[i]) > _depth(lines[p]) for i in range(p + 1, c)), "\n".join(lines)


def _scenario(tracer: trace.Tracer) -> None:
    """request (main) → Thread worker-1 → step → pool task → query; one failure."""

    def query() -> None:
        with tracer.start_as_current_span("query"):
            pass

    def step() -> None:
        with tracer.start_as_current_span("step"):
            with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
                pool.submit(query).result()
            with tracer.start_as_current_span("validate"):
                raise ValueError("bad input")

    def worker() -> None:
        try:
            step()
        except ValueError:
            pass

    with tracer.start_as_current_span("request"):
        thread = threading.Thread(target=worker, name="worker-1")
        thread.start()
        thread.join()


# --- the tree ------------------------------------------------------------------------
def test_a_trace_across_threads_renders_as_one_tree_with_hops_marked() -> None:
    provider, _, out = _tree_provider()
    tracer = provider.get_tracer("test")

    # Without ctxrelay the work in the other threads starts new traces: three trees
    # (one on 3.14 with the flag on: start() copies, and the pool's worker starts in the
    # submit; no hop marks either way).
    _scenario(tracer)
    without = _trees(out.getvalue())
    assert len(without) == baseline(3, 1), out.getvalue()
    assert not any("⇢" in line for tree in without for line in tree)

    out.seek(0)
    out.truncate()
    ctxrelay.instrument(tracer_provider=provider)
    _scenario(tracer)

    (lines,) = _trees(out.getvalue())
    header = lines[0]
    assert "6 spans" in header
    assert re.search(r"threads: MainThread, worker-1, pool_0", header), header
    assert "2 errors" in header  # validate, and step it escaped from
    root = lines[_find(lines, "request")]
    assert _depth(root) == 0 and "[MainThread]" in root
    hop = lines[_find(lines, "⇢ Thread worker")]
    assert re.search(r"\[MainThread → worker-1, waited \d+\.\d+ ms\]", hop), hop
    pool_hop = lines[_find(lines, "⇢ ThreadPoolExecutor query")]
    assert re.search(r"\[worker-1 → pool_0, waited \d+\.\d+ ms\]", pool_hop), pool_hop
    _assert_child(lines, "request", "⇢ Thread worker")
    _assert_child(lines, "⇢ Thread worker", "step")
    _assert_child(lines, "step", "⇢ ThreadPoolExecutor query")
    _assert_child(lines, "⇢ ThreadPoolExecutor query", "─ query")
    _assert_child(lines, "step", "validate")
    # Every span shows a duration.
    assert all(re.search(r"\d (ms|s)\b", line) for line in lines[1:]), "\n".join(lines)


def test_errors_are_shown_on_the_failing_span_and_counted() -> None:
    provider, _, out = _tree_provider()
    tracer = provider.get_tracer("test")
    ctxrelay.instrument(tracer_provider=provider)

    def fails() -> None:
        raise KeyError("missing")

    with tracer.start_as_current_span("request"):
        with ThreadPoolExecutor(1) as pool:
            with pytest.raises(KeyError):
                pool.submit(fails).result()
        # An error status without a description: the recorded exception is shown.
        with tracer.start_as_current_span("silent") as span:
            span.record_exception(RuntimeError("from the event"))
            span.set_status(trace.Status(trace.StatusCode.ERROR))

    (lines,) = _trees(out.getvalue())
    assert "2 errors" in lines[0]
    assert "✗ KeyError: 'missing'" in lines[_find(lines, "⇢ ThreadPoolExecutor fails")]
    assert "✗ RuntimeError: from the event" in lines[_find(lines, "silent")]
    assert "✗" not in lines[_find(lines, "request")]


def test_listener_dispatches_show_how_many_listeners_were_there() -> None:
    from attrs import define
    from griptape.events import BaseEvent, EventBus, EventListener

    @define
    class Ping(BaseEvent):
        pass

    provider, _, out = _tree_provider()
    tracer = provider.get_tracer("test")
    ctxrelay.instrument(tracer_provider=provider)

    def scenario() -> None:
        EventBus.add_event_listeners([EventListener(on_event=lambda event: None)])
        with tracer.start_as_current_span("request"):
            with ThreadPoolExecutor(1, thread_name_prefix="pub") as pool:
                pool.submit(EventBus.publish_event, Ping()).result()

    contextvars.copy_context().run(scenario)
    (lines,) = _trees(out.getvalue())
    dispatch = lines[_find(lines, "✉ griptape dispatch Ping")]
    assert "[listeners: 1]" in dispatch
    _assert_child(lines, "⇢ ThreadPoolExecutor publish_event", "✉ griptape dispatch Ping")
    _assert_child(lines, "✉ griptape dispatch Ping", "✉ griptape listener")


def test_children_arriving_in_any_order_are_sorted_under_their_parents() -> None:
    tracer, memory = _collected()
    with tracer.start_as_current_span("root"):
        for name in ("first", "second", "third"):
            with tracer.start_as_current_span(name):
                with tracer.start_as_current_span(f"{name}.inner"):
                    pass
    spans = list(memory.get_finished_spans())
    root = next(s for s in spans if s.name == "root")
    others = [s for s in spans if s is not root]
    random.Random(7).shuffle(others)

    out = io.StringIO()
    exporter = TreeSpanExporter(out)
    for span in others:  # one by one, in a shuffled order: nothing printed yet
        assert exporter.export([span]) is SpanExportResult.SUCCESS
    assert out.getvalue() == ""
    exporter.export([root])

    (lines,) = _trees(out.getvalue())
    names = [line.split("─ ")[-1].split("  ")[0] for line in lines[2:]]
    assert names == ["first", "first.inner", "second", "second.inner", "third", "third.inner"]
    for name in ("first", "second", "third"):
        _assert_child(lines, "root", f"─ {name} ")
        _assert_child(lines, f"─ {name} ", f"{name}.inner")


def test_spans_whose_parent_is_missing_are_shown_not_lost() -> None:
    tracer, memory = _collected()
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("lost-parent") as lost:
            with tracer.start_as_current_span("orphan"):
                with tracer.start_as_current_span("orphan.child"):
                    pass
    spans = [s for s in memory.get_finished_spans() if s.name != "lost-parent"]
    lost_id = f"{lost.get_span_context().span_id:016x}"

    out = io.StringIO()
    TreeSpanExporter(out).export(spans)

    (lines,) = _trees(out.getvalue())
    assert "3 spans" in lines[0]
    orphan = lines[_find(lines, "orphan  ")]
    assert _depth(orphan) == 0
    assert f"(parent {lost_id} not exported)" in orphan
    _assert_child(lines, "orphan  ", "orphan.child")
    assert _find(lines, "root") < _find(lines, "orphan  "), "the real root comes first"


def test_a_remote_parent_makes_a_local_root() -> None:
    """A server span under an incoming traceparent is printed when it ends."""
    provider, _, out = _tree_provider()
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    ctx = trace.set_span_in_context(NonRecordingSpan(remote))
    with provider.get_tracer("test").start_as_current_span("GET /items", context=ctx):
        pass
    (lines,) = _trees(out.getvalue())
    assert format_trace_id(0xABC) in lines[0]
    assert "not exported" not in lines[1]


def test_work_ending_after_its_root_is_printed_as_a_continuation_when_it_ends() -> None:
    """A thread nobody joined ends after the request: its subtree is printed when its top
    ends, labelled with the printed span it hangs under (never "not exported")."""
    provider, _, out = _tree_provider()
    tracer = provider.get_tracer("test")
    ctxrelay.instrument(tracer_provider=provider)
    release = threading.Event()

    def background() -> None:
        release.wait(10)
        with tracer.start_as_current_span("cleanup"):
            pass

    with tracer.start_as_current_span("request"):
        thread = threading.Thread(target=background, name="bg")
        thread.start()
    (first,) = _trees(out.getvalue())
    assert "request" in first[1] and len(first) == 2

    release.set()
    thread.join()
    late = _trees(out.getvalue())[1]
    assert "continued" in late[0]
    assert first[0].split(" · ")[0] == late[0].split(" · ")[0], "same trace id"
    assert "(under request, printed above)" in late[1] and "not exported" not in late[1]
    _assert_child(late, "⇢ Thread background", "cleanup")


def _gradio_like_trace() -> list[ReadableSpan]:
    """A request that returns before the job it enqueued runs (Gradio's queue)."""
    tracer, memory = _collected()
    with tracer.start_as_current_span("POST /queue/join") as join:
        pass
    job = trace.set_span_in_context(join)
    with tracer.start_as_current_span("gradio.queue handler", context=job):
        with tracer.start_as_current_span("handler"):
            with tracer.start_as_current_span("griptape dispatch"):
                pass
    return list(memory.get_finished_spans())


def test_identical_runs_print_identical_pieces_whatever_the_batching() -> None:
    spans = _gradio_like_trace()
    outputs = []
    for batches in ([spans], [[s] for s in spans], [spans[:2], spans[2:]], [spans[:1], spans[1:]]):
        out = io.StringIO()
        exporter = TreeSpanExporter(out, max_per_second=0)
        for batch in batches:
            exporter.export(batch)
        exporter.shutdown()
        outputs.append(re.sub(r"\d+(\.\d+)? (ms|s)\b", "", out.getvalue()))
    assert len(set(outputs)) == 1, outputs
    first, continued = _trees(outputs[0])
    assert [line.strip() for line in first[1:]] == ["POST /queue/join"]
    assert "continued" in continued[0]
    assert "(under POST /queue/join, printed above)" in continued[1]
    _assert_child(continued, "gradio.queue handler", "─ handler")


def test_the_root_thread_is_never_guessed_from_a_span_in_another_thread(monkeypatch) -> None:
    """With hop spans off, a listener dispatch in a worker thread sits right under the
    root: its thread.name is not the root's."""
    monkeypatch.setenv("CTXRELAY_HOP_SPANS", "0")
    provider, _, out = _tree_provider()
    tracer = provider.get_tracer("test")
    ctxrelay.instrument(tracer_provider=provider)
    from griptape.events import BaseEvent, EventBus, EventListener

    EventBus.add_event_listener(listener := EventListener(lambda event: None))
    try:
        with tracer.start_as_current_span("request"):
            worker = threading.Thread(
                target=lambda: EventBus.publish_event(BaseEvent()), name="worker-1"
            )
            worker.start()
            worker.join()
    finally:
        EventBus.remove_event_listener(listener)
    (lines,) = _trees(out.getvalue())
    assert lines[1].strip().startswith("request") and "worker-1" not in lines[1], lines
    with tracer.start_as_current_span("main", attributes={"thread.name": "MainThread"}):
        pass
    assert "[MainThread]" in _trees(out.getvalue())[1][1]


def test_at_most_the_rate_is_printed_and_the_rest_is_counted() -> None:
    tracer, memory = _collected()
    for i in range(30):
        with tracer.start_as_current_span(f"request-{i}"):
            pass
    out = io.StringIO()
    exporter = TreeSpanExporter(out, max_per_second=2)  # bursts of 10
    for span in memory.get_finished_spans():
        exporter.export([span])
    exporter.shutdown()
    text = out.getvalue()
    printed = text.count("── trace ")
    assert 10 <= printed < 30
    (summary,) = [line for line in text.splitlines() if "trees not printed" in line]
    count = int(re.search(r"(\d+) trees not printed", summary).group(1))
    assert printed + count == 30
    assert "over 2 per second" in summary


def test_a_bad_rate_warns_once_and_uses_the_default() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exporter = TreeSpanExporter(io.StringIO(), env={"CTXRELAY_TREE_MAX_PER_SECOND": "fast"})
    (warning,) = [w for w in caught if w.category is ConfigWarning]
    assert "CTXRELAY_TREE_MAX_PER_SECOND='fast'" in str(warning.message)
    assert "allowed values: a number >= 0" in str(warning.message)
    assert exporter._budget.rate == 10


def test_a_trace_whose_root_never_ended_is_printed_at_shutdown() -> None:
    tracer, memory = _collected()
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("done"):
            pass
    out = io.StringIO()
    exporter = TreeSpanExporter(out)
    exporter.export([s for s in memory.get_finished_spans() if s.name == "done"])
    assert out.getvalue() == ""
    exporter.shutdown()
    (lines,) = _trees(out.getvalue())
    assert "incomplete" in lines[0] and "not exported" in lines[1]
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.FAILURE
    exporter.shutdown()  # a second shutdown is harmless


# --- bounds, safety, concurrency -------------------------------------------------------
def _children_of_many_traces(count: int, per_trace: int) -> list[list[ReadableSpan]]:
    tracer, memory = _collected()
    for i in range(count):
        with tracer.start_as_current_span(f"root-{i}"):
            for j in range(per_trace):
                with tracer.start_as_current_span(f"child-{i}-{j}"):
                    pass
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in memory.get_finished_spans():
        by_trace.setdefault(span.context.trace_id, []).append(span)
    return list(by_trace.values())


def test_memory_is_bounded_by_printing_the_oldest_trace_early() -> None:
    traces = _children_of_many_traces(3, 2)
    out = io.StringIO()
    exporter = TreeSpanExporter(out, max_traces=2)
    for spans in traces:
        exporter.export([s for s in spans if not s.name.startswith("root")])
    (evicted,) = _trees(out.getvalue())
    assert "printed early: too many traces buffered" in evicted[0]
    assert "child-0-0" in "\n".join(evicted)

    out = io.StringIO()
    exporter = TreeSpanExporter(out, max_spans=3)
    for spans in traces:
        exporter.export([s for s in spans if not s.name.startswith("root")])
    assert all("too many spans buffered" in t[0] for t in _trees(out.getvalue()))
    assert len(_trees(out.getvalue())) == 2


def test_spans_over_the_per_trace_cap_are_counted_not_kept() -> None:
    (spans,) = _children_of_many_traces(1, 5)
    out = io.StringIO()
    TreeSpanExporter(out, max_spans_per_trace=3).export(spans)  # root last: ends last
    (lines,) = _trees(out.getvalue())
    assert "3 spans" in lines[0] and "3 spans dropped" in lines[0]


def test_a_failing_output_never_raises_into_the_sdk() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(TreeSpanExporter(Broken())))
    with pytest.warns(ConfigWarning) as told:
        for _ in range(3):
            with provider.get_tracer("test").start_as_current_span("root"):
                pass  # ending the span exports it synchronously: no exception reaches us
    # One warning per exporter, not one per lost tree.
    assert [str(w.message) for w in told] == [
        "ctxrelay: writing trace trees to the stream given to TreeSpanExporter failed "
        "(OSError: disk full); trees are lost while it fails."
    ]
    exporter = TreeSpanExporter(Broken())
    with pytest.warns(ConfigWarning):
        result = exporter.export(list(_children_of_many_traces(1, 1)[0]))
    assert result is SpanExportResult.FAILURE


def test_ascii_only_streams_get_an_ascii_tree() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(TreeSpanExporter(stream)))
    ctxrelay.instrument(tracer_provider=provider)
    with provider.get_tracer("test").start_as_current_span("root"):
        thread = threading.Thread(target=lambda: None, name="w")
        thread.start()
        thread.join()
    text = raw.getvalue().decode("ascii")
    assert ">> Thread <lambda>" in text and "MainThread -> w" in text


def test_concurrent_exports_print_each_trace_once_and_whole() -> None:
    traces = _children_of_many_traces(40, 3)
    out = io.StringIO()
    exporter = TreeSpanExporter(out)

    def feed(chunk: list[list[ReadableSpan]]) -> None:
        for spans in chunk:
            for span in spans:  # children first, root last: as the SDK delivers them
                exporter.export([span])

    threads = [threading.Thread(target=feed, args=(traces[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    trees = _trees(out.getvalue())
    assert len(trees) == 40
    assert len({t[0].split(" · ")[0] for t in trees}) == 40
    for tree in trees:
        assert "4 spans" in tree[0] and len(tree) == 5
        index = tree[1].split()[0].split("-")[1]
        assert all(f"child-{index}-" in line for line in tree[2:]), tree


# --- selection through the standard OTEL_TRACES_EXPORTER -------------------------------
def test_the_entry_point_is_what_the_sdk_imports() -> None:
    from opentelemetry.sdk._configuration import _import_exporters

    group = entry_points(group="opentelemetry_traces_exporter")
    (point,) = [e for e in group if e.name == "ctxrelay_tree"]
    assert point.load() is TreeSpanExporter
    traces, _, _ = _import_exporters(["ctxrelay_tree"], [], [])
    assert traces == {"ctxrelay_tree": TreeSpanExporter}


def test_otel_traces_exporter_selects_it_and_tree_file_redirects_it(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
        import threading
        from opentelemetry.sdk._configuration import _OTelSDKConfigurator
        _OTelSDKConfigurator().configure()  # what opentelemetry-instrument runs
        import ctxrelay
        from opentelemetry import trace
        ctxrelay.instrument()
        with trace.get_tracer("app").start_as_current_span("main-work"):
            t = threading.Thread(target=print, args=("hi",), name="printer")
            t.start(); t.join()
        trace.get_tracer_provider().shutdown()
        """
        )
    )
    out_file = tmp_path / "trees.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CTXRELAY_"))}
    env.update(
        OTEL_TRACES_EXPORTER="ctxrelay_tree",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        CTXRELAY_TREE_FILE=str(out_file),
    )
    done = subprocess.run(
        [sys.executable, str(app)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "── trace" not in done.stderr
    (lines,) = _trees(out_file.read_text(encoding="utf-8"))
    _assert_child(lines, "main-work", "⇢ Thread print")
    assert "MainThread → printer" in lines[2]

    del env["CTXRELAY_TREE_FILE"]  # default: stderr
    done = subprocess.run(
        [sys.executable, str(app)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "⇢ Thread print" in done.stderr


def test_an_unusable_tree_file_warns_once_and_falls_back_to_stderr(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-dir" / "trees.txt"
    exporter = TreeSpanExporter(env={"CTXRELAY_TREE_FILE": str(missing)})
    spans = _children_of_many_traces(2, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for trace_spans in spans:
            assert exporter.export(trace_spans) is SpanExportResult.SUCCESS
    assert len(caught) == 1 and caught[0].category is ConfigWarning
    message = str(caught[0].message)
    assert "CTXRELAY_TREE_FILE" in message and "stderr, stdout" in message
    assert capsys.readouterr().err.count("── trace") == 2


def test_a_very_deep_trace_renders_without_recursion() -> None:
    tracer, memory = _collected()
    opened = []
    context = None
    for depth in range(1500):  # deeper than the default recursion limit
        span = tracer.start_span(f"level-{depth}", context=context)
        context = trace.set_span_in_context(span)
        opened.append(span)
    for span in reversed(opened):
        span.end()
    out = io.StringIO()
    TreeSpanExporter(out).export(memory.get_finished_spans())
    (lines,) = _trees(out.getvalue())
    assert len(lines) == 1501
    assert _depth(lines[-1]) == 1499 and "level-1499" in lines[-1]
