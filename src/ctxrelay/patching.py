"""The patch table machinery: apply wrapt wrappers now or when a module is imported,
and take them off again leaving every class as it was.

A runner or an event bus declares its patches as data (:class:`Patch` entries in its
module's ``PATCHES``); nothing else in ctxrelay knows where a runner hooks in.

Removal has to survive other patchers.  OpenTelemetry's ``unwrap`` (and anything like
it) replaces whatever wrapper is *outermost* by its ``__wrapped__``, so a naive scheme
either strips someone else's wrapper or loses its own.  Here, on removal:

1. if ctxrelay's wrapper is outermost, the original attribute is put back (or deleted,
   when the class only inherited it);
2. if another wrapt wrapper sits on top, ctxrelay's is spliced out of the chain by
   re-pointing that wrapper's ``__wrapped__``;
3. if neither is possible (a plain function closes over ctxrelay's wrapper), the
   wrapper stays but is switched off, and a later ``instrument()`` switches it back on
   instead of stacking a second copy.

Deferred patches are applied by :mod:`ctxrelay.imports`, which sees every import and
reload whichever finder handles it.  A module another thread is still importing is
patched when that import ends; a reloaded module is patched again (its classes and
functions are new objects), and the wrappers on the old objects stay in force until
``remove_all()``.  The import callback never waits for the lock: while another thread
holds it (an ``instrument()`` whose ``on_apply`` imports a package this thread is
importing), the module is queued and that thread applies it before letting go.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ctxrelay import imports, lean_imports

if TYPE_CHECKING:
    import wrapt
else:  # without the asyncio and importlib.metadata imports only unused helpers need
    wrapt = lean_imports.load("wrapt", lean_imports.WRAPT)

__all__ = ["Patch", "active", "apply", "installed", "remove_all"]

logger = logging.getLogger("ctxrelay")

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Patch:
    """One wrapper: ``wrapper`` goes around ``module``'s attribute at dotted ``path``.

    ``name`` is the runner or bus it belongs to (``CTXRELAY_INCLUDE``/``_EXCLUDE`` use
    it); ``applies`` guards version-specific entries; ``on_apply(module)`` runs once the
    wrapper is in place, when the module is loaded (e.g. to exempt a pool's worker
    threads from the thread patch without importing the pool's module early), and
    ``on_remove(module)`` once it is off (e.g. to drop what was captured for work that
    the wrapper will no longer see).
    """

    name: str
    module: str
    path: str
    wrapper: Wrapper
    applies: Callable[[], bool] = _always
    on_apply: Callable[[Any], None] | None = None
    on_remove: Callable[[Any], None] | None = None


@dataclass
class _Installed:
    patch: Patch
    owner: Any
    attr: str
    original: Any
    had_own: bool
    proxy: wrapt.FunctionWrapper
    #: wrapt's ``enabled=`` flag.  A list, not an object with ``__bool__``: wrapt tests
    #: it on every call and a list's truth is decided in C (a Python ``__bool__`` cost
    #: ~200 ns per submit).  ``[True]`` is on; cleared, the wrapper calls straight through.
    switch: list[bool]


#: What a wrapper chain is made of.  wrapt 2.x derives FunctionWrapper from
#: BaseObjectProxy, no longer from ObjectProxy: checking ObjectProxy there finds no chain
#: and parks ctxrelay's wrapper instead of splicing it out from under another tool's.
_PROXY: Any = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)

_lock = threading.RLock()
_wanted: dict[str, list[Patch]] = {}  # module name -> patches waiting for / applied to it
_installed: dict[Patch, _Installed] = {}
_parked: dict[Patch, _Installed] = {}  # switched off, still somewhere in a chain
#: Wrappers on the objects of a module's earlier life (before ``importlib.reload``).
_superseded: list[_Installed] = []
#: Modules imported while another thread held ``_lock``: applied by that thread.
_pending: list[Any] = []
_active = False


def active() -> bool:
    """True between ``apply()`` and ``remove_all()`` (ctxrelay is instrumented)."""
    return _active


def installed() -> list[Patch]:
    """The patches currently in force."""
    with _lock:
        return list(_installed)


def apply(patches: Iterable[Patch]) -> None:
    """Install each patch now if its module is loaded, else when it is imported."""
    global _active
    with _lock:
        try:
            _active = True
            for patch in patches:
                if not patch.applies():
                    continue
                _wanted.setdefault(patch.module, []).append(patch)
                # Watch first, then look: an import ending in between is seen by one side.
                imports.watch(patch.module, _on_import)
                module = sys.modules.get(patch.module)
                if module is None:
                    continue
                if imports.initializing(module):
                    # Half-imported (by another thread, or by the caller's own import):
                    # its attributes may not exist yet; patched when the import ends.
                    imports.when_imported(patch.module)
                else:
                    _install(patch)
        finally:
            _release()


def _on_import(module: Any) -> None:
    """A watched module was imported or reloaded: apply what is wanted for it."""
    _pending.append(module)
    _drain()


def _drain() -> None:
    while _pending:
        if not _lock.acquire(blocking=False):
            return  # the holder applies it before letting go (see _release)
        try:
            while _pending:
                _apply_to(_pending.pop(0))
        finally:
            _lock.release()


def _release() -> None:
    """After work under ``_lock``: apply modules that were imported meanwhile."""
    if _pending:
        _drain()


def _apply_to(module: Any) -> None:
    name = module.__name__
    if not _active or sys.modules.get(name) is not module:
        return
    for patch in _wanted.get(name, ()):
        inst = _installed.get(patch)
        if inst is None:
            _install(patch)
        elif _reloaded(inst, module):
            # importlib.reload: new classes and functions; the old ones keep their wrapper.
            _superseded.append(_installed.pop(patch))
            _install(patch)


def _reloaded(inst: _Installed, module: Any) -> bool:
    """True when ``module``'s attribute at the patch's path is no longer ours."""
    try:
        owner, attr, _ = wrapt.resolve_path(module, inst.patch.path)
    except Exception:  # gone after the reload: nothing to re-patch
        return False
    return owner is not inst.owner or attr != inst.attr or not _still_in_chain(inst)


def _install(patch: Patch) -> None:
    try:
        if not patch.applies():  # asked again with the module loaded (it may inspect it)
            return
        parked = _parked.pop(patch, None)
        module = sys.modules[patch.module]
        if parked is not None and _still_in_chain(parked):
            parked.switch[:] = [True]
            _installed[patch] = parked
            if patch.on_apply is not None:
                patch.on_apply(module)
            return
        owner, attr, original = wrapt.resolve_path(module, patch.path)
        had_own = attr in vars(owner) if isinstance(owner, type) else True
        # wrapt tests `enabled` for truth on each call (its type hint says bool, not
        # Sized): clearing this list switches the wrapper off where it stands.
        switch = [True]
        proxy = wrapt.FunctionWrapper(original, patch.wrapper, enabled=switch)  # type: ignore[arg-type]
        setattr(owner, attr, proxy)
        _installed[patch] = _Installed(patch, owner, attr, original, had_own, proxy, switch)
        if patch.on_apply is not None:
            patch.on_apply(module)
    except Exception:  # a framework changed shape: that runner is skipped, the app runs
        logger.warning("ctxrelay: could not patch %s.%s", patch.module, patch.path, exc_info=True)


def _current(inst: _Installed) -> Any:
    if isinstance(inst.owner, type):
        return inst.owner.__dict__.get(inst.attr)
    return getattr(inst.owner, inst.attr, None)


def _still_in_chain(inst: _Installed) -> bool:
    node = _current(inst)
    for _ in range(64):
        if node is inst.proxy:
            return True
        if not isinstance(node, _PROXY):
            return False
        node = node.__wrapped__
    return False


def remove_all() -> None:
    """Take every ctxrelay wrapper off; stop patching modules imported from now on."""
    global _active
    with _lock:
        _active = False
        for inst in _superseded:
            # Off, and put back where the old object still carries it (an old class).
            inst.switch.clear()
            if _current(inst) is inst.proxy:
                _take_off(inst)
        _superseded.clear()
        for inst in list(_installed.values()):
            _remove(inst)
        _installed.clear()
        _wanted.clear()
        _pending.clear()


def _remove(inst: _Installed) -> None:
    _take_off(inst)
    if inst.patch.on_remove is not None:
        try:
            inst.patch.on_remove(sys.modules.get(inst.patch.module))
        except Exception:  # pragma: no cover - defensive: uninstrument() must finish
            logger.warning("ctxrelay: clean-up after %s failed", inst.patch.path, exc_info=True)


def _take_off(inst: _Installed) -> None:
    inst.switch.clear()  # first, so calls already past the lookup pass straight through
    current = _current(inst)
    if current is inst.proxy:
        if inst.had_own:
            setattr(inst.owner, inst.attr, inst.original)
        else:
            delattr(inst.owner, inst.attr)
        return
    node = current
    for _ in range(64):
        if not isinstance(node, _PROXY):
            break
        inner = node.__wrapped__
        if inner is inst.proxy:
            try:
                node.__wrapped__ = inst.original
                return
            except (AttributeError, TypeError):
                break
        node = inner
    # Someone holds our wrapper where it cannot be reached: leave it, switched off.
    _parked[inst.patch] = inst


def refresh(module_name: str) -> None:
    """Re-apply ``module_name``'s patches where another tool replaced what ctxrelay wrapped.

    For tools that swap a module's attributes after ctxrelay patched them (gevent's
    ``monkey.patch_all()`` replaces ``threading._start_new_thread``): the replacement is
    wrapped in turn, so work keeps its context whichever tool came first.
    """
    module = sys.modules.get(module_name)
    if module is not None:
        _on_import(module)
