"""``CTXRELAY_*`` settings: read once, validated, and never fatal.

An invalid value gives ONE warning naming the variable and what it accepts, and the
default is used: a typo in an environment variable must not take the application down.
The reference table is ``docs/configuration.md``.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigWarning", "Settings", "from_env", "shown"]

PREFIX = "CTXRELAY_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
#: Longest part of a setting's value a warning repeats: a 100 KB value must not give a
#: 100 KB warning (nor a terminal full of it).
MAX_SHOWN = 80


class ConfigWarning(UserWarning):
    """A ``CTXRELAY_*`` variable (or an ``instrument()`` argument) had a bad value."""


@dataclass(frozen=True)
class Settings:
    """Everything the environment can set.  Field docs are the user-facing reference."""

    #: CTXRELAY_ENABLED: activate at interpreter start-up (the .pth bootstrap).
    enabled: bool = False
    #: CTXRELAY_HOP_SPANS: record a span per hand-over to another thread.
    hop_spans: bool = True
    #: CTXRELAY_HOP_SPANS=all: also record hand-overs with no active span (new traces).
    hop_roots: bool = False
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
    #: CTXRELAY_DROP_HOPS: glob patterns over the function's qualified name of hops never
    #: recorded; ``framework`` stands for the built-in list, ``none`` drops nothing.
    drop_hops: tuple[str, ...] = ("framework",)
    #: CTXRELAY_RECORD_PAYLOADS: record event payloads/arguments on listener spans.
    record_payloads: bool = False
    #: CTXRELAY_DOCTOR: the context-loss report at exit; None off, "stderr", or a .json path.
    doctor: str | None = None
    #: CTXRELAY_DOCTOR_LATE: seconds after its span ended from which work counts as late.
    doctor_late: float = 5.0
    #: CTXRELAY_DOCTOR_PINNED: seconds a thread may hold a captured context before it
    #: counts as pinning it.
    doctor_pinned: float = 30.0
    #: CTXRELAY_PROCESS_VARS: "module:attribute" ContextVars whose values cross process
    #: and machine boundaries (docs/processes.md); nothing else ever crosses.
    process_vars: tuple[str, ...] = ()
    #: Problems found while reading; each already warned once.
    problems: tuple[str, ...] = field(default=(), compare=False)


#: (variable, raw value) pairs already warned about.  The settings are read by the
#: start-up bootstrap, by ``instrument()`` and by the OpenTelemetry instrumentor, maybe
#: several times: one bad value must still give ONE warning per process, whatever
#: warning filters the application set (``-W always`` included).
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def shown(value: str, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(value)} characters)"


def _shown_names(names: list[str]) -> str:
    """A warning's list of offending names, bounded like :func:`shown`."""
    joined = ", ".join(names)
    if len(joined) <= MAX_SHOWN:
        return joined
    return f"{joined[:MAX_SHOWN]}... ({len(names)} names)"


def _warn(problems: list[str], key: str, raw: str, message: str) -> None:
    problems.append(message)
    with _warned_lock:
        if (key, raw) in _warned:
            return
        _warned.add((key, raw))
    try:
        warnings.warn(message, ConfigWarning, stacklevel=4)
    except Exception:  # "-W error": a typo must still not stop the app
        pass


def _bool(
    env: Mapping[str, str],
    key: str,
    default: bool,
    problems: list[str],
    extra: tuple[str, ...] = (),
) -> bool:
    """A boolean setting; ``extra`` lists the other values the caller accepts itself."""
    raw = env.get(PREFIX + key)
    if raw is None or not raw.strip():  # ``VAR=`` in a shell or a compose file means unset
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    _warn(
        problems,
        key,
        raw,
        f"ctxrelay: {PREFIX}{key}={shown(raw)} is not a boolean; allowed values: "
        f"{', '.join(_TRUE + _FALSE[:-1] + extra)}. Using the default ({str(default).lower()}).",
    )
    return default


