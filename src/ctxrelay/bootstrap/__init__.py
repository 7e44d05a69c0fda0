"""Start-up activation: how ctxrelay turns itself on before the application's code runs.

Two ways reach :func:`activate`, both before ``__main__`` starts any thread:

* ``CTXRELAY_ENABLED=1``: ``zz_ctxrelay.pth``, installed into site-packages with the
  package, is read by :mod:`site` at interpreter start-up.  Its single line checks the
  variable and imports nothing unless it is set (see ``docs/performance.md``).
* ``ctxrelay run CMD``: the CLI puts :data:`SITE_DIR` (which holds only a
  ``sitecustomize.py``) first on ``PYTHONPATH`` and sets :data:`RUN_MARKER`.  Children
  inherit both, so reloaders and worker processes (``flask run``, ``uvicorn --reload``,
  multiprocessing "spawn") are activated too.

The third way, ``opentelemetry-instrument``, goes through :mod:`ctxrelay.otel` instead.

Activation never raises into the interpreter's start-up: a failure is one line on
stderr saying what failed and what still works, and the application runs (uninstrumented
when the patching failed, e.g. a broken OpenTelemetry install earlier on ``sys.path``;
with context propagation but without exported spans when only the SDK set-up failed).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

__all__ = ["RUN_MARKER", "SITE_DIR", "activate", "activated_by", "configure_sdk"]

logger = logging.getLogger("ctxrelay")

#: Directory holding the ``sitecustomize.py`` that ``ctxrelay run`` puts on PYTHONPATH.
#: It contains nothing else, so no other module name is shadowed for the application.
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
#: Set by ``ctxrelay run`` in the command's environment (and so in its children).
RUN_MARKER = "CTXRELAY_RUN"

_FALSE = ("0", "false", "no", "off")
_lock = threading.Lock()
_by: str | None = None
_tried: set[str] = set()


def activated_by() -> str | None:
    """``"pth"`` or ``"run"`` once start-up activation has happened, else None."""
    return _by


def _wanted(source: str) -> bool:
    from ctxrelay import config, table

    if source == "run":
        # ``ctxrelay run`` means "on"; an explicit CTXRELAY_ENABLED=0 is the kill switch
        # that lets a deployment turn ctxrelay off without editing its command line.
        raw = os.environ.get(config.PREFIX + "ENABLED", "")
        return raw.strip().lower() not in _FALSE
    # from_env warns once, naming the variable, when CTXRELAY_ENABLED is not a boolean.
    return config.from_env(known=table.names()).enabled


def activate(source: str, *, configure: bool = True) -> bool:
    """Instrument, then (``configure``) set up the OpenTelemetry SDK from ``OTEL_*``.

    ``source`` is ``"pth"`` or ``"run"``.  Idempotent; True if ctxrelay is now active.
    The ``run`` bootstrap passes ``configure=False`` and calls :func:`configure_sdk`
    after the user's own ``sitecustomize``, which may set a tracer provider itself.
    """
    global _by
    with _lock:
        if _by is not None:
            return True
        if source in _tried:
            # site.py may read the same .pth twice (a venv's lib64 -> lib symlink is two
            # site directories to it): a failure is reported once.
            return False
        _tried.add(source)
        failed = f"ctxrelay: start-up activation ({source}) failed, the application runs without it"
        if not _guarded(failed, lambda: _wanted(source)):
            return False
        # Patch before the SDK set-up below starts its exporter thread, and before any
        # code of the application's can start one.
        if not _guarded(failed, _instrument):
            return False
        _by = source
    if configure:
        configure_sdk()
    return True


def configure_sdk() -> bool:
    """Configure the SDK from ``OTEL_*`` unless a provider is set; never raises."""
    if _by is None:
        return False
    failed = (
        "ctxrelay: the OpenTelemetry SDK set-up from OTEL_* failed; context is still carried "
        "into threads, spans are not exported"
    )
    configured = _guarded(failed, _configure)
    # Spans buffered when SIGTERM (docker stop, systemd) ends the process are flushed
    # first; the process then dies of SIGTERM as it would have (bootstrap/sigterm.py).
    _guarded("ctxrelay: the SIGTERM flush could not be set up", _sigterm)
    return configured


def _configure() -> bool:
    from ctxrelay import sdk

    return sdk.configure_from_env()


def _sigterm() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    from ctxrelay.bootstrap import sigterm

    return sigterm.install()


def _instrument() -> bool:
    import ctxrelay

    ctxrelay.instrument()
    return True


def _guarded(failed: str, step: Callable[[], bool]) -> bool:
    try:
        return step()
    except Exception as exc:  # never take the application down at start-up
        try:
            print(f"{failed}: {_describe(exc)}", file=sys.stderr)
        except Exception:  # no usable stderr: still never fatal
            pass
        logger.debug("ctxrelay: activation failed", exc_info=True)
        return False


def _describe(exc: BaseException) -> str:
    """``Type: message``, bounded, naming the ``opentelemetry`` package that was imported."""
    text = f"{type(exc).__name__}: {exc}"
    if len(text) > 300:
        text = text[:300] + "..."
    if isinstance(exc, ImportError):
        otel = sys.modules.get("opentelemetry")
        where = list(getattr(otel, "__path__", None) or [getattr(otel, "__file__", None)])
        if otel is not None and where and where[0]:
            text += f" (opentelemetry imported from {where[0]})"
    return text
