"""``sitecustomize`` for ``ctxrelay run``: activate ctxrelay, then run the user's own.

Python imports the first ``sitecustomize`` found on ``sys.path`` after processing the
``.pth`` files; ``ctxrelay run`` puts this file's directory first on ``PYTHONPATH`` so
this one is found.  The ``sitecustomize`` that would have run without ctxrelay (the
next one on ``sys.path``) is then executed as ``sitecustomize``, so a user's or a
distribution's start-up code still runs, after ctxrelay has patched the thread
hand-overs (so threads it starts are covered) and before the OpenTelemetry SDK is
configured (so a tracer provider it sets is kept).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from typing import Any


def _activate() -> Any:
    """Patch now; return the SDK set-up step, to run after the user's sitecustomize."""
    if not os.environ.get("CTXRELAY_RUN"):
        return None  # this directory got onto PYTHONPATH some other way: do nothing
    try:
        from ctxrelay import bootstrap
    except Exception as exc:  # not installed for this interpreter, or broken: never fatal
        print(
            f"ctxrelay run: {sys.executable} cannot import ctxrelay ({type(exc).__name__}: {exc}); "
            "running without it. Install ctxrelay in the environment of that Python.",
            file=sys.stderr,
        )
        return None
    bootstrap.activate("run", configure=False)
    return bootstrap.configure_sdk


def _chain() -> None:
    """Execute the next ``sitecustomize`` on ``sys.path``, as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    # Its exceptions propagate: site.py reports them exactly as it would have.
    spec.loader.exec_module(module)


_configure_sdk = _activate()
try:
    _chain()
finally:
    # After the user's sitecustomize: a tracer provider it set is kept, not replaced.
    if _configure_sdk is not None:
        _configure_sdk()