def _hop_spans(env: Mapping[str, str], problems: list[str]) -> tuple[bool, bool]:
    """``(hop_spans, hop_roots)``: a boolean, or ``all`` for root hop spans as well."""
    raw = env.get(PREFIX + "HOP_SPANS")
    if raw is not None and raw.strip().lower() == "all":
        return True, True
    return _bool(env, "HOP_SPANS", True, problems, extra=("all",)), False


def _doctor(env: Mapping[str, str], problems: list[str]) -> str | None:
    """``CTXRELAY_DOCTOR``: a boolean (on: the report goes to stderr) or a ``.json`` path."""
    raw = env.get(PREFIX + "DOCTOR")
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if value.lower() in _TRUE:
        return "stderr"
    if value.lower() in _FALSE:
        return None
    if value.lower().endswith(".json"):
        return value
    _warn(
        problems,
        "DOCTOR",
        raw,
        f"ctxrelay: {PREFIX}DOCTOR={shown(raw)} is neither a boolean nor a .json path; "
        f"allowed values: {', '.join(_TRUE)} (report on stderr), {', '.join(_FALSE[:-1])}, "
        "or a file path ending in .json (the report as JSON). Using the default (off).",
    )
    return None


def _seconds(env: Mapping[str, str], key: str, default: float, problems: list[str]) -> float:
    """A duration in seconds, greater than 0."""
    raw = env.get(PREFIX + key)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = -1.0
    if value > 0 and value != float("inf"):
        return value
    _warn(
        problems,
        key,
        raw,
        f"ctxrelay: {PREFIX}{key}={shown(raw)} is not a duration; allowed values: a number "
        f"of seconds greater than 0 (0.5, 30). Using the default ({default:g}).",
    )
    return default


def _names(raw: str | None) -> list[str]:
    if not raw:
        return []
    return [part.strip() for part in raw.split(",") if part.strip()]


def _known_names(
    env: Mapping[str, str], key: str, allowed: Iterable[str], problems: list[str], default: str
) -> frozenset[str] | None:
    """The known names in a comma-separated list (case-insensitive); None if unset.

    A value with no name in it (empty, spaces, commas: what ``${X:-}`` in a compose
    file gives) is unset, like every ``CTXRELAY_*`` variable.  Unknown names are
    ignored with a warning; when none is left the variable is ignored as a whole
    (``default`` says what that means), so a typo in ``CTXRELAY_INCLUDE`` never
    silently switches every runner off.
    """
    names = _names(env.get(PREFIX + key))
    if not names:
        return None
    raw = env[PREFIX + key]
    by_lower = {name.lower(): name for name in allowed}
    known = frozenset(by_lower[name.lower()] for name in names if name.lower() in by_lower)
    unknown = [name for name in names if name.lower() not in by_lower]
    if not unknown:
        return known
    outcome = "Ignoring the unknown names." if known else f"Using the default ({default})."
    _warn(
        problems,
        key,
        raw,
        f"ctxrelay: {PREFIX}{key}={shown(raw)} names unknown runners/buses "
        f"{_shown_names(unknown)}; "
        f"allowed values: a comma-separated list of {', '.join(sorted(by_lower.values()))}. "
        f"{outcome}",
    )
    return known or None


def _detach_patterns(env: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    """Glob patterns; a boolean-looking entry is a mistake (DETACH is not an on/off)."""
    raw = env.get(PREFIX + "DETACH")
    patterns = _names(raw)
    booleans = [p for p in patterns if p.lower() in _TRUE + _FALSE]
    if booleans and raw is not None:
        _warn(
            problems,
            "DETACH",
            raw,
            f"ctxrelay: {PREFIX}DETACH={shown(raw)} is not an on/off switch; allowed values: a "
            "comma-separated list of runner names (Thread, Timer, ThreadPoolExecutor, "
            "run_in_executor, to_thread, ...) or glob patterns over qualified function names "
            f"(myapp.jobs.*). Ignoring {_shown_names(booleans)}.",
        )
    return tuple(p for p in patterns if p not in booleans)


#: What a CTXRELAY_DROP_HOPS pattern may hold: a qualified name with glob characters.
_PATTERN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.*?[]!<>-"
)


