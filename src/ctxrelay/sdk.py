"""Configure the OpenTelemetry SDK from the standard ``OTEL_*`` variables at start-up.

Used by the start-up activations (``ctxrelay run`` and ``CTXRELAY_ENABLED=1``), never by
``ctxrelay.instrument()`` nor by ``opentelemetry-instrument`` (whose own configurator
does this job).  Read against opentelemetry-sdk 1.45 (``opentelemetry/sdk/_configuration``).

Only what the variables ask for is set up, and only its modules are imported:

* traces always (``OTEL_TRACES_EXPORTER``, unset: ctxrelay's trace-tree exporter; ``none``:
  a provider without exporter), with the SDK's own ``TracerProvider``, ``Resource.create``
  (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), sampler (``OTEL_TRACES_SAMPLER`` /
  ``_ARG``, an entry-point sampler too), ``OTEL_PYTHON_ID_GENERATOR``, and ``otlp``
  resolved by ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` as the SDK resolves it;
* metrics only when ``OTEL_METRICS_EXPORTER`` names an exporter, logs only when
  ``OTEL_LOGS_EXPORTER`` does (or the SDK's logging auto-instrumentation is on), by the
  SDK's own functions.  Unlike the SDK's configurator, nothing is installed for a signal
  nobody asked for: an application may still set its own MeterProvider/LoggerProvider,
  and a forked child carries no idle provider's at-fork work;
* ``OTEL_CONFIG_FILE`` (declarative configuration) or ``OTEL_PYTHON_TRACER_CONFIGURATOR``:
  the SDK's configurator does everything, as it would.

Nothing is configured when a real tracer provider is already set (a ``sitecustomize``),
while ``opentelemetry-instrument`` is starting this interpreter, or with
``OTEL_SDK_DISABLED=true``.

**The application's own provider wins.**  The provider set here steps aside: an
application that later calls ``trace.set_tracer_provider(its_own)`` gets it installed
(not "Overriding of current TracerProvider is not allowed"), one notice line says so,
tracers handed out earlier by the start-up provider follow it (as the API's proxy
tracers follow the first provider set), and ctxrelay's own spans follow the global
provider anyway.  A second ``set_tracer_provider`` is refused, as without ctxrelay.

**Nothing idle runs.**  The batch processor's export thread is started on the first span
that ends, not at start-up: a process that records no span has no extra thread, so
``os.fork()`` children, ``threading.active_count()`` and the at-fork hooks are as without
ctxrelay.  Spans are flushed at exit by the SDK's ``atexit`` shutdown.  An installed
exporter (``otlp``, ``console``...) is imported and constructed then too, not at start-up:
the OTLP exporters import ``ssl`` and the rest of their network stack, which an
application that monkey-patches after it started (gevent) must find not yet imported.

A failure never stops the application: one line on stderr says what failed and what
still works (context is carried into threads whatever happens here).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from ctxrelay import lean_imports

# Before the SDK's tracing imports it: psutil, socket and subprocess only when a detector
# that is off by default (process, host, os) asks for them.
lean_imports.load(
    "opentelemetry.sdk.resources",
    lean_imports.SDK_RESOURCES,
    within="opentelemetry.sdk.resources",
)

from opentelemetry.sdk.trace import SpanProcessor, TracerProvider  # noqa: E402

__all__ = ["DEFAULT_EXPORTER", "FALLBACK_EXPORTER", "configure_from_env", "default_exporter"]

#: ``OTEL_TRACES_EXPORTER`` when unset: ctxrelay's trace-tree exporter (no backend needed).
DEFAULT_EXPORTER = "ctxrelay_tree"
#: ... unless ctxrelay's exporter cannot be imported: then the SDK's (and the distro's) ``otlp``.
FALLBACK_EXPORTER = "otlp"
_EXPORTER_GROUP = "opentelemetry_traces_exporter"
_OTEL_AUTO_DIR = os.path.join("opentelemetry", "instrumentation", "auto_instrumentation")
_OTLP = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_INSTALL_HINT = {
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
    "zipkin_json": "opentelemetry-exporter-zipkin-json",
    "zipkin_proto": "opentelemetry-exporter-zipkin-proto-http",
}


class SetupError(Exception):
    """One part of the SDK set-up failed; the message says which setting and why."""


class _NotInstalled(SetupError):
    """``OTEL_TRACES_EXPORTER`` names an exporter this environment does not have."""


def default_exporter() -> str:
    try:
        import ctxrelay.exporters.tree  # noqa: F401 - importable: use it
    except Exception:  # e.g. a partial install
        return FALLBACK_EXPORTER
    return DEFAULT_EXPORTER


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _names(variable: str) -> list[str]:
    """The exporter names in ``variable`` (``none`` and empty entries dropped)."""
    return [n.strip() for n in _env(variable).split(",") if n.strip() and n.strip() != "none"]


def _provider_already_set() -> bool:
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _opentelemetry_instrument_pending() -> bool:
    """True while ``opentelemetry-instrument`` is starting us: its sitecustomize configures."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return any(os.path.normpath(p).endswith(_OTEL_AUTO_DIR) for p in paths if p)


