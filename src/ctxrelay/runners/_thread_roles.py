"""Which threads never capture a context, and which runner a started thread's hop names.

Not a runner (it is in no table): the registries the thread runner consults at every
``Thread.start()``, and that other runners feed.

**Threads that serve many pieces of work never capture.**  A pool worker, a pool's
handler threads, a queue's feeder thread live for many tasks: a context captured when
one is started would pin whatever the starting request held for the thread's whole
life (a leak, a stale snapshot, and a hop span that never ends).  Pools carry the
context per task instead.  They are recognised by *name* (the target function's or the
thread class's module and qualified name), so that:

* the exemption holds whatever is included or excluded (``CTXRELAY_EXCLUDE=futures``
  leaves ``ThreadPoolExecutor`` workers exempt: the pool's own patch need not be on);
* it survives ``importlib.reload`` of the pool's module (new function objects, same
  names);
* nothing is imported to register it.

The list (read against CPython 3.10-3.13, anyio 4.16, trio 0.35, distributed 2026.8.0,
tornado 6.6.1, celery 5.7.0 and sentry-sdk 2.75.0; docs/runners.md lists it):
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "EXEMPT_CLASSES",
    "EXEMPT_TARGETS",
    "EXEMPT_TARGET_PREFIXES",
    "exempt_class",
    "exempt_target",
    "is_exempt",
    "naming_threads",
    "runner_name",
    "threads_started_as",
]

T = TypeVar("T")
_Thread = threading.Thread
_MethodType = types.MethodType
_FunctionType = types.FunctionType

#: ``(module, qualname)`` of thread targets that serve many pieces of work.  Frozen
#: (:func:`exempt_target` replaces it): what is exempt in a module is decided once
#: (:data:`_memory`).
EXEMPT_TARGETS: frozenset[tuple[str, str]] = frozenset(
    {
        # concurrent.futures.ThreadPoolExecutor's workers
        ("concurrent.futures.thread", "_worker"),
        # multiprocessing.pool.ThreadPool: workers and the three handler threads
        ("multiprocessing.pool", "worker"),
        ("multiprocessing.pool", "Pool._handle_workers"),
        ("multiprocessing.pool", "Pool._handle_tasks"),
        ("multiprocessing.pool", "Pool._handle_results"),
        # multiprocessing.Queue's feeder thread (also under ProcessPoolExecutor's queues)
        ("multiprocessing.queues", "Queue._feed"),
        # multiprocessing's fd/handle sharing server, and a manager's server threads
        ("multiprocessing.resource_sharer", "_ResourceSharer._serve"),
        ("multiprocessing.managers", "Server.accepter"),
        ("multiprocessing.managers", "Server.handle_request"),
        # logging.handlers.QueueListener
        ("logging.handlers", "QueueListener._monitor"),
        # asyncio.run()'s shutdown_default_executor() helper (and anyio's copy for 3.10)
        ("asyncio.base_events", "BaseEventLoop._do_shutdown"),
        ("anyio._backends._asyncio", "_shutdown_default_executor.<locals>._do_shutdown"),
        # asyncio's ThreadedChildWatcher: one waitpid thread per subprocess (3.8-3.13)
        ("asyncio.unix_events", "ThreadedChildWatcher._do_waitpid"),
        # anyio: the blocking portal's event loop (anyio gives it an empty context on
        # 3.14 itself) and the socket selector thread
        ("anyio.from_thread", "start_blocking_portal.<locals>.run_blocking_portal"),
        ("anyio._core._asyncio_selector_thread", "Selector.run"),
        # trio's thread cache (trio.to_thread.run_sync, anyio's trio backend): a worker is
        # started by the first requester and serves every later job; trio runs each job in
        # the requester's own copy already
        ("trio._core._thread_cache", "WorkerThread._work"),
        # Dask distributed's worker pool (a ThreadPoolExecutor subclass with a worker loop of
        # its own, and the copy of concurrent.futures.thread it vendors); tasks carry their
        # values in the task itself (runners/dask.py)
        ("distributed.threadpoolexecutor", "_worker"),
        ("distributed._concurrent_futures_thread", "_worker"),
        # tornado's selector thread (AddThreadSelectorEventLoop: Windows' proactor loop, or
        # asked for explicitly): serves the loop's every socket
        ("tornado.platform.asyncio", "SelectorThread._run_select"),
    }
)

#: ``(module, qualname)`` of thread classes that serve many pieces of work.
EXEMPT_CLASSES: set[tuple[str, str]] = {
    # ProcessPoolExecutor's manager thread (3.9+)
    ("concurrent.futures.process", "_ExecutorManagerThread"),
    # anyio.to_thread's workers (anyio copies the context per call itself)
    ("anyio._backends._asyncio", "WorkerThread"),
    # logging.config.listen()'s server thread
    ("logging.config", "listen.<locals>.Server"),
    # celery's timer thread (ETA tasks, heartbeats, every scheduled callback)
    ("celery.utils.timer2", "Timer"),
}

#: Module prefixes of telemetry SDKs whose own background threads (exporters, batchers,
#: flushers, profilers) are started lazily, often inside the first request that
#: produces something to send, and live for the process: spans about exporting spans
#: would recurse, and a captured context would stay pinned.
EXEMPT_TARGET_PREFIXES: tuple[str, ...] = ("opentelemetry.", "sentry_sdk.")


def _name_of(fn: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` of a plain function or method, else None.

    Only functions are looked at: a user's callable object may answer attribute
    lookups in any way (``__getattr__`` raising), and is never a pool's worker.
    """
    if type(fn) is types.MethodType:
        fn = fn.__func__
    if type(fn) is types.FunctionType:
        return fn.__module__, fn.__qualname__
    return None


