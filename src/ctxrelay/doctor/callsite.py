"""Where something happened: the nearest frame of the application's code, as ``file:line``.

"The application's code" is every frame that is not ctxrelay's, wrapt's, the
OpenTelemetry API/SDK's or the standard library's (``threading``, ``concurrent.futures``,
``asyncio``...): a library that starts a thread (gradio, uvicorn) is named itself, since
that is where the start happens.  If every frame is the standard library's (a thread
started by ``asyncio`` itself), the nearest frame outside ctxrelay is used.

Only the doctor calls this, and only for findings (starts, late work), never per pool
task: walking the stack costs a few microseconds.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from types import FrameType, ModuleType

__all__ = ["call_site", "frame_site", "is_internal", "on_stack", "skip_package"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _roots() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(internal prefixes, library prefixes) as absolute paths with a trailing separator."""
    internal = [_PACKAGE]
    for name in ("wrapt", "opentelemetry"):
        module = sys.modules.get(name)
        for path in getattr(module, "__path__", None) or ():
            internal.append(os.path.abspath(path))
    stdlib = []
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib"):
        if paths.get(key):
            stdlib.append(os.path.realpath(paths[key]))
            stdlib.append(os.path.abspath(paths[key]))
    return (
        tuple(p.rstrip(os.sep) + os.sep for p in internal),
        tuple(p.rstrip(os.sep) + os.sep for p in stdlib),
    )


_internal_roots, _stdlib_roots = _roots()
#: filename -> (ctxrelay-or-tooling, standard library), computed once per file.
_kinds: dict[str, tuple[bool, bool]] = {}


def _kind(filename: str) -> tuple[bool, bool]:
    kind = _kinds.get(filename)
    if kind is None:
        if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
            kind = (False, True)
        else:
            path = os.path.abspath(filename)
            tooling = path.startswith(_internal_roots)
            stdlib = (
                path.startswith(_stdlib_roots)
                and "site-packages" not in path
                and "dist-packages" not in path
            )
            kind = (tooling, stdlib)
        if len(_kinds) < 10_000:
            _kinds[filename] = kind
    return kind


def skip_package(module: ModuleType) -> None:
    """Treat ``module``'s package as tooling from now on (gevent: its spawn functions are
    to greenlets what ``threading`` is to threads, so the call site is its caller's)."""
    global _internal_roots
    added = tuple(
        os.path.abspath(path).rstrip(os.sep) + os.sep
        for path in getattr(module, "__path__", None) or ()
    )
    if added and not set(added) <= set(_internal_roots):
        _internal_roots = _internal_roots + added
        _kinds.clear()


def is_internal(filename: str) -> bool:
    """True for ctxrelay's, wrapt's, OpenTelemetry's and the standard library's files."""
    tooling, stdlib = _kind(filename)
    return tooling or stdlib


def _shown(filename: str) -> str:
    """Relative to the working directory when below it: short, and still clickable."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        return filename
    return filename if relative.startswith("..") else relative


def frame_site(frame: FrameType | None) -> str | None:
    """``file:line (in function)`` of the nearest application frame from ``frame`` up."""
    fallback: FrameType | None = None
    while frame is not None:
        code = frame.f_code
        tooling, stdlib = _kind(code.co_filename)
        if not tooling:
            if not stdlib:
                return f"{_shown(code.co_filename)}:{frame.f_lineno} (in {code.co_name})"
            if fallback is None:
                fallback = frame
        frame = frame.f_back
    if fallback is None:
        return None
    code = fallback.f_code
    return f"{_shown(code.co_filename)}:{fallback.f_lineno} (in {code.co_name})"


def call_site(skip: int = 1) -> str | None:
    """The nearest application frame of the caller's stack (``skip`` frames up)."""
    try:
        return frame_site(sys._getframe(skip + 1))
    except Exception:  # a frame without a code object, a very short stack
        return None


def on_stack(names: frozenset[str], file_suffix: str, depth: int = 16) -> bool:
    """True when a function named one of ``names``, in a file whose name ends with
    ``file_suffix``, is among the caller's ``depth`` nearest frames."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name in names and code.co_filename.endswith(file_suffix):
            return True
        frame = frame.f_back
    return False