def _entry_point_name(name: str) -> str:
    """``otlp`` -> the entry point the SDK would pick for the OTLP protocol setting."""
    if name != "otlp":
        return name
    protocol = _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
    if not protocol:
        return _OTLP["grpc"]
    if protocol not in _OTLP:
        from ctxrelay.config import shown

        raise SetupError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={shown(protocol)} is not an OTLP protocol "
            f"(allowed: {', '.join(_OTLP)})"
        )
    return _OTLP[protocol]


def _exporter(name: str, report: Callable[[str], None]) -> Any:
    """The exporter ``name`` names: ctxrelay's own at once, an installed one deferred.

    An installed exporter's entry point is looked up here (a missing one is reported at
    start-up), but its module is imported and the exporter constructed only when the
    first span ends (:class:`_DeferredExporter`).
    """
    from ctxrelay.config import shown

    entry = _entry_point_name(name)
    if entry == DEFAULT_EXPORTER:  # ours: no scan of every installed distribution
        from ctxrelay.exporters.tree import TreeSpanExporter

        return TreeSpanExporter()
    from opentelemetry.util._importlib_metadata import entry_points

    found = list(entry_points(group=_EXPORTER_GROUP, name=entry))
    if not found:
        hint = _INSTALL_HINT.get(entry)
        raise _NotInstalled(
            f"OTEL_TRACES_EXPORTER={shown(name)}: no such trace exporter is installed"
            + (
                f" (pip install {hint})"
                if hint
                else f" (no {_EXPORTER_GROUP} entry point {entry!r})"
            )
        )
    return _DeferredExporter(name, found[0], report)


def _installed_exporters() -> str:
    """What ``OTEL_TRACES_EXPORTER`` may name in this environment, for the one line that
    says a name is not installed (the scan reads every installed distribution's metadata:
    only then)."""
    from opentelemetry.util._importlib_metadata import entry_points

    names = {
        one.name
        for one in entry_points(group=_EXPORTER_GROUP)
        if one.name.isprintable() and len(one.name) <= 64
    }
    try:
        if _entry_point_name("otlp") in names:  # as OTEL_EXPORTER_OTLP_PROTOCOL resolves it
            names.add("otlp")
    except SetupError:
        pass
    if default_exporter() == DEFAULT_EXPORTER:
        names.add(DEFAULT_EXPORTER)
    return ", ".join(sorted(names | {"none"}))


class _DeferredExporter:
    """An installed exporter, imported and constructed when the first span ends.

    The OTLP exporters import their network stack at their top (``requests``, ``urllib3``
    and ``ssl``; ``grpc``).  A process that monkey-patches once it has started (a Celery
    worker with ``-P gevent``, gevent's or eventlet's servers) would patch ``ssl`` after
    start-up imported it: gevent warns ("Monkey-patching ssl after ssl has already been
    imported"), and the modules that bound ssl's names at their import keep the
    unpatched ones.  Deferred, the exporter is imported where the application would
    have imported it, after its patching, and a process that ends no span never
    imports it.  A failure then (the import, the constructor) gives the one stderr line
    start-up would have given; that exporter's spans are dropped.
    """

    def __init__(self, name: str, entry_point: Any, report: Callable[[str], None]) -> None:
        self.name = name
        self.entry_point = entry_point
        self.report = report

    def build(self) -> Any:
        """The exporter, or None (reported) when it cannot be imported or constructed."""
        try:
            return self.entry_point.load()()
        except Exception as exc:
            from ctxrelay.config import shown

            self.report(
                f"ctxrelay: OTEL_TRACES_EXPORTER={shown(self.name)}: the exporter failed to "
                f"load ({type(exc).__name__}: {exc}). Its spans are dropped; context is "
                "still carried into threads."
            )
            return None

    def shutdown(self, timeout_millis: float | None = None) -> None:
        pass  # never built: nothing to shut down (and nothing to import at exit)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _sampler() -> Any:
    """A sampler the SDK's TracerProvider would not find itself (an entry point), or None."""
    name = _env("OTEL_TRACES_SAMPLER").lower()
    if not name:
        return None
    from opentelemetry.sdk.trace import sampling

    if name in sampling._KNOWN_SAMPLERS:  # TracerProvider reads these itself
        return None
    from opentelemetry.sdk._configuration import _import_sampler

    return _import_sampler(name)


