"""Variables that are never carried into another thread, and how they are left behind.

Two kinds, one mechanism:

* **Variables that describe the thread they are set in.**  A copy of them in another
  thread is a wrong answer there, not a carried value.  The list (:data:`THREAD_OWNED`)
  is the one place they are named; each entry is tested with the real library
  (``tests/test_safety_thread_vars.py``).  Read against sniffio 1.3.1, anyio 4.16,
  asgiref 3.13 and CPython 3.10-3.14's asyncio; what was looked at and left out is in
  docs/runners.md ("Variables that stay in their thread").
* **Variables the user names** in ``CTXRELAY_SKIP_VARS``: by the name given to
  ``ContextVar(name)``, or by where a module-level one is defined (``module:attribute``,
  as ``CTXRELAY_PROCESS_VARS`` names them).

A ``Context`` cannot forget a variable.  A left-behind variable that has a default is
set back to that default in the copy (one ``Context.run``, whatever the context's
size): code that reads it with ``get()`` sees exactly what an uncarried thread sees.
One without a default can only be dropped by building a new context without it.

Finding variables named by *name* costs one C-level pass over the context per
hand-over (a set-membership check, ~11-25 ns per variable: 11-25 us for 1,000
variables) plus the work for the variables actually present; each ContextVar's name is
looked at once, the first time it is seen.  (Without knowing every variable's name up
front, some pass over the context is unavoidable: Python offers no way to find a
ContextVar by name, or to learn which variables a context holds, without looking at
them.)  A variable named by *path* is found once its module is imported (one
``sys.modules`` look-up per hand-over until then), and from then on costs one
membership test per hand-over, like a thread-owned variable: with paths only, skipping
costs in proportion to the variables skipped, whatever the context's size.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from contextvars import Context, ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ctxrelay import imports

__all__ = ["THREAD_OWNED", "ThreadOwned", "configure_skipped", "leave_behind", "nothing", "watch"]

logger = logging.getLogger("ctxrelay")


@dataclass(frozen=True)
class ThreadOwned:
    """A ContextVar at ``module``'s dotted ``attribute`` that belongs to its thread."""

    module: str
    attribute: str
    why: str


#: The variables that describe the thread they are set in (docs/runners.md).
THREAD_OWNED: tuple[ThreadOwned, ...] = (
    ThreadOwned(
        "sniffio._impl",
        "current_async_library_cvar",
        "the async library whose event loop runs in this thread (anyio.run() and "
        "start_blocking_portal() refuse to start a loop where it is set, and "
        "sniffio.current_async_library() answers from it)",
    ),
)

_NO_DEFAULT: Any = object()

#: True while nothing is ever left behind: the copy is the whole context.
nothing = True
#: Called with no argument whenever :data:`nothing` may have changed (relay sets it).
on_change: Callable[[], None] | None = None

#: (var, default or _NO_DEFAULT) of the thread-owned variables found so far.
_thread_owned: tuple[tuple[ContextVar[Any], Any], ...] = ()
#: CTXRELAY_SKIP_VARS, and what is known of the variables seen so far.
_skipped_names: frozenset[str] = frozenset()
_seen: set[ContextVar[Any]] = set()
_skipped_found: dict[ContextVar[Any], Any] = {}
#: CTXRELAY_SKIP_VARS entries that are paths: not found yet, and found (var, default).
_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_skipped_paths: tuple[tuple[str, str], ...] = ()
_skipped_at_paths: tuple[tuple[ContextVar[Any], Any], ...] = ()
#: _seen keeps every variable it saw alive: bounded, in case an application makes
#: ContextVars per request (asgiref's Local does, per Local object).
_SEEN_LIMIT = 10_000


def _changed() -> None:
    global nothing
    nothing = (
        not _thread_owned and not _skipped_names and not _skipped_paths and not _skipped_at_paths
    )
    if on_change is not None:
        on_change()


def _default_of(var: ContextVar[Any]) -> Any:
    try:
        return Context().run(var.get)
    except LookupError:
        return _NO_DEFAULT


