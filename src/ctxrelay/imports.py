"""Call back when a watched module has been imported or reloaded, however it was found.

Why not a ``sys.meta_path`` finder (what ``wrapt.register_post_import_hook`` installs)?
A finder only sees the imports that reach it: one put in front of it later and
answering for a module (pytest's assertion rewriter does this for every package that
ships a pytest plugin, anyio among them) makes the hook silently never fire.  Nor does a
finder see ``importlib.reload``.

Every import of a module that is not yet in ``sys.modules``, whichever finder and loader
handle it, goes through ``importlib._bootstrap._find_and_load``: the interpreter looks it
up by name on that module each time (CPython 3.10-3.14, ``Python/import.c``), as does
``importlib.import_module``.  ``importlib.reload`` executes through
``importlib._bootstrap._exec``.  Both are replaced here by thin wrappers that call the
original, then, for a watched name only, the callback.  Read in CPython 3.10.13, 3.11.7,
3.12.1 and 3.13.0 (``Lib/importlib/_bootstrap.py``, ``Lib/importlib/__init__.py``).

The wrappers are compiled under importlib's own file name: the interpreter trims
importlib's frames from the tracebacks of failed imports, and so trims these too (a
traceback looks as it does without ctxrelay).  A callback never raises into an import.

A module half-imported (by another thread, or by the caller's own import) is in
``sys.modules`` with ``__spec__._initializing`` set: :func:`initializing` says so, and
:func:`when_imported` calls back once that import has finished.  The wrapper cannot be
relied on for that import (it may have begun before the wrapper was in place), so a
short-lived helper thread waits on the module's import lock, as ``import`` itself does.
"""

from __future__ import annotations

import _thread
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["initializing", "watch", "when_imported"]

logger = logging.getLogger("ctxrelay")

#: The callback, per watched module name.
_watched: dict[str, Callable[[ModuleType], None]] = {}
_lock = threading.Lock()
_installed = False

_SOURCE = """
def _find_and_load(name, *args, **kwargs):
    module = _original_find_and_load(name, *args, **kwargs)
    if name in _watched:
        _notify(name, module)
    return module


def _exec(spec, module, *args, **kwargs):
    module = _original_exec(spec, module, *args, **kwargs)
    name = getattr(spec, "name", None)
    if name in _watched:
        _notify(name, module)
    return module
"""


def initializing(module: Any) -> bool:
    """True while ``module`` is being executed by an import (in this or another thread)."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _notify(name: str, module: Any) -> None:
    callback = _watched.get(name)
    if callback is None or not isinstance(module, ModuleType):
        return
    try:
        callback(module)
    except Exception:  # an import must never fail because of ctxrelay
        logger.debug("ctxrelay: import callback for %s failed", name, exc_info=True)


def _install() -> None:
    """Put the wrappers in place, once per process."""
    global _installed
    from importlib import _bootstrap as typed_bootstrap

    _bootstrap: Any = typed_bootstrap  # its stub has none of the private names used here
    namespace: dict[str, Any] = {
        "_original_find_and_load": _bootstrap._find_and_load,
        "_original_exec": _bootstrap._exec,
        "_watched": _watched,
        "_notify": _notify,
    }
    filename = _bootstrap._find_and_load.__code__.co_filename  # "<frozen importlib._bootstrap>"
    exec(compile(_SOURCE, filename, "exec"), namespace)
    _bootstrap._find_and_load = namespace["_find_and_load"]
    _bootstrap._exec = namespace["_exec"]
    _installed = True


def watch(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` each time module ``name`` is imported or reloaded.

    One callback per name (a later call replaces it).  The module itself is not looked
    at here: the caller checks ``sys.modules`` after watching, so that an import ending
    in between is seen by one side or the other.
    """
    with _lock:
        _watched[name] = callback
        if not _installed:
            _install()


def when_imported(name: str) -> None:
    """Call ``name``'s watch callback once the import under way has finished."""
    from importlib import _bootstrap as typed_bootstrap

    _bootstrap: Any = typed_bootstrap  # its stub has none of the private names used here

    def wait() -> None:
        try:
            _bootstrap._lock_unlock_module(name)  # returns when the import has ended
            module = sys.modules.get(name)
            if module is not None and not initializing(module):
                _notify(name, module)
        except Exception:  # a helper of ctxrelay's never raises
            logger.debug("ctxrelay: waiting for the import of %s failed", name, exc_info=True)

    # A raw thread: no threading.Thread bookkeeping, nothing to join at exit.
    _thread.start_new_thread(wait, ())