def _id_generator() -> Any:
    name = _env("OTEL_PYTHON_ID_GENERATOR")
    if not name or name == "random":
        return None
    from opentelemetry.sdk._configuration import _import_id_generator

    return _import_id_generator(name)


def configure_from_env(report: Callable[[str], None] | None = None) -> bool:
    """Set the global tracer provider from ``OTEL_*``; False when it was left alone.

    ``report`` receives the one line that says what failed (default: stderr).
    """
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return False
    if _provider_already_set() or _opentelemetry_instrument_pending():
        return False
    report = report or _print
    if _env("OTEL_CONFIG_FILE") or _env("OTEL_PYTHON_TRACER_CONFIGURATOR"):
        return _sdk_configurator(report)
    problems: list[str] = []
    missing = False
    exporters: list[tuple[str, Any]] = []
    raw = _env("OTEL_TRACES_EXPORTER")
    for name in _names("OTEL_TRACES_EXPORTER") if raw else [default_exporter()]:
        try:
            exporters.append((name, _exporter(name, report)))
        except SetupError as exc:
            problems.append(str(exc))
            missing = missing or isinstance(exc, _NotInstalled)
        except Exception as exc:  # the exporter's own constructor
            problems.append(f"OTEL_TRACES_EXPORTER={name}: {type(exc).__name__}: {exc}")
    if missing:  # once, however many names are missing
        problems.append(f"allowed values here: {_installed_exporters()}")
    if problems and not exporters:
        report(
            f"ctxrelay: {'; '.join(problems)}. No tracer provider was set: spans are not "
            "recorded; context is still carried into threads."
        )
        return False
    provider = StartupTracerProvider(
        sampler=_sampler(), resource=_resource(), id_generator=_id_generator()
    )
    for _, exporter in exporters:
        provider.add_span_processor(_LazyBatchProcessor(exporter))
    _install(provider)
    if problems:
        working = ", ".join(name for name, _ in exporters)
        report(
            f"ctxrelay: {'; '.join(problems)}. Spans still go to {working}; context is "
            "carried into threads."
        )
    _other_signals(provider.resource, report)
    return True


def _resource() -> Any:
    """``Resource.create()``, without its thread pool when only the built-in detectors run.

    ``Resource.create`` runs every detector in a new ``ThreadPoolExecutor`` (a thread
    started and joined at every start-up).  With ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS``
    unset only the SDK's two built-in detectors run (``service_instance``, ``otel``: they
    read the environment and draw a UUID); they are called here in order, merged as
    ``get_aggregated_resources`` merges them.  Any other detector set, or an SDK whose
    private helpers have moved, goes through ``Resource.create`` itself.
    """
    from opentelemetry.sdk import resources

    build = getattr(resources, "_build_resource_detectors", None)
    default = getattr(resources, "_DEFAULT_RESOURCE", None)
    if _env("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS") or build is None or default is None:
        return resources.Resource.create()
    resource = default
    for detector in build():
        try:
            resource = resource.merge(detector.detect())
        except Exception as exc:
            if detector.raise_on_error:
                raise
            resources.logger.warning("Exception %s in detector %s, ignoring", exc, detector)
    resource = resource.merge(resources.Resource({}))
    if not resource.attributes.get(resources.SERVICE_NAME, None):
        service = "unknown_service"
        if sys.executable:
            service += f":{os.path.basename(sys.executable)}"
        resource = resource.merge(resources.Resource({resources.SERVICE_NAME: service}))
    return resource


def _print(line: str) -> None:
    try:
        print(line, file=sys.stderr)
    except Exception:  # a closed stderr must not stop the app
        pass


def _sdk_configurator(report: Callable[[str], None]) -> bool:
    from opentelemetry.sdk._configuration import _OTelSDKConfigurator

    class _Configurator(_OTelSDKConfigurator):
        """The SDK's own ``OTEL_*`` configuration, unchanged (the SDK asks to be subclassed)."""

    _Configurator().configure()
    return True


