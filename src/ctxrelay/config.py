"""``CTXRELAY_*`` settings: read once, validated, and never fatal.

An invalid value gives ONE warning naming the variable and what it accepts, and the
default is used: a typo in an environment variable must not take the application down.
The reference table is ``docs/configuration.md``.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

__all__ = ["ConfigWarning", "Settings", "from_env"]

PREFIX = "CTXRELAY_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class ConfigWarning(UserWarning):
    """A ``CTXRELAY_*`` variable (or an ``instrument()`` argument) had a bad value."""


@dataclass(frozen=True)
class Settings:
    """Everything the environment can set.  Field docs are the user-facing reference."""

    #: CTXRELAY_ENABLED: activate at interpreter start-up (the .pth bootstrap).
    enabled: bool = False
    #: CTXRELAY_HOP_SPANS: record a span per hand-over to another thread.
    hop_spans: bool = True
    #: CTXRELAY_LISTENER_SPANS: record spans per event-bus dispatch and listener call.
    listener_spans: bool = True
    #: CTXRELAY_INCLUDE: only these runners/buses (comma-separated); unset = all.
    include: frozenset[str] | None = None
    #: CTXRELAY_EXCLUDE: never these runners/buses (comma-separated).
    exclude: frozenset[str] = frozenset()
    #: CTXRELAY_SKIP_VARS: ContextVar names never carried into another thread.
    skip_vars: frozenset[str] = frozenset()
    #: CTXRELAY_DETACH: glob patterns over the runner or the function's qualified name;
    #: matching work starts a new trace linked to its origin.
    detach: tuple[str, ...] = ()
    #: CTXRELAY_RECORD_PAYLOADS: record event payloads/arguments on listener spans.
    record_payloads: bool = False
    #: Problems found while reading; each already warned once.
    problems: tuple[str, ...] = field(default=(), compare=False)


def _warn(problems: list[str], message: str) -> None:
    problems.append(message)
    warnings.warn(message, ConfigWarning, stacklevel=3)


def _bool(env: Mapping[str, str], key: str, default: bool, problems: list[str]) -> bool:
    raw = env.get(PREFIX + key)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    _warn(
        problems,
        f"ctxrelay: {PREFIX}{key}={raw!r} is not a boolean; allowed values: "
        f"{', '.join(_TRUE + _FALSE[:-1])}. Using the default ({str(default).lower()}).",
    )
    return default


def _names(raw: str | None) -> list[str]:
    if not raw:
        return []
    return [part.strip() for part in raw.split(",") if part.strip()]


def _known_names(
    env: Mapping[str, str], key: str, allowed: Iterable[str], problems: list[str]
) -> frozenset[str] | None:
    raw = env.get(PREFIX + key)
    if raw is None:
        return None
    names = _names(raw)
    allowed_set = set(allowed)
    unknown = [name for name in names if name not in allowed_set]
    if unknown:
        _warn(
            problems,
            f"ctxrelay: {PREFIX}{key} names unknown runners/buses {', '.join(unknown)}; "
            f"allowed values: {', '.join(sorted(allowed_set))}. Ignoring the unknown names.",
        )
    return frozenset(name for name in names if name in allowed_set)


def from_env(env: Mapping[str, str] | None = None, *, known: Iterable[str] = ()) -> Settings:
    """Read the ``CTXRELAY_*`` variables; ``known`` lists the valid runner/bus names."""
    env = os.environ if env is None else env
    problems: list[str] = []
    known = list(known)
    include = _known_names(env, "INCLUDE", known, problems)
    exclude = _known_names(env, "EXCLUDE", known, problems) or frozenset()
    return Settings(
        enabled=_bool(env, "ENABLED", False, problems),
        hop_spans=_bool(env, "HOP_SPANS", True, problems),
        listener_spans=_bool(env, "LISTENER_SPANS", True, problems),
        include=include,
        exclude=exclude,
        skip_vars=frozenset(_names(env.get(PREFIX + "SKIP_VARS"))),
        detach=tuple(_names(env.get(PREFIX + "DETACH"))),
        record_payloads=_bool(env, "RECORD_PAYLOADS", False, problems),
        problems=tuple(problems),
    )


def detach_predicate(patterns: Iterable[str]) -> Callable[[str, Any], bool] | None:
    """``(runner, fn) -> bool`` matching runner names or qualified function names."""
    patterns = tuple(patterns)
    if not patterns:
        return None
    from ctxrelay.spans import callable_name

    def detach(runner: str, fn: Any) -> bool:
        name = callable_name(fn)
        return any(fnmatch.fnmatchcase(runner, p) or fnmatch.fnmatchcase(name, p) for p in patterns)

    return detach
