"""Dask distributed: ``Client.submit`` and ``Client.map`` carry the declared values.

Read against distributed 2026.8.0 (``distributed/client.py``).  Both methods take the
user's ``func`` in the caller: it becomes a :class:`ctxrelay.carrier.Task`, pickled to
the worker with the task; the worker thread runs it in a fresh context of its own
(the declared values and the submitter's trace), so that thread is left exactly as it
was.  The task's key is unchanged in shape: ``Task`` names itself after ``func`` and
tokenizes as ``func`` does, so pure tasks keep Dask's de-duplication (a second submit
of the same call returns the first one's future, which ran with the first submitter's
values).  Graphs (``compute`` of delayed objects and collections) carry no callable
through these methods and are not covered.
"""

from __future__ import annotations

from typing import Any

from ctxrelay import relay
from ctxrelay.patching import Patch

NAME = "dask"
RUNNER = "dask"


def relay_func(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Around ``Client.submit(func, ...)`` / ``Client.map(func, ...)``, in the caller."""
    # Imported here: the table imports this module at every activation (see process_pool).
    from ctxrelay import carrier

    if not args or type(args[0]) is carrier.Task or kwargs.get("actor") or kwargs.get("actors"):
        return wrapped(*args, **kwargs)
    fn = args[0]
    try:
        found = relay.hand_over_carrier(RUNNER, fn)
        if found:
            args = (carrier.Task(fn, found), *args[1:])
    except Exception:  # pragma: no cover - defensive: submitted unchanged
        pass
    return wrapped(*args, **kwargs)


PATCHES = (
    Patch(NAME, "distributed.client", "Client.submit", relay_func),
    Patch(NAME, "distributed.client", "Client.map", relay_func),
)