def _other_signals(resource: Any, report: Callable[[str], None]) -> None:
    """Metrics and logs, only when their variables ask for them (the SDK's own set-up)."""
    metrics = _names("OTEL_METRICS_EXPORTER")
    handler = _env("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED").lower() == "true"
    logs = _names("OTEL_LOGS_EXPORTER")
    if not (metrics or logs or handler):
        return
    from opentelemetry.sdk import _configuration as sdk_config

    if metrics:
        try:
            _, readers, _ = sdk_config._import_exporters(
                [], sdk_config._get_exporter_names("metrics"), []
            )
            sdk_config._init_metrics(readers, resource)
        except Exception as exc:  # reported; traces are set up already
            report(
                f"ctxrelay: OTEL_METRICS_EXPORTER: {type(exc).__name__}: {exc}; "
                "metrics are off, traces are on."
            )
    if logs or handler:
        try:
            _, _, log_exporters = sdk_config._import_exporters(
                [], [], sdk_config._get_exporter_names("logs")
            )
            sdk_config._init_logging(log_exporters, resource, handler)
        except Exception as exc:
            report(
                f"ctxrelay: OTEL_LOGS_EXPORTER: {type(exc).__name__}: {exc}; "
                "logs are off, traces are on."
            )


# --- the provider that steps aside -------------------------------------------------------
class StartupTracerProvider(TracerProvider):
    """The provider configured from ``OTEL_*``: its tracers follow a replacement."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        own = super().get_tracer(*args, **kwargs)
        if args and args[0] == "ctxrelay":
            return own  # ctxrelay's own tracer follows the global provider itself
        return _YieldingTracer(self, own, args, kwargs)

    def _handle_fork(self) -> None:
        """The SDK's at-fork hook, without its thread pool (SDK >= 1.39 registers it).

        The SDK runs the process-dependent resource detectors in a ThreadPoolExecutor in
        every forked child: a pool per fork, and "cannot schedule new futures after
        interpreter shutdown" printed by a child forked at exit.  They are called
        directly here (the default one, service.instance.id, takes microseconds).
        """
        self._tracers_lock = threading.Lock()
        try:
            from opentelemetry.sdk.resources import Resource, _build_resource_detectors

            resource = Resource.get_empty()
            for detector in _build_resource_detectors():
                if detector.is_process_dependent():
                    resource = resource.merge(detector.detect())
            self._update_resource(resource)
        except Exception:  # a child keeps its parent's resource
            pass


class _YieldingTracer(trace.Tracer):
    """The start-up provider's tracer until the application sets its own provider."""

    def __init__(self, provider: Any, own: Any, args: Any, kwargs: Any) -> None:
        self._provider, self._own, self._args, self._kwargs = provider, own, args, kwargs
        self._replacement: Any = None

    def _tracer(self) -> Any:
        if self._replacement is not None:
            return self._replacement
        current = trace.get_tracer_provider()
        if current is self._provider:
            return self._own
        # Bound once, like the API's proxy tracers bind to the first provider set.
        self._replacement = current.get_tracer(*self._args, **self._kwargs)
        return self._replacement

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer().start_as_current_span(*args, **kwargs)


def _install(provider: Any) -> None:
    """Set ``provider`` globally, and let the application's first own provider replace it."""
    trace.set_tracer_provider(provider)
    once = getattr(trace, "_TRACER_PROVIDER_SET_ONCE", None)
    try:
        from opentelemetry.util._once import Once
    except ImportError:  # pragma: no cover - a future API: the app's provider is refused
        return
    if type(once) is not Once:
        return

    class _StepAside(Once):
        """The API's set-once guard, except that the start-up provider may be replaced once."""

        def __init__(self) -> None:
            super().__init__()
            self._done = True

        def do_once(self, func: Callable[[], None]) -> bool:
            with self._lock:
                if trace._TRACER_PROVIDER is provider:
                    func()
                    replaced = trace._TRACER_PROVIDER
                    if replaced is not provider:
                        _print(
                            f"ctxrelay: the application's TracerProvider "
                            f"({type(replaced).__module__}.{type(replaced).__qualname__}) is in "
                            "use; it replaces the one ctxrelay configured from OTEL_*, and "
                            "ctxrelay's spans go to it too."
                        )
                        return True
            return super().do_once(func)

    trace._TRACER_PROVIDER_SET_ONCE = _StepAside()


# --- a batch processor whose thread starts with the first span ----------------------------
#: Longest a fork waits for an export in flight before it forks anyway (a healthy collector
#: answers in milliseconds; a stuck one must not stop the application from forking).
FORK_WAIT = 2.0


