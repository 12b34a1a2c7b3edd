"""Retained topics that one component owns: published, remembered, and deleted once unwanted.

Retained messages outlive the daemon: a camera or label removed from the config would leave
its retained discovery config (so its Home Assistant entity) and its state topics behind. We
let the broker remember what earlier runs published: a component subscribes to a topic filter
that only its own topics match, and every non-empty retained message there that it does not
own *now* is a leftover (of an earlier run, or of a label set replaced at runtime) and is
deleted with an empty retained payload. No state file, and it also cleans up after a crash.

Only retained messages count, the ones the broker hands over when we subscribe (on every
connect): a message published while we are subscribed is someone's live message, never a
leftover. Several daemons may share a prefix when each has an ``mqtt.node_id``
(streamclf/nodes.py): then a topic whose camera (``camera_of``) another node holds is that
node's, neither deleted nor overwritten, and judging waits until this node knows the claims
(``flush_pending``). Without node ids, two daemons must not share a ``mqtt.topic_prefix``: they
would delete each other's topics.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Mapping, Protocol

from streamclf.mqtt_client import MqttClient

log = logging.getLogger(__name__)

CameraOf = Callable[[str, bytes], "str | None"]  # (topic, payload) -> the camera it belongs to, if any


class Ownership(Protocol):
    """What cleanup needs to know of the other nodes (streamclf/nodes.py's ``NodeOwnership``)."""

    def claimed_elsewhere(self, camera: str) -> bool: ...

    @property
    def settled(self) -> bool: ...


class OwnedRetainedTopics:
    """The retained topics under ``topic_filter`` that should exist now, and the removal of the rest."""

    def __init__(self, publisher: MqttClient, topic_filter: str, camera_of: CameraOf | None = None,
                 ownership: Ownership | None = None):
        """``camera_of`` and ``ownership``: with several nodes, whose camera a topic is, and who holds it."""
        self._publisher = publisher
        self.topic_filter = topic_filter
        self._camera_of = camera_of
        self._ownership = ownership
        self._owned: dict[str, bytes] = {}
        self._pending: dict[str, bytes] = {}  # retained messages that arrived before the claims were known
        self._lock = threading.Lock()
        self.removed_stale = 0

    def start(self) -> None:
        """Subscribe to the filter; the broker then hands us every retained message under it."""
        self._publisher.subscribe(self.topic_filter, self._on_message, retained_only=True)

    @property
    def topics(self) -> set[str]:
        with self._lock:
            return set(self._owned)

    def replace(self, messages: Mapping[str, bytes | str]) -> None:
        """Make ``messages`` (topic -> payload) the owned set: publish them, delete owned topics not in it."""
        encoded = {t: p.encode() if isinstance(p, str) else p for t, p in messages.items()}
        with self._lock:
            gone = {t: p for t, p in self._owned.items() if t not in encoded}
            changed = {t: p for t, p in encoded.items() if self._owned.get(t) != p}
            for t in gone:
                del self._owned[t]
            self._owned.update(encoded)  # owned before published, so our own echo is never taken for stale
        for topic, payload in changed.items():
            self._publisher.set_retained(topic, payload)
        for topic, payload in gone.items():
            if self._elsewhere(topic, payload):
                continue  # the camera went to another node (same topics): its messages there are now its own
            self._publisher.clear_retained(topic)

    def set(self, topic: str, payload: bytes | str) -> None:
        """Publish one owned retained message (adding or changing it)."""
        payload = payload.encode() if isinstance(payload, str) else payload
        with self._lock:
            self._owned[topic] = payload
        self._publisher.set_retained(topic, payload)

    def republish(self) -> None:
        """Publish every owned message again (e.g. when Home Assistant comes back online)."""
        with self._lock:
            owned = dict(self._owned)
        for topic, payload in owned.items():
            self._publisher.publish(topic, payload, qos=1, retain=True)

    def flush_pending(self) -> None:
        """Judge the retained messages that arrived before the claims were known (call once they are)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for topic, payload in pending.items():
            self._on_message(topic, payload)

    def _elsewhere(self, topic: str, payload: bytes) -> bool:
        """Does ``topic`` belong to a camera another node holds?"""
        if self._ownership is None or self._camera_of is None:
            return False
        camera = self._camera_of(topic, payload)
        return camera is not None and self._ownership.claimed_elsewhere(camera)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # already deleted (possibly by us)
            return
        with self._lock:
            if topic in self._owned:
                return
            if self._ownership is not None and not self._ownership.settled:
                self._pending[topic] = payload
                return
        if self._elsewhere(topic, payload):
            return
        with self._lock:
            if topic in self._owned:  # announced meanwhile
                return
            self.removed_stale += 1
        log.info("removing retained %s: left over from an earlier configuration", topic)
        self._publisher.clear_retained(topic)
