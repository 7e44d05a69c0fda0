"""Import a dependency without the heavy modules it imports at its top but rarely uses.

Every process started under ``CTXRELAY_ENABLED=1`` (spawned pool workers, CLI tools, test
runners) pays ctxrelay's start-up, and most of it was spent importing standard modules
that ctxrelay's dependencies import at their top for functions ctxrelay never calls:

* ``import wrapt`` executes every submodule of the package (read in wrapt 2.5.2,
  ``wrapt/__init__.py``): ``wrapt.synchronization`` imports :mod:`asyncio` (for
  ``async_to_sync`` & co.; it pulls in ``ssl``, ``socket``, ``subprocess``...) and
  ``wrapt.importer`` imports :mod:`importlib.metadata` (for
  ``discover_post_import_hooks``; it pulls in ``email``, ``zipfile``, ``pathlib``...).
  wrapt 1.17.3 imports neither (nothing is deferred there);
* ``opentelemetry.sdk.resources`` (read in opentelemetry-sdk 1.45.1) imports ``psutil``
  (when installed), ``socket`` and ``subprocess`` for the process, host and OS resource
  detectors, which are off by default.

:func:`load` imports such a module with those names bound, in that module (or package)
only, to a stand-in that imports the real module on first use and puts it in its place.
Nothing else changes: ``sys.modules`` gets no entry it would not have had, the
application's own ``import asyncio`` is untouched, every class is the dependency's own,
and the helpers that use those modules work as before (their first call imports them).
A name is deferred only while nobody has imported it yet, and only when it can be found
(so ``psutil`` stays ``None`` for the SDK where it is not installed).

The stand-in is bound while the dependency's own module code runs, by a replacement
``builtins.__import__`` that lives only as long as that import; it answers every other
import by calling the original.  If the module was already imported, this is a plain
import.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import sys
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any

__all__ = ["SDK_RESOURCES", "WRAPT", "load"]

#: What wrapt's modules import at their top for helpers ctxrelay never calls.
WRAPT: dict[str, str] = {"asyncio": "asyncio", "importlib.metadata": "importlib"}
#: What the SDK's resources module imports for detectors that are off by default.
SDK_RESOURCES: dict[str, str] = {"psutil": "psutil", "socket": "socket", "subprocess": "subprocess"}

_lock = threading.Lock()


class _OnFirstUse:
    """Bound in a module's globals in place of what ``import NAME`` would have bound."""

    __slots__ = ("_bound", "_globals", "_name")

    def __init__(self, name: str, bound: str, namespace: dict[str, Any]) -> None:
        self._name = name  # the module ``import`` was asked for
        self._bound = bound  # what it returns: the top-level package (or the module)
        self._globals = namespace

    def _real(self) -> Any:
        importlib.import_module(self._name)
        real = sys.modules[self._bound]
        for key, value in list(self._globals.items()):
            if value is self:  # from now on that module sees the real one
                self._globals[key] = real
        return real

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real(), attr)

    # What a test's mock.patch("pkg.module.socket.gethostname") or monkeypatch does
    # through the dependency's name for the module reaches the real module.
    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in _OnFirstUse.__slots__:
            object.__setattr__(self, attr, value)
        else:
            setattr(self._real(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self._real(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._real())

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use (ctxrelay.lean_imports)>"


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _deferring(original: Any, package: str, deferred: Mapping[str, str]) -> Any:
    def __import__(
        name: str,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> Any:
        bound = deferred.get(name) if level == 0 and not fromlist else None
        if bound is not None and globals is not None and name not in sys.modules:
            importer = str(globals.get("__name__", ""))
            if (importer == package or importer.startswith(package + ".")) and (
                bound == name or bound in sys.modules
            ):
                return _OnFirstUse(name, bound, globals)
        return original(name, globals, locals, fromlist, level)

    return __import__


def load(name: str, deferred: Mapping[str, str], within: str | None = None) -> ModuleType:
    """``import name``, deferring ``deferred`` (module -> what its import binds) in it.

    ``within``: the modules whose imports are deferred, with their submodules (default:
    ``name``'s top-level package).  Only names not imported yet that can be found are.
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    wanted = {k: v for k, v in deferred.items() if k not in sys.modules and _findable(k)}
    if not wanted:
        return importlib.import_module(name)
    with _lock:
        original = builtins.__import__
        replacement = _deferring(original, within or name.partition(".")[0], wanted)
        builtins.__import__ = replacement
        try:
            return importlib.import_module(name)
        finally:
            if builtins.__import__ is replacement:
                builtins.__import__ = original