class _ForkSafeExporter:
    """The exporter, called under a lock that :func:`os.fork` waits for.

    An export runs in the batch processor's thread and takes other locks on its way: an
    import's module lock (``requests`` imports ``netrc`` on its first request), the HTTP
    connection pool's.  A child forked while one is held inherits it held, by a thread
    that does not exist in the child: the child's first export blocks on it for ever, and
    its spans are never exported.  So a fork waits (at most :data:`FORK_WAIT`) for the
    export in flight to finish, and the child starts with no export half done.

    Duck-typed as a ``SpanExporter``: importing the SDK's export module at start-up is
    what the lazy processor below avoids.
    """

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter
        self.lock = threading.Lock()
        #: The thread exporting now: a fork from inside the export (an exporter that runs
        #: a subprocess) must not wait for the lock its own thread holds.
        self.owner: int | None = None

    def resolve(self) -> bool:
        """Build a deferred exporter (once; under the processor's lock): False if it failed."""
        if isinstance(self.exporter, _DeferredExporter):
            built = self.exporter.build()
            if built is None:
                return False
            self.exporter = built
        return True

    def export(self, batch: Any) -> Any:
        with self.lock:
            self.owner = threading.get_ident()
            try:
                return self.exporter.export(batch)
            finally:
                self.owner = None

    def shutdown(self, timeout_millis: float | None = None) -> Any:
        import inspect

        shutdown = self.exporter.shutdown
        try:
            takes_timeout = "timeout_millis" in inspect.signature(shutdown).parameters
        except (TypeError, ValueError):  # a builtin without a signature
            takes_timeout = False
        if takes_timeout and timeout_millis is not None:
            return shutdown(timeout_millis=timeout_millis)
        return shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> Any:
        force_flush = getattr(self.exporter, "force_flush", None)
        return True if force_flush is None else force_flush(timeout_millis)

    def __getattr__(self, name: str) -> Any:  # anything else an SDK version reads
        return getattr(self.exporter, name)


