"""Retained topics that one component owns: published, remembered, and deleted once unwanted.

Retained messages outlive the daemon: a camera or label removed from the config would leave
its retained discovery config (so its Home Assistant entity) and its state topics behind. We
let the broker remember what earlier runs published: a component subscribes to a topic filter
that only its own topics match, and every non-empty retained message there that it does not
own *now* is a leftover (of an earlier run, or of a label set replaced at runtime) and is
deleted with an empty retained payload. No state file, and it also cleans up after a crash.
The flip side: two daemons must not share a ``mqtt.topic_prefix``; they would delete each
other's topics.
"""

from __future__ import annotations

import logging
import threading
from typing import Mapping

from streamclf.mqtt_client import MqttClient

log = logging.getLogger(__name__)


class OwnedRetainedTopics:
    """The retained topics under ``topic_filter`` that should exist now, and the removal of the rest."""

    def __init__(self, publisher: MqttClient, topic_filter: str):
        self._publisher = publisher
        self.topic_filter = topic_filter
        self._owned: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.removed_stale = 0

    def start(self) -> None:
        """Subscribe to the filter; the broker then hands us every retained message under it."""
        self._publisher.subscribe(self.topic_filter, self._on_message)

    @property
    def topics(self) -> set[str]:
        with self._lock:
            return set(self._owned)

    def replace(self, messages: Mapping[str, bytes | str]) -> None:
        """Make ``messages`` (topic -> payload) the owned set: publish them, delete owned topics not in it."""
        encoded = {t: p.encode() if isinstance(p, str) else p for t, p in messages.items()}
        with self._lock:
            gone = [t for t in self._owned if t not in encoded]
            changed = {t: p for t, p in encoded.items() if self._owned.get(t) != p}
            for t in gone:
                del self._owned[t]
            self._owned.update(encoded)  # owned before published, so our own echo is never taken for stale
        for topic, payload in changed.items():
            self._publisher.set_retained(topic, payload)
        for topic in gone:
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

    def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # already deleted (possibly by us)
            return
        with self._lock:
            if topic in self._owned:
                return
            self.removed_stale += 1
        log.info("removing retained %s: left over from an earlier configuration", topic)
        self._publisher.clear_retained(topic)
