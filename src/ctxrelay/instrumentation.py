"""``instrument()`` / ``uninstrument()``: the composition root that applies the patch table.

This is the only module that knows both the settings and the table; the mechanism
(:mod:`ctxrelay.relay`), the spans and the patching machinery know neither.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any, Literal

from opentelemetry.trace import TracerProvider

from ctxrelay import coexist, config, left_behind, patching, relay, spans, table
from ctxrelay.runners import threads

__all__ = ["instrument", "is_instrumented", "uninstrument"]

_lock = threading.RLock()
_selected: frozenset[str] | None = None


def _select(
    settings: config.Settings, include: Iterable[str] | None, exclude: Iterable[str] | None
) -> frozenset[str]:
    known = table.names()
    chosen = set(known if include is None else include)
    if include is None and settings.include is not None:
        chosen = set(settings.include)
    chosen -= set(settings.exclude if exclude is None else exclude)
    unknown = chosen - set(known)
    if unknown:
        raise ValueError(
            f"ctxrelay.instrument(): unknown runners/buses {sorted(unknown)}; "
            f"allowed values: {sorted(known)}"
        )
    return frozenset(chosen)


def instrument(
    *,
    tracer_provider: TracerProvider | None = None,
    spans: bool | Literal["all"] | None = None,
    listener_spans: bool | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    skip_vars: Iterable[str] | None = None,
    detach: Iterable[str] | None = None,
    record_payloads: bool | None = None,
    drop_hops: Iterable[str] | None = None,
    process_vars: Iterable[ContextVar[Any] | str] | None = None,
) -> None:
    """Patch every runner and bus so work handed to another thread keeps its context.

    Idempotent and thread-safe: calling it again only changes the settings (and the
    patched set, if ``include``/``exclude`` changed).  Arguments left as ``None`` come
    from the ``CTXRELAY_*`` environment variables (see ``docs/configuration.md``).

    ``spans=False`` gives propagation only; ``spans="all"`` also records hand-overs
    with no active span, as new traces (root hop spans); ``tracer_provider`` defaults to the global
    one (followed lazily, so the application may set it after this call).
    ``drop_hops``: glob patterns of hops never recorded (``framework`` = the built-in
    list of framework-internal helpers, the default; ``[]`` or ``["none"]`` keeps all).
    ``process_vars`` (ContextVars or ``"module:attribute"`` paths) are the variables whose
    values cross process and machine boundaries (``docs/processes.md``).
    """
    global _selected
    with _lock:
        # enabled_default: instrument() is switching ctxrelay on, whatever a bad
        # CTXRELAY_ENABLED says; the warning must not claim "using the default (false)".
        settings = config.from_env(known=table.names(), enabled_default=True)
        _configure_spans(
            tracer_provider,
            settings.hop_spans if spans is None else bool(spans),
            settings.listener_spans if listener_spans is None else listener_spans,
            settings.detach if detach is None else tuple(detach),
            settings.record_payloads if record_payloads is None else record_payloads,
            settings.drop_hops if drop_hops is None else tuple(drop_hops),
            settings.hop_roots if spans is None else spans == "all",
        )
        relay.skip_vars(frozenset(settings.skip_vars if skip_vars is None else skip_vars))
        left_behind.watch()  # variables that belong to their thread are never carried
        _declare_process_vars(settings.process_vars if process_vars is None else process_vars)
        selected = _select(settings, include, exclude)
        if settings.doctor is not None:
            _start_doctor(settings, selected, skip_vars, detach)
        if selected == _selected:
            return
        if _selected is not None:
            patching.remove_all()
        patching.apply(p for p in table.patches() if p.name in selected)
        if threads.NAME in selected:
            coexist.watch(threads.NAME)  # tools that replace what was just wrapped
        _selected = selected


def _declare_process_vars(specs: Iterable[ContextVar[Any] | str]) -> None:
    specs = tuple(specs)
    # The carrier module (and OpenTelemetry's propagators) load only when needed:
    # start-up time is paid by every child process.
    if specs or "ctxrelay.carrier" in sys.modules:
        from ctxrelay import carrier

        carrier.declare(specs)


def _configure_spans(
    provider: TracerProvider | None,
    hops: bool,
    listeners: bool,
    detach: tuple[str, ...],
    record_payloads: bool,
    drop_hops: tuple[str, ...],
    hop_roots: bool,
) -> None:
    spans.configure(
        tracer_provider=provider,
        hops=hops,
        hop_roots=hop_roots,
        listeners=listeners,
        detach=config.detach_predicate(detach),
        record_payloads=record_payloads,
        drop_hops=drop_hops,
    )


def _start_doctor(
    settings: config.Settings,
    selected: frozenset[str],
    skip_vars: Iterable[str] | None,
    detach: Iterable[str] | None,
) -> None:
    """CTXRELAY_DOCTOR: observe the hand-overs and report at exit (imported only then)."""
    from ctxrelay import doctor

    doctor.start(
        settings,
        excluded=set(table.names()) - selected,
        skipped=settings.skip_vars if skip_vars is None else skip_vars,
        detach=settings.detach if detach is None else detach,
    )


def uninstrument() -> None:
    """Remove every patch and restore the originals; work in flight finishes normally."""
    global _selected
    with _lock:
        if _selected is None:
            return
        patching.remove_all()
        spans.disable()
        relay.skip_vars(frozenset())
        _declare_process_vars(())
        _selected = None


def is_instrumented() -> bool:
    return _selected is not None