def configure_skipped(names: frozenset[str]) -> None:
    """Leave behind these ContextVars (CTXRELAY_SKIP_VARS): names, or ``module:attribute``."""
    global _skipped_names, _skipped_paths, _skipped_at_paths
    paths = frozenset(name for name in names if _PATH.fullmatch(name))
    _skipped_names = frozenset(names) - paths
    _skipped_paths = tuple(
        (module, attribute) for module, _, attribute in sorted(p.partition(":") for p in paths)
    )
    _skipped_at_paths = ()
    _seen.clear()
    _skipped_found.clear()
    _find_paths()
    _changed()


def _find_paths() -> None:
    """Look up the path entries not found yet (their module may have been imported)."""
    global _skipped_paths, _skipped_at_paths
    pending: list[tuple[str, str]] = []
    found = dict(_skipped_at_paths)
    for module_name, attribute in _skipped_paths:
        target: Any = sys.modules.get(module_name)
        if target is not None:
            try:
                for part in attribute.split("."):
                    target = getattr(target, part)
            except Exception:  # not there (yet: the module may still be initialising)
                target = None
        if isinstance(target, ContextVar):
            found[target] = _default_of(target)
        else:
            pending.append((module_name, attribute))
    _skipped_paths = tuple(pending)
    _skipped_at_paths = tuple(found.items())


def _skipped_in(context: Context) -> list[tuple[ContextVar[Any], Any]]:
    if not _seen.issuperset(context):  # one C-level pass; names read once per variable
        if len(_seen) > _SEEN_LIMIT:
            _seen.clear()
        for var in context:
            if var not in _seen:
                _seen.add(var)
                if var.name in _skipped_names:
                    _skipped_found[var] = _default_of(var)
    if not _skipped_found:
        return []
    return [(var, default) for var, default in list(_skipped_found.items()) if var in context]


def leave_behind(context: Context) -> Context:
    """``context`` (a fresh copy) without the variables that must not be carried.

    Changes the copy in place where it can (a variable with a default is set back to
    it); returns a new context only when a variable without a default must go.
    """
    dropped: list[ContextVar[Any]] = []
    for var, default in _thread_owned:
        if var in context:
            if default is _NO_DEFAULT:
                dropped.append(var)
            else:
                context.run(var.set, default)
    if _skipped_paths:
        _find_paths()
    for var, default in _skipped_at_paths:
        if var in context:
            if default is _NO_DEFAULT:
                dropped.append(var)
            else:
                context.run(var.set, default)
    if _skipped_names:
        for var, default in _skipped_in(context):
            if default is _NO_DEFAULT:
                dropped.append(var)
            else:
                context.run(var.set, default)
    if not dropped:
        return context
    return _rebuilt_without(context, frozenset(dropped))


def _rebuilt_without(context: Context, dropped: frozenset[ContextVar[Any]]) -> Context:
    kept = [(var, value) for var, value in context.items() if var not in dropped]
    rebuilt = Context()
    rebuilt.run(_set_all, kept)
    return rebuilt


def _set_all(items: list[tuple[ContextVar[Any], Any]]) -> None:
    for var, value in items:
        var.set(value)


def _resolve(module: ModuleType) -> None:
    """``module`` was imported (or reloaded): find its thread-owned variables."""
    global _thread_owned
    found = dict(_thread_owned)
    for entry in THREAD_OWNED:
        if entry.module != module.__name__:
            continue
        target: Any = module
        try:
            for part in entry.attribute.split("."):
                target = getattr(target, part)
        except AttributeError:
            logger.debug("ctxrelay: %s.%s not found", entry.module, entry.attribute)
            continue
        if isinstance(target, ContextVar):
            found[target] = _default_of(target)
    _thread_owned = tuple(found.items())
    _changed()


def watch() -> None:
    """Find the thread-owned variables of modules imported now or later (``instrument()``).

    ``imports.watch`` keeps one callback per module name: none of these modules is
    patched, so none shares its name with a patch's callback.
    """
    for name in {entry.module for entry in THREAD_OWNED}:
        imports.watch(name, _resolve)
        module = sys.modules.get(name)
        if module is not None:
            _resolve(module)
