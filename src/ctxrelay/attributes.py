"""The span vocabulary: names, attribute keys and how ctxrelay names a callable.

Every key ctxrelay puts on a span is defined here, and listed in docs/spans.md.
Nothing here reads settings or OpenTelemetry state: it is words only.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

try:  # semantic conventions >= 0.54b0 have the stable code.* names
    from opentelemetry.semconv.attributes.code_attributes import CODE_FUNCTION_NAME
except ImportError:  # pragma: no cover - older semconv releases
    from opentelemetry.semconv._incubating.attributes.code_attributes import (
        CODE_FUNCTION_NAME,
    )
from opentelemetry.semconv._incubating.attributes.thread_attributes import (
    THREAD_ID,
    THREAD_NAME,
)

__all__ = [
    "ATTR_BUS",
    "ATTR_CONTEXT_VARS",
    "ATTR_DETACHED",
    "ATTR_EVENT",
    "ATTR_LISTENERS",
    "ATTR_LISTENER_DRIVER",
    "ATTR_LISTENER_INDEX",
    "ATTR_ORIGIN_THREAD_ID",
    "ATTR_ORIGIN_THREAD_NAME",
    "ATTR_PAYLOAD",
    "ATTR_QUEUE_WAIT_MS",
    "ATTR_RUNNER",
    "ATTR_SENDER",
    "CODE_FUNCTION_NAME",
    "DISPATCH_SPAN",
    "LISTENER_SPAN",
    "MAX_ATTRIBUTE_LENGTH",
    "THREAD_ID",
    "THREAD_NAME",
    "callable_name",
    "short_name",
]

# --- hop spans ---------------------------------------------------------------------
ATTR_RUNNER = "ctxrelay.runner"
ATTR_ORIGIN_THREAD_ID = "ctxrelay.origin.thread.id"
ATTR_ORIGIN_THREAD_NAME = "ctxrelay.origin.thread.name"
ATTR_QUEUE_WAIT_MS = "ctxrelay.queue.wait_ms"
ATTR_CONTEXT_VARS = "ctxrelay.context.vars"
ATTR_DETACHED = "ctxrelay.detached"

# --- listener-dispatch spans (docs/listeners.md) -------------------------------------
ATTR_BUS = "ctxrelay.bus"
ATTR_EVENT = "ctxrelay.event"
ATTR_LISTENERS = "ctxrelay.listeners"
ATTR_LISTENER_INDEX = "ctxrelay.listener.index"
ATTR_LISTENER_DRIVER = "ctxrelay.listener.driver"
ATTR_SENDER = "ctxrelay.sender"
#: only with CTXRELAY_RECORD_PAYLOADS=1: a bounded description of what was dispatched.
ATTR_PAYLOAD = "ctxrelay.event.payload"

#: One span per dispatch, one per listener call.
DISPATCH_SPAN = "{bus} dispatch {event}"
LISTENER_SPAN = "{bus} listener {listener}"

#: Longest string ctxrelay ever puts in an attribute it builds itself.
MAX_ATTRIBUTE_LENGTH = 256


def _through_partials(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _home_module(fn: Any) -> Any:
    """The module of what has no ``__module__`` of its own.

    A method of a C type (``_io.BufferedReader.read``): its type's module, so that
    patterns over module names match it; a generator or coroutine object: the module
    its code runs in.
    """
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, type):
        module = type(owner).__module__
        return None if module == "builtins" else module
    frame = getattr(fn, "gi_frame", None) or getattr(fn, "ag_frame", None)
    if frame is not None:
        return frame.f_globals.get("__name__")
    return None


def callable_name(fn: Any) -> str:
    """``module.qualname`` of what will run, seen through partials and bound methods.

    Never raises: a user's object may answer attribute lookups in any way (a
    ``__getattr__`` that raises, a ``__qualname__`` that is not a string).
    """
    try:
        fn = _through_partials(fn)
        qualname = getattr(fn, "__qualname__", None)
        if not isinstance(qualname, str):
            cls = type(fn)
            qualname = f"{cls.__qualname__}.__call__"
            module: Any = cls.__module__
        else:
            module = getattr(fn, "__module__", None)
            if module is None:
                module = _home_module(fn)
        name = f"{module}.{qualname}" if isinstance(module, str) and module else qualname
        return name[:MAX_ATTRIBUTE_LENGTH]
    except Exception:
        return type(fn).__qualname__[:MAX_ATTRIBUTE_LENGTH]


def short_name(fn: Any) -> str:
    """The last part of the qualified name, for span names (never raises)."""
    try:
        fn = _through_partials(fn)
        name = getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name:
            name = type(fn).__name__
        return name[:MAX_ATTRIBUTE_LENGTH]
    except Exception:
        return type(fn).__name__[:MAX_ATTRIBUTE_LENGTH]


# --- what a hop is named after ------------------------------------------------------
# Some runners hand over a framework helper that runs the user's code for it (Gradio's
# ``run_sync_iterator_async(iterator)`` and Starlette's ``_next(iterator)``: one
# ``next()`` of the user's generator; FastAPI's ``_run_sync_endpoint(function=...)``).  A
# span named after the helper says nothing to the user, and would be dropped as
# framework code (``CTXRELAY_DROP_HOPS``): the runner module that knows the helper
# registers, by the helper's qualified name, what its hops are named after.
_subjects: dict[str, Callable[..., Any]] = {}
#: The same for closures another instrumentation hands a runner in place of the user's
#: function (``module.qualname`` -> the closure variable holding the function it calls).
_cells: dict[str, str] = {}


def name_hops_after(
    helper: str, subject: Callable[..., Any] | None = None, *, cell: str | None = None
) -> None:
    """Hops running ``helper`` (``module.qualname``) are named after something else.

    ``subject``: after ``subject(*args, **kwargs)`` of the call (when that returns
    something, not None).  ``cell``: ``helper`` is a closure that calls a function it
    holds in that variable (a wrapper another tool put around the user's function);
    hops are named after that function.
    """
    if subject is not None:
        _subjects[helper] = subject
    if cell is not None:
        _cells[helper] = cell


def through_closures(fn: Any) -> Any:
    """``fn``, or the function inside it when ``fn`` is a registered wrapper closure.

    Asked for every recorded hop: a function without a closure costs three checks.
    Never raises.
    """
    for _ in range(4):  # wrappers of wrappers, within reason
        if not _cells or type(fn) is not types.FunctionType or fn.__closure__ is None:
            return fn
        try:
            cell = _cells.get(f"{fn.__module__}.{fn.__qualname__}")
            if cell is None:
                return fn
            inner = fn.__closure__[fn.__code__.co_freevars.index(cell)].cell_contents
        except Exception:  # not the shape it was registered with: keep the name it has
            return fn
        if not callable(inner):
            return fn
        fn = inner
    return fn


def subject_of(fn: Any, args: tuple[Any, ...] = ()) -> Any:
    """What the hop running ``fn(*args)`` is named after: ``fn`` unless registered.

    Never raises: a name is never worth a failure.
    """
    if not _subjects:
        return fn
    try:
        inner: Any = fn
        kwargs: dict[str, Any] = {}
        while type(inner) is functools.partial:
            args = (*inner.args, *args)
            kwargs = {**inner.keywords, **kwargs}
            inner = inner.func
        key = f"{getattr(inner, '__module__', None)}.{getattr(inner, '__qualname__', None)}"
        subject = _subjects.get(key)
        if subject is not None:
            named = subject(*args, **kwargs)
            if named is not None:
                return named
    except Exception:  # pragma: no cover - defensive
        pass
    return fn