def exempt_target(fn: Callable[..., Any]) -> None:
    """Threads whose ``target`` is ``fn`` (by name) never capture."""
    global EXEMPT_TARGETS
    name = _name_of(fn)
    if name is not None:
        EXEMPT_TARGETS = EXEMPT_TARGETS | {name}


def exempt_class(cls: type) -> None:
    """Threads of exactly this class (by name) never capture."""
    EXEMPT_CLASSES.add((cls.__module__, cls.__qualname__))


#: Module name -> what :data:`EXEMPT_TARGETS` and :data:`EXEMPT_TARGET_PREFIXES` exempt
#: of its functions: ``True`` all (a telemetry SDK's), a frozenset of qualified names,
#: or ``False`` none (an application's module).  Asked at every ``start()``: one lookup
#: instead of building a ``(module, qualname)`` pair and matching the prefixes.  Keyed
#: by module name strings only (nothing of a user's function is kept alive) and
#: bounded.  Both registries are immutable: replacing either (:func:`exempt_target`,
#: a test's monkeypatch) makes a new, empty memory.
#:
#: ``(targets, prefixes, verdicts)``, one object read at once: a decision is stored in
#: the dict of the registries it was taken from, so that a start deciding from the
#: registries as they were while another thread replaces them can only fill a memory
#: that is already discarded (two globals, checked and then written, let such a start
#: store its stale answer under the new registries).
_memory: tuple[frozenset[tuple[str, str]], tuple[str, ...], dict[str, bool | frozenset[str]]] = (
    EXEMPT_TARGETS,
    EXEMPT_TARGET_PREFIXES,
    {},
)
_VERDICTS_MAX = 512


def _verdict(module: str) -> bool | frozenset[str]:
    """What is exempt in ``module`` (see :data:`_memory`), remembered."""
    global _memory
    targets, prefixes = EXEMPT_TARGETS, EXEMPT_TARGET_PREFIXES
    memory = _memory
    if memory[0] is not targets or memory[1] is not prefixes:
        memory = _memory = (targets, prefixes, {})
    verdicts = memory[2]
    verdict: bool | frozenset[str]
    if module.startswith(prefixes):
        verdict = True
    else:
        verdict = frozenset(name for owner, name in targets if owner == module) or False
    if len(verdicts) >= _VERDICTS_MAX:
        verdicts.clear()
    verdicts[module] = verdict
    return verdict


def is_exempt(thread: threading.Thread) -> bool:
    """True for a thread that must not capture its starter's context.

    Besides the lists above: the telemetry SDKs' own threads
    (:data:`EXEMPT_TARGET_PREFIXES`: OpenTelemetry's batch span processor and metric
    readers, Sentry's transport worker, batchers, profilers and flushers).
    """
    # Asked at every start(): _name_of inlined, a plain Thread's class not looked up, and
    # the target's module decided once (_memory).
    cls = type(thread)
    if cls is not _Thread and (cls.__module__, cls.__qualname__) in EXEMPT_CLASSES:
        return True
    fn = thread.__dict__.get("_target")
    if type(fn) is _MethodType:
        fn = fn.__func__
    if type(fn) is not _FunctionType:
        return False
    module = fn.__module__  # any object: None for a function made without a module
    if type(module) is not str:
        return False
    targets, prefixes, verdicts = _memory
    verdict = verdicts.get(module)
    if verdict is None or targets is not EXEMPT_TARGETS or prefixes is not EXEMPT_TARGET_PREFIXES:
        verdict = _verdict(module)
    if verdict is False:
        return False
    return verdict is True or fn.__qualname__ in verdict


# --- threads started on behalf of another runner ------------------------------------
# Some runners hand work over by starting a thread (a server's thread per request):
# the thread patch carries the context, and the runner only names the hop.
_thread_runner = threading.local()


class threads_started_as:  # used as a context manager, like a function
    """Name the hop of the threads this thread starts inside the ``with`` block.

    ``with threads_started_as("socketserver"): ...``: their hop spans report that runner
    instead of ``Thread``.  Propagation itself is the thread patch's, unchanged.
    """

    __slots__ = ("previous", "runner")

    def __init__(self, runner: str) -> None:
        self.runner = runner
        self.previous: str | None = None

    def __enter__(self) -> None:
        self.previous = getattr(_thread_runner, "name", None)
        _thread_runner.name = self.runner

    def __exit__(self, *exc: object) -> None:
        _thread_runner.name = self.previous


def naming_threads(
    runner: str,
) -> Callable[[Callable[..., T], Any, tuple[Any, ...], dict[str, Any]], T]:
    """A wrapt wrapper: threads started during the wrapped call get hops named ``runner``."""

    def wrapper(
        wrapped: Callable[..., T], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        with threads_started_as(runner):
            return wrapped(*args, **kwargs)

    return wrapper


def runner_name() -> str | None:
    """The runner named by an enclosing :class:`threads_started_as` in this thread."""
    return getattr(_thread_runner, "name", None)
