"""Naming and describing for listener spans: identities, never values (unless opted in)."""

from __future__ import annotations

import reprlib
import sys
import weakref
from typing import Any

from ctxrelay import attributes

__all__ = ["describe", "module_attribute_name", "text", "type_name"]

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlevel = 3


def text(value: Any) -> str:
    """``str(value)`` cut to the attribute limit: for names (events, topics)."""
    result = value if isinstance(value, str) else str(value)
    return result[: attributes.MAX_ATTRIBUTE_LENGTH]


def describe(value: Any) -> str:
    """A bounded ``repr`` (only ever called when payload recording is opted in)."""
    try:
        result = _repr.repr(value)
    except Exception:
        result = f"<unrepresentable {type(value).__qualname__}>"
    return result[: attributes.MAX_ATTRIBUTE_LENGTH]


def type_name(obj: Any) -> str:
    """``module.Qualname`` of a class, or of an object's class: identity, never a value."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"[: attributes.MAX_ATTRIBUTE_LENGTH]


_names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def module_attribute_name(obj: Any, default: str) -> str:
    """The module-level name ``obj`` is bound to (``post_save``), found once and cached.

    Django signals have no name of their own; the name they are imported by is what
    people search for.  Modules named ``*signal*`` are searched first, then all.
    """
    try:
        return _names[obj]
    except (KeyError, TypeError):
        pass
    found = None
    modules = list(sys.modules.items())
    for prefer in (True, False):
        for module_name, module in modules:
            if ("signal" in module_name) is not prefer or module is None:
                continue
            try:
                for attr, value in vars(module).items():
                    if value is obj and not attr.startswith("_"):
                        found = attr
                        break
            except TypeError:
                continue
            if found:
                break
        if found:
            break
    name = found or default
    try:
        _names[obj] = name
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return name
