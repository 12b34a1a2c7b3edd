"""Alerts to MQTT: decisions (detections, ON/OFF states, events) become messages and snapshots.

Topics, under ``<prefix>/<camera>``:

- ``/<label>`` or ``/<zone>/<label>``: retained ``ON``/``OFF``, on change only. Retained so a
  subscriber (Home Assistant) that arrives later sees the current state; the publisher
  republishes it after a reconnect.
- ``/event``: JSON start/update/end messages (see ``decisions.Event.payload``).
- ``/detection``: one message per frame and label at or above threshold, unless
  ``events.detections`` is false.
- ``/<label>/snapshot`` or ``/<zone>/<label>/snapshot``: retained JPEG, when snapshots go to MQTT.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from streamclf.config import Config
from streamclf.decisions import Decisions, Event, EventType, StateChange
from streamclf.mqtt_client import MqttClient
from streamclf.snapshots import SnapshotRequest, SnapshotWriter

log = logging.getLogger(__name__)


def state_topic_levels(camera: str, zone: str | None, label: str) -> tuple[str, ...]:
    """Topic levels under the prefix of a label's ON/OFF state: camera[/zone]/label."""
    return (camera, label) if zone is None else (camera, zone, label)


class AlertPublisher:
    """Publishes Decisions; counts what it sent. Called from the inference thread (and at shutdown)."""

    def __init__(self, publisher: MqttClient, cfg: Config, snapshots: SnapshotWriter | None = None):
        self.publisher = publisher
        self.cfg = cfg
        self.snapshots = snapshots
        self.detections_published = 0
        self.events_published = 0
        self.published_by: Counter[tuple[str, str, str]] = Counter()  # (detection | event, camera, label): metrics
        self.state_changes_published = 0
        # Writers are the inference thread and, between batches, control and shutdown; status readers
        # copy under it so a snapshot never iterates a Counter that is growing.
        self._counts_lock = threading.Lock()

    def published_counts(self) -> dict[tuple[str, str, str], int]:
        """A copy of the messages published so far by (detection | event, camera, label)."""
        with self._counts_lock:
            return dict(self.published_by)

    def publish(self, decisions: Decisions) -> None:
        p, qos = self.publisher, self.cfg.mqtt.qos
        if self.cfg.events.detections and decisions.detections:
            now = time.time()
            for d in decisions.detections:
                p.publish(p.topic(d.camera, "detection"), d.payload(now), qos=qos)
                self._count("detection", d.camera, d.label)
        # States before events: a consumer reacting to an event finds the state already changed.
        self.publish_states(decisions.state_changes)
        for event in decisions.events:
            p.publish(p.topic(event.camera, "event"), event.payload(), qos=qos)
            self._count("event", event.camera, event.label)
            self._snapshot(event)

    def _count(self, kind: str, camera: str, label: str) -> None:
        with self._counts_lock:
            if kind == "detection":
                self.detections_published += 1
            else:
                self.events_published += 1
            self.published_by[(kind, camera, label)] += 1

    def publish_states(self, changes) -> None:
        p = self.publisher
        for change in changes:
            p.set_retained(p.topic(*state_topic_levels(change.camera, change.zone, change.label)), change.payload,
                           qos=self.cfg.mqtt.qos)
            self.state_changes_published += 1
            if change.on or log.isEnabledFor(logging.DEBUG):
                log.log(logging.INFO if change.on else logging.DEBUG, "%s", describe(change))

    def _snapshot(self, event: Event) -> None:
        snap = self.cfg.events.snapshots
        if self.snapshots is None or not snap.enabled or event.classification is None:
            return
        if event.type is EventType.END or (event.type is EventType.UPDATE and not snap.on_update):
            return
        image = event.classification.image
        if image is None:
            return
        p = self.publisher
        levels = state_topic_levels(event.camera, event.zone, event.label)
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.3f}"[1:]
        stem = "-".join((stamp, *levels, event.type.value, event.id.rsplit("-", 1)[-1]))
        self.snapshots.submit(SnapshotRequest(image, p.topic(*levels, "snapshot") if snap.mqtt else None, stem))


def describe(change: StateChange) -> str:
    """One log line's worth of a state change."""
    where = change.camera if change.zone is None else f"{change.camera}/{change.zone}"
    return f"{where}: {change.label} {change.payload}"
