"""Carriers: the hand-over that crosses a process or machine boundary.

A :class:`contextvars.Context` cannot be pickled, and most ContextVars must not leave
their process (a DB session, a listener list).  So crossing is opt-in per variable:
the user *declares* module-level ContextVars (``CTXRELAY_PROCESS_VARS`` or
``instrument(process_vars=...)``), and at hand-over the submitting thread captures a
*carrier*, plain data that the engine ships with the task (pickled with its
arguments, or in a message's headers)::

    {"vars": {"myapp.ctx:REQUEST_ID": "r-42", ...},   # declared and set, picklable
     "unset": ["myapp.ctx:TENANT"],                   # declared, not set here
     "trace": {"traceparent": "00-...", "baggage": "..."},  # opentelemetry.propagate
     "hop": ["ProcessPoolExecutor", wall_ns, pid, host] or None}

The receiving side builds a fresh context for the task's run only (:func:`run`), or
sets and later resets the values around it (:func:`enter` / :func:`leave`, for engines
that signal before and after a task, like Celery).  Nothing undeclared ever crosses;
the trace context always does (through the globally configured propagator, W3C
``traceparent``/``tracestate`` and ``baggage`` by default).

Limits, each with ONE warning naming the variable (the task still runs, without it):

* a declared path that does not resolve to a module-level ContextVar;
* a value that cannot be pickled (or, in a message, encoded by the engine's serializer);
* a value that would take the carried values past :data:`MAX_BYTES` (pickled size):
  it is left out, the variables declared before it still cross.

Forked pool workers inherit a snapshot of the forking thread's context (the first
submitter's values, undeclared ones included).  :func:`run` never lets it reach a
task: the task's context starts from the worker's own context *less everything
inherited at the fork*, then gets exactly its submitter's declared values.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextvars import Context, ContextVar, copy_context
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from ctxrelay import frames, otel_fast, spans
from ctxrelay.version import __version__

__all__ = [
    "ATTR_ORIGIN_HOST",
    "ATTR_ORIGIN_PID",
    "MAX_BYTES",
    "Task",
    "capture",
    "declare",
    "declared_paths",
    "enter",
    "leave",
    "run",
]

T = TypeVar("T")
logger = logging.getLogger("ctxrelay")

#: Bound on the pickled size of the carried values, per task (trace headers excluded:
#: W3C bounds those).  A value that would cross it stays behind, with one warning.
MAX_BYTES = 64 * 1024

ATTR_ORIGIN_PID = "ctxrelay.origin.process.pid"
ATTR_ORIGIN_HOST = "ctxrelay.origin.host.name"
ATTR_PROCESS_PID = "process.pid"  # OpenTelemetry semantic conventions
ATTR_HOST_NAME = "host.name"

_HOST = socket.gethostname()[: spans.MAX_ATTRIBUTE_LENGTH]
_MISSING = object()

# --- declaration -------------------------------------------------------------------
_lock = threading.Lock()
_specs: tuple[Any, ...] = ()
#: (path, var) once resolved; None until the first capture after declare().
_resolved: tuple[tuple[str, ContextVar[Any]], ...] | None = None
#: path -> ContextVar on the receiving side.
_by_path: dict[str, ContextVar[Any] | None] = {}
_warned: set[tuple[str, str]] = set()


class CarrierWarning(UserWarning):
    """A declared process variable could not be carried (it is left out, the task runs)."""


def _warn_once(name: str, reason: str, message: str) -> None:
    with _lock:
        if (name, reason) in _warned:
            return
        _warned.add((name, reason))
    try:
        warnings.warn(f"ctxrelay: {message}", CarrierWarning, stacklevel=3)
    except Exception:
        pass


def declare(specs: Iterable[Any]) -> None:
    """The ContextVars whose values cross: ``"module:attribute"`` strings or the vars."""
    global _specs, _resolved
    specs = tuple(specs)
    with _lock:
        if specs != _specs:
            _specs = specs
            _resolved = None


def _resolve_path(path: str) -> ContextVar[Any] | None:
    """The ContextVar at ``module:attribute`` (imported if needed), or None."""
    found = _by_path.get(path, _MISSING)
    if found is not _MISSING:
        return found  # type: ignore[return-value]
    var: Any = None
    module_name, sep, attribute = path.partition(":")
    if sep and module_name and attribute:
        try:
            var = importlib.import_module(module_name)
            for part in attribute.split("."):
                var = getattr(var, part)
        except Exception:
            var = None
    resolved: ContextVar[Any] | None = var if isinstance(var, ContextVar) else None
    _by_path[path] = resolved
    return resolved


def _path_of(var: ContextVar[Any]) -> str | None:
    """``module:attribute`` of a module-level ContextVar (the other side imports it)."""
    for name, module in list(sys.modules.items()):
        try:
            for attribute, value in vars(module).items():
                if value is var:
                    return f"{name}:{attribute}"
        except TypeError:
            continue
    return None


def _declared() -> tuple[tuple[str, ContextVar[Any]], ...]:
    global _resolved
    resolved = _resolved
    if resolved is not None:
        return resolved
    found: list[tuple[str, ContextVar[Any]]] = []
    for spec in _specs:
        if isinstance(spec, ContextVar):
            path = _path_of(spec)
            if path is None:
                _warn_once(
                    spec.name,
                    "path",
                    f"process variable {spec.name!r} is not a module-level attribute of an "
                    "imported module, so another process cannot find it; it does not cross. "
                    "Declare it as 'module:attribute' (CTXRELAY_PROCESS_VARS).",
                )
                continue
            _by_path[path] = spec
            found.append((path, spec))
            continue
        var = _resolve_path(str(spec))
        if var is None:
            _warn_once(
                str(spec),
                "path",
                f"process variable {spec!r} does not resolve to a module-level ContextVar; "
                "allowed values: 'module:attribute' naming a contextvars.ContextVar. It "
                "does not cross.",
            )
            continue
        found.append((str(spec), var))
    resolved = tuple(found)
    with _lock:
        if _specs is not None:
            _resolved = resolved
    return resolved


def declared_paths() -> tuple[str, ...]:
    """The paths of the declared variables that resolve (what may cross)."""
    return tuple(path for path, _ in _declared())


_SCALARS = (int, float, bool, type(None))
#: What pickling adds to a text value's length (counted, not pickled: see _pickled_size).
_TEXT_OVERHEAD = 8
_TEXT = (str, bytes)


def _pickled_size(value: Any) -> int:
    """The pickled size; raises if ``value`` cannot be pickled.

    Text and scalars (the usual request ids and tenants) always pickle, to about their
    length: that is what is counted for them, without pickling on every hand-over.
    """
    kind = type(value)
    if kind in _TEXT:
        return len(value) + _TEXT_OVERHEAD
    if kind in _SCALARS:
        return 16
    return len(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


# --- the submitting side -----------------------------------------------------------
#: (the global propagator last looked at, whether it injects from the context only)
_textmap_seen: tuple[object, bool] = (None, False)


def _standard_textmap() -> bool:
    """Is the global propagator OpenTelemetry's default (W3C trace context, baggage)?

    Those inject only what the OpenTelemetry context holds; another propagator might
    inject from elsewhere, so it is always asked.
    """
    global _textmap_seen
    textmap = propagate.get_global_textmap()
    seen, standard = _textmap_seen
    if textmap is seen:
        return standard
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    known = (TraceContextTextMapPropagator, W3CBaggagePropagator)
    inner = getattr(textmap, "_propagators", None)
    standard = type(textmap) in known or (
        type(textmap) is CompositePropagator
        and isinstance(inner, (list, tuple))
        and all(type(one) in known for one in inner)
    )
    _textmap_seen = (textmap, standard)
    return standard


def capture(
    runner: str,
    *,
    hop: bool = False,
    size: Callable[[Any], int] = _pickled_size,
    trace_context: bool = True,
) -> dict[str, Any]:
    """The carrier for one task, in the submitting thread.  Never raises.

    ``hop``: a hop span is recorded on the receiving side (the relay's decision).

    ``size(value)`` returns the encoded size and raises when the engine cannot encode
    the value (pickle by default; a message engine passes its serializer).  With
    ``trace_context=False`` another instrumentation carries the trace (and records the
    task's span), so the carrier holds the values only.
    """
    carrier: dict[str, Any] = {}
    try:
        declared = _resolved
        if declared is None:
            declared = _declared()
        if declared:
            values: dict[str, Any] = {}
            unset: list[str] = []
            total = 0
            for path, var in declared:
                value = var.get(_MISSING)
                if value is _MISSING:
                    unset.append(path)
                    continue
                try:
                    kind = type(value)  # the usual ids and tenants, without a call each
                    if kind is str and size is _pickled_size:
                        total += len(value) + _TEXT_OVERHEAD  # _pickled_size, inlined
                    else:
                        total += size(value)
                except Exception as exc:
                    _warn_once(
                        path,
                        "encode",
                        f"the value of process variable {path!r} cannot be encoded for "
                        f"{runner} ({type(exc).__name__}: {exc}); the task runs without it.",
                    )
                    unset.append(path)
                    continue
                if total > MAX_BYTES:
                    _warn_once(
                        path,
                        "size",
                        f"the value of process variable {path!r} takes the carried values "
                        f"past {MAX_BYTES} bytes; the task runs without it.",
                    )
                    unset.append(path)
                    total -= size(value)
                    continue
                values[path] = value
            if values:
                carrier["vars"] = values
            if unset:
                carrier["unset"] = unset
        if trace_context:
            # An empty OpenTelemetry context (no span, no baggage) has nothing to
            # propagate: the propagators' inject (~1.5 us) is skipped.  None: another
            # runtime context, asked through the public API.
            current = otel_fast.current_otel_context()
            if current is None or current or not _standard_textmap():
                headers: dict[str, str] = {}
                propagate.inject(headers)
                if headers:
                    carrier["trace"] = headers
            if hop:
                carrier["hop"] = [runner, time.time_ns(), os.getpid(), _HOST]
    except Exception:  # pragma: no cover - defensive: the task runs, uncarried
        logger.debug("ctxrelay: capturing a carrier failed", exc_info=True)
    return carrier


# --- the receiving side ------------------------------------------------------------
#: What this process inherited at its last fork: {var: value}.  Never reaches a task.
_fork_snapshot: dict[ContextVar[Any], Any] = {}


def _remember_fork_snapshot() -> None:
    global _fork_snapshot
    try:
        _fork_snapshot = dict(copy_context().items())
    except Exception:  # pragma: no cover - defensive
        _fork_snapshot = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_remember_fork_snapshot)


def _fresh_context(carrier: Mapping[str, Any]) -> Context:
    """The worker's own context, less the fork snapshot and the submitter's unset vars."""
    snapshot = _fork_snapshot
    unset_paths = carrier.get("unset")
    if not snapshot and not unset_paths:  # a spawned worker: nothing to leave out
        return copy_context()
    unset = [_resolve_path(path) for path in unset_paths or ()]
    fresh = Context()
    for var, value in copy_context().items():
        if snapshot.get(var, _MISSING) is value or var in unset:
            continue
        fresh.run(var.set, value)
    return fresh


def _tracer() -> trace.Tracer:
    # The global provider of *this* process: an activated child exports, others no-op.
    return trace.get_tracer("ctxrelay", __version__)


def _start_hop(carrier: Mapping[str, Any], named: Any, task_name: str | None) -> Any:
    hop = carrier.get("hop")
    if not hop:
        return None
    runner, handed_ns, origin_pid, origin_host = hop
    attributes: dict[str, Any] = {
        spans.ATTR_RUNNER: runner,
        spans.CODE_FUNCTION_NAME: task_name or spans.callable_name(named),
        spans.ATTR_CONTEXT_VARS: len(carrier.get("vars", ())),
        ATTR_PROCESS_PID: os.getpid(),
        ATTR_HOST_NAME: _HOST,
        ATTR_ORIGIN_PID: origin_pid,
        ATTR_ORIGIN_HOST: str(origin_host)[: spans.MAX_ATTRIBUTE_LENGTH],
        spans.THREAD_ID: threading.get_ident(),
        spans.THREAD_NAME: threading.current_thread().name[: spans.MAX_ATTRIBUTE_LENGTH],
    }
    if handed_ns is not None:  # wall clocks: exact on one machine, skewed across
        attributes[spans.ATTR_QUEUE_WAIT_MS] = max(0.0, (time.time_ns() - handed_ns) / 1e6)
    short = (task_name or spans.short_name(named)).rsplit(".", 1)[-1]
    name = f"{runner} {short}"[: spans.MAX_ATTRIBUTE_LENGTH]
    return _tracer().start_span(name, kind=SpanKind.CONSUMER, attributes=attributes)


def _set_values(carrier: Mapping[str, Any], only: frozenset[str] | None) -> list[Any]:
    tokens = []
    for path, value in carrier.get("vars", {}).items():
        if only is not None and path not in only:
            continue  # not declared on this side: never set
        var = _by_path.get(path) or _resolve_path(path)
        if var is None:
            _warn_once(
                path,
                "path",
                f"process variable {path!r} does not resolve to a module-level ContextVar "
                "in this process; the task runs without it.",
            )
            continue
        tokens.append((var, var.set(value)))
    return tokens


def _run_inside(
    carrier: Mapping[str, Any],
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    named: Any,
) -> T:
    span = None
    try:
        _set_values(carrier, None)
        headers = carrier.get("trace")
        if headers:
            otel_context.attach(propagate.extract(headers))
        if "hop" in carrier:
            span = _start_hop(carrier, fn if named is None else named, None)
            if span is not None:
                otel_context.attach(trace.set_span_in_context(span))
    except Exception:  # pragma: no cover - defensive: the task runs
        logger.debug("ctxrelay: restoring a carrier failed", exc_info=True)
    # The context is this call's own and is dropped after it: no token needs resetting.
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:
        if span is not None:
            spans.record_failure(span, exc)
        raise
    finally:
        if span is not None:
            span.end()
        span = None


def run(
    carrier: Mapping[str, Any] | None,
    fn: Callable[..., T],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    fresh: bool = True,
    named: Any = None,
) -> T:
    """Run ``fn`` once, on the receiving side, in a context of its own built from ``carrier``.

    ``fresh`` drops the fork snapshot (pool workers); ``fresh=False`` keeps the current
    context as Python left it (a forked ``multiprocessing.Process``) and adds the values.
    """
    kwargs = kwargs or {}
    if not carrier:
        return fn(*args, **kwargs)
    try:
        context = _fresh_context(carrier) if fresh else copy_context()
    except Exception:  # pragma: no cover - defensive
        return fn(*args, **kwargs)
    try:
        return context.run(_run_inside, carrier, fn, args, kwargs, named)
    finally:
        context = None  # type: ignore[assignment]  # a kept traceback must not pin it


class Entered:
    """What :func:`enter` set, for :func:`leave` to undo (in the same thread)."""

    __slots__ = ("otel_token", "span", "span_token", "tokens")

    def __init__(self) -> None:
        self.tokens: list[Any] = []
        self.otel_token: object = None
        self.span: Any = None
        self.span_token: object = None


def enter(
    carrier: Mapping[str, Any] | None,
    *,
    only: frozenset[str] | None,
    task_name: str | None = None,
) -> Entered | None:
    """Set the carried values and trace in the current context (before a task).  Never raises.

    ``only`` limits the values to the variables declared on this side.
    """
    if not carrier:
        return None
    entered = Entered()
    try:
        entered.tokens = _set_values(carrier, only)
        headers = carrier.get("trace")
        if headers:
            entered.otel_token = otel_context.attach(propagate.extract(headers))
        entered.span = _start_hop(carrier, None, task_name)
        if entered.span is not None:
            entered.span_token = otel_context.attach(trace.set_span_in_context(entered.span))
    except Exception:  # pragma: no cover - defensive
        logger.debug("ctxrelay: restoring a carrier failed", exc_info=True)
    return entered


def leave(entered: Entered | None, error: BaseException | None = None) -> None:
    """Undo :func:`enter` (after the task): the next task on this thread sees none of it."""
    if entered is None:
        return
    try:
        if entered.span is not None:
            if error is not None:
                spans.record_failure(entered.span, error)
            entered.span.end()
        for token in (entered.span_token, entered.otel_token):
            if token is not None:
                otel_context.detach(token)  # type: ignore[arg-type]
        for var, token in reversed(entered.tokens):
            var.reset(token)
    except Exception:  # pragma: no cover - defensive
        logger.debug("ctxrelay: resetting a carrier failed", exc_info=True)
    entered.tokens = []
    entered.span = entered.span_token = entered.otel_token = None


class Task:
    """A picklable callable: ``fn`` plus its carrier; each call runs in a fresh context.

    What process runners ship instead of ``fn``.  Module-level and slot-only, so it
    pickles by reference; unpickling on the other side imports :mod:`ctxrelay.carrier`
    only, whether or not that process is instrumented.
    """

    __slots__ = ("carrier", "fn", "fresh")

    def __init__(self, fn: Callable[..., Any], carrier: dict[str, Any], fresh: bool = True):
        self.fn = fn
        self.carrier = carrier
        self.fresh = fresh

    def __reduce__(self) -> tuple[Any, ...]:
        return (Task, (self.fn, self.carrier, self.fresh))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if at_exit.pid != os.getpid():
            at_exit.ensure()
        try:
            return run(self.carrier, self.fn, args, kwargs, fresh=self.fresh)
        except BaseException as exc:
            # The engine formats this traceback on the worker (a process pool's remote
            # traceback, Dask's): it lists the frames it lists without ctxrelay.
            frames.hide_own_frames(exc)
            raise

    def __repr__(self) -> str:
        return f"<ctxrelay.carrier.Task {self.fn!r}>"

    @property
    def __name__(self) -> str:  # engines name tasks after it (Dask keys)
        return str(getattr(self.fn, "__name__", type(self.fn).__name__))

    def __dask_tokenize__(self) -> Any:  # Dask's tokenize hook
        """Dask names a pure task after its function and arguments: the carrier (a
        timestamp, the submitter's values) must not make every submit a new key."""
        from dask.base import normalize_token

        return ("ctxrelay.carrier.Task", normalize_token(self.fn))


frames.own_frames(Task.__call__, run, _run_inside)


class _AtExit:
    """Flush this process's spans when it ends, however its engine ends it.

    ``multiprocessing`` children leave through ``os._exit`` (fork, forkserver) after
    running its finalizers, not ``atexit``; pool workers are also ended with SIGTERM
    (``Pool.terminate``).  Installed once per process, on its first received task.
    """

    def __init__(self) -> None:
        self.pid = 0

    def ensure(self) -> None:
        pid = os.getpid()
        if self.pid == pid:
            return
        self.pid = pid
        try:
            import atexit

            atexit.register(flush)
            mp_util = sys.modules.get("multiprocessing.util")
            if mp_util is not None:
                mp_util.Finalize(None, flush, exitpriority=1)
                self._on_sigterm()
        except Exception:  # pragma: no cover - defensive
            logger.debug("ctxrelay: could not arrange the flush at exit", exc_info=True)

    @staticmethod
    def _on_sigterm() -> None:
        import multiprocessing
        import signal

        if multiprocessing.parent_process() is None:
            return  # not a multiprocessing child: the application owns its signals
        if threading.current_thread() is not threading.main_thread():
            return
        from ctxrelay.bootstrap import sigterm

        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            sigterm.route_inherited()  # the start-up handler, inherited by a fork
            return  # someone handles SIGTERM already: leave it to them
        if getattr(trace.get_tracer_provider(), "force_flush", None) is None:
            return  # no SDK in this process: nothing to flush, SIGTERM stays the kernel's

        def flush_then_die(signum: int, frame: Any) -> None:
            if sigterm.began():
                return  # the same SIGTERM, sent on to the main thread
            # The handler interrupts the main thread anywhere, a flush of its own
            # included (a pool terminates workers that are already exiting): the
            # exporter's locks are not reentrant, so never flush from inside one.
            if _flushing:
                _die_after_flush[:] = [True]
                return
            if getattr(trace.get_tracer_provider(), "force_flush", None) is None:
                _die()  # no SDK here: nothing to flush
                return
            flush()  # bounded; a SIGTERM landing inside it is deferred to its end
            _die()

        signal.signal(signal.SIGTERM, flush_then_die)
        sigterm.route_to_main_thread(flush_then_die)


def _die() -> None:
    import signal

    from ctxrelay.bootstrap import sigterm

    sigterm.die(signal.SIGTERM)  # after what must run before it (the doctor's report)


at_exit = _AtExit()


_flushing = False
_die_after_flush: list[bool] = []


def defer_death_if_flushing() -> bool:
    """In a SIGTERM handler: True (and death deferred to the flush's end) while a flush runs.

    The handler runs in the main thread, possibly inside :func:`flush`; flushing again
    from there waits on the exporter's lock that the interrupted flush holds, and the
    spans that flush was exporting are lost.
    """
    if _flushing:
        _die_after_flush[:] = [True]
        return True
    return False


def flush(timeout_millis: int = 5000) -> None:
    """Export what this process's tracer provider still holds, bounded.  Never raises.

    The export runs in a helper thread and the caller waits at most ``timeout_millis``:
    the SDK's batch processor does not bound its flush, and an export that never returns
    (a collector that does not answer) must not keep a worker that a pool terminates
    alive, SIGTERM deferred, for ever.
    """
    global _flushing
    nested = _flushing
    _flushing = True
    try:
        from ctxrelay.bootstrap import sigterm

        sigterm.flush_bounded(timeout_millis / 1000)
    except Exception:  # pragma: no cover - defensive
        logger.debug("ctxrelay: flushing spans failed", exc_info=True)
    finally:
        if not nested:
            _flushing = False
            if _die_after_flush:  # SIGTERM arrived during this flush: honour it now
                _die()