class _LazyBatchProcessor(SpanProcessor):
    """``BatchSpanProcessor(exporter)``, created when the first span ends; safe to fork.

    The SDK's processor starts its export thread at once and restarts it in every forked
    child; until a span exists there is nothing for it to do.  Its exporter is wrapped in
    :class:`_ForkSafeExporter`, and ``os.fork()`` waits for an export or a creation of
    the processor in flight (both take import locks a child would inherit held).
    """

    def __init__(self, exporter: Any) -> None:
        self._exporter = _ForkSafeExporter(exporter)
        self._inner: Any = None
        #: Held by the one caller building the processor, taken only without blocking.
        self._lock = threading.Lock()
        #: Spans that ended while another caller was building (see :meth:`on_end`).
        self._pending: collections.deque[Any] = collections.deque()
        self._shut = False
        self._builder: int | None = None
        self._held: list[Any] = []
        if hasattr(os, "register_at_fork"):
            import weakref

            ref = weakref.ref(self)

            def before() -> None:
                processor = ref()
                if processor is not None:
                    processor._before_fork()

            def after() -> None:
                processor = ref()
                if processor is not None:
                    processor._after_fork()

            def in_child() -> None:
                processor = ref()
                if processor is not None:
                    processor._after_fork_in_child()

            os.register_at_fork(before=before, after_in_parent=after, after_in_child=in_child)

    def _before_fork(self) -> None:
        deadline = time.monotonic() + FORK_WAIT
        exporter = self._exporter
        waited = (
            (self._lock,)
            if exporter.owner == threading.get_ident()
            else (
                self._lock,
                exporter.lock,
            )
        )
        for lock in waited:
            try:
                if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    self._held.append(lock)
            except Exception:  # never stop a fork
                pass

    def _after_fork(self) -> None:
        held, self._held = self._held, []
        for lock in reversed(held):
            try:
                lock.release()
            except Exception:  # pragma: no cover - released already
                pass

    def _after_fork_in_child(self) -> None:
        # A lock the wait gave up on (an export stuck past FORK_WAIT) is held by a thread
        # the child does not have: the child gets fresh ones, never a lock held for ever.
        self._held = []
        self._lock = threading.Lock()
        self._pending = collections.deque()  # the parent's spans: the parent exports them
        self._exporter.lock = threading.Lock()
        self._exporter.owner = None

    def _build(self) -> Any:
        """The SDK's processor for the exporter, or :data:`_DROPPED` when it cannot be built."""
        try:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            exporter: Any = self._exporter  # a SpanExporter by duck typing
            if not self._exporter.resolve():
                return _DROPPED
            try:
                return BatchSpanProcessor(exporter)
            except RuntimeError:
                if _ExitBatch.wanted(self._exporter.exporter):
                    return _ExitBatch(exporter)
                raise
        except Exception:  # e.g. no new thread (pthread EAGAIN): never into the app
            return _DROPPED

    def _drain(self, inner: Any) -> None:
        pending = self._pending
        while True:
            try:
                span = pending.popleft()  # atomic: each span is handed on exactly once
            except IndexError:
                return
            inner.on_end(span)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self._inner is not None:
            self._inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: Any) -> None:
        """Hand ``span`` on; the first one builds the processor (and imports the exporter).

        Only one caller builds, and no caller ever waits for it: the build imports
        modules and starts a thread, and a caller that blocked on it could never be
        woken.  Under gevent, greenlets of one thread share it, and ``Thread.start()``
        in the build switches to another greenlet that blocked the whole thread on the
        (unpatched) lock; a signal handler that ends a span interrupts the build in the
        thread that holds the lock.  Such a span waits in a queue the builder empties.
        """
        if self._shut:
            return  # as the SDK's processor after shutdown: dropped (and not logged)
        inner = self._inner
        if inner is None:
            if not self._lock.acquire(blocking=False):
                self._pending.append(span)
                inner = self._inner
                if inner is not None:  # the build ended between our two looks
                    self._drain(inner)
                return
            try:
                if self._inner is None:
                    self._builder = threading.get_ident()
                    self._inner = self._build()
                inner = self._inner
                # Handed on before the lock is released: a shutdown that waited for the
                # build (at exit) then flushes these spans too.
                self._drain(inner)
                inner.on_end(span)
            finally:
                self._builder = None
                self._lock.release()
            return
        inner.on_end(span)

    def shutdown(self) -> None:
        """Flush and stop, after a build in flight (at exit: a daemon thread's first span)."""
        self._shut = True
        inner = self._inner
        if inner is None and self._builder not in (None, threading.get_ident()):
            try:
                if self._lock.acquire(timeout=FORK_WAIT):
                    self._lock.release()
            except Exception:  # never stop an exit
                pass
            inner = self._inner
        if inner is not None:
            inner.shutdown()
        else:
            self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        inner = self._inner
        return True if inner is None else bool(inner.force_flush(timeout_millis))


class _ExitBatch:
    """The processor of a first span that ends once the interpreter refuses new threads.

    On 3.12 (3.12.1 read; 3.13 starts threads there again) ``threading._shutdown()``,
    which ``Py_FinalizeEx`` runs before the atexit handlers, leaves no way to start the
    batch processor's thread: "can't create new thread at interpreter shutdown".  The
    SDK's provider, whose own atexit shutdown runs after every handler registered later,
    would have exported such a span from its thread; here the spans are kept and
    exported in one batch by that shutdown (one request, one exporter timeout, however
    many spans end at exit), in the exiting thread.  Only for exporters that bound their
    own export (:meth:`wanted`): with no thread there is nothing else to bound it, and
    an exit must not hang.
    """

    #: Exporters that bound their export: ctxrelay's tree and the SDK's console write to
    #: a stream; the OTLP exporters stop at OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT.
    _BOUNDED = (
        "ctxrelay.exporters.",
        "opentelemetry.sdk.trace.export",
        "opentelemetry.exporter.otlp.",
    )

    def __init__(self, exporter: Any) -> None:
        self._exporter = exporter
        self._spans: list[Any] = []

    @classmethod
    def wanted(cls, exporter: Any) -> bool:
        """At interpreter shutdown (read in 3.10-3.14's threading.py), for a bounded exporter."""
        module = str(getattr(type(exporter), "__module__", ""))
        return bool(getattr(threading, "_SHUTTING_DOWN", False)) and (
            module.startswith(cls._BOUNDED)
        )

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: Any) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:  # as the SDK's processors
            self._spans.append(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        spans, self._spans = self._spans, []
        if spans:
            try:
                self._exporter.export(tuple(spans))
            except Exception:  # never into the app
                return False
        return True

    def shutdown(self) -> None:
        self.force_flush()
        try:
            self._exporter.shutdown()
        except Exception:  # never into the app
            pass


class _Dropped:
    """The processor of an exporter that failed to build: its spans go nowhere."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_DROPPED = _Dropped()