def _drop_hops(env: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    """Patterns (``framework`` = the built-in list, ``none`` = nothing); unset = framework."""
    raw = env.get(PREFIX + "DROP_HOPS")
    patterns = _names(raw)
    if not patterns:
        return ("framework",)
    bad = [
        p
        for p in patterns
        if p.lower() in _TRUE + _FALSE or not set(p) <= _PATTERN_CHARS or p.strip("*?.") == ""
    ]
    if bad and raw is not None:
        kept = [p for p in patterns if p not in bad]
        _warn(
            problems,
            "DROP_HOPS",
            raw,
            f"ctxrelay: {PREFIX}DROP_HOPS={shown(raw)} has invalid entries {_shown_names(bad)}; "
            "allowed values: a comma-separated list of 'framework' (the built-in list), "
            "'none', or glob patterns over qualified function names (myapp.poll_*). "
            + ("Ignoring them." if kept else "Using the default (framework)."),
        )
        return tuple(kept) or ("framework",)
    return tuple(patterns)


def _process_vars(env: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    """``module:attribute`` entries; malformed ones are dropped with one warning."""
    raw = env.get(PREFIX + "PROCESS_VARS")
    entries = _names(raw)
    bad = [e for e in entries if not _is_module_attribute(e)]
    if bad and raw is not None:
        _warn(
            problems,
            "PROCESS_VARS",
            raw,
            f"ctxrelay: {PREFIX}PROCESS_VARS={raw!r} has entries that are not "
            f"'module:attribute' ({', '.join(bad)}); allowed values: a comma-separated list "
            "of module:attribute paths of contextvars.ContextVar objects (myapp.ctx:REQUEST_ID). "
            "Ignoring those entries.",
        )
    return tuple(e for e in entries if e not in bad)


def _is_module_attribute(entry: str) -> bool:
    module, sep, attribute = entry.partition(":")
    parts = module.split(".") + attribute.split(".")
    return bool(sep) and all(part.isidentifier() for part in parts)


def from_env(
    env: Mapping[str, str] | None = None,
    *,
    known: Iterable[str] = (),
    enabled_default: bool = False,
) -> Settings:
    """Read the ``CTXRELAY_*`` variables; ``known`` lists the valid runner/bus names.

    ``enabled_default`` is what a bad ``CTXRELAY_ENABLED`` falls back to: off for the
    ``.pth`` bootstrap, on where ctxrelay is being switched on anyway (``instrument()``).
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    known = list(known)
    include = _known_names(env, "INCLUDE", known, problems, "all runners and buses")
    exclude = _known_names(env, "EXCLUDE", known, problems, "none excluded") or frozenset()
    hop_spans, hop_roots = _hop_spans(env, problems)
    return Settings(
        enabled=_bool(env, "ENABLED", enabled_default, problems),
        hop_spans=hop_spans,
        hop_roots=hop_roots,
        listener_spans=_bool(env, "LISTENER_SPANS", True, problems),
        include=include,
        exclude=exclude,
        skip_vars=frozenset(_names(env.get(PREFIX + "SKIP_VARS"))),
        detach=_detach_patterns(env, problems),
        record_payloads=_bool(env, "RECORD_PAYLOADS", False, problems),
        drop_hops=_drop_hops(env, problems),
        doctor=_doctor(env, problems),
        doctor_late=_seconds(env, "DOCTOR_LATE", Settings.doctor_late, problems),
        doctor_pinned=_seconds(env, "DOCTOR_PINNED", Settings.doctor_pinned, problems),
        process_vars=_process_vars(env, problems),
        problems=tuple(problems),
    )


def detach_predicate(patterns: Iterable[str]) -> Callable[[str, Any], bool] | None:
    """``(runner, fn) -> bool`` matching runner names or qualified function names."""
    patterns = tuple(patterns)
    if not patterns:
        return None
    from ctxrelay.attributes import callable_name

    def detach(runner: str, fn: Any) -> bool:
        name = callable_name(fn)
        return any(fnmatch.fnmatchcase(runner, p) or fnmatch.fnmatchcase(name, p) for p in patterns)

    return detach
