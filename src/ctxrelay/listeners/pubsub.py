"""PyPubSub ``Topic.publish``: a span per message and per listener call.

Read against PyPubSub 4.0.7 (``pubsub/core/topicobj.py``, ``listener.py``,
``publisher.py``).

``pub.sendMessage`` is ``Publisher.sendMessage`` bound at import time
(``sendMessage = _publisher.sendMessage``), so patching that class method would miss
every caller of ``pub.sendMessage``; it calls ``topicObj.publish(**msgData)``, a class
attribute looked up at each call, which is the hook for the dispatch span.  ``publish``
delivers to the listeners of the topic and of its parent topics (root first); each
delivery is ``Listener.__call__(kwargs, topic, allKwargs)``, which gets the span.  A
listener's exception aborts the publish unless ``pub.setListenerExcHandler`` is set.
"""

from __future__ import annotations

from typing import Any

from ctxrelay.listeners import _dispatch
from ctxrelay.patching import Patch

NAME = "pubsub"


def _has_listeners(topic: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # publish() delivers to parent topics' listeners too.
    while topic is not None:
        if topic.hasListeners():
            return True
        topic = topic.getParent()
    return False


def _listener_of(listener: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    fn = listener.getCallable()
    return listener if fn is None else fn


BUS = _dispatch.Bus(
    NAME,
    event=lambda topic, args, kwargs: topic.getName(),
    has_listeners=_has_listeners,
    payload=lambda topic, args, kwargs: kwargs,
)

PATCHES = (
    Patch(NAME, "pubsub.core.topicobj", "Topic.publish", _dispatch.dispatching(BUS)),
    Patch(
        NAME,
        "pubsub.core.listener",
        "Listener.__call__",
        _dispatch.listener_call(NAME, _listener_of),
    ),
)
