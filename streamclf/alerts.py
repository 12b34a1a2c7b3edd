"""Alerts to MQTT: decisions (detections, ON/OFF states, events) become messages and snapshots.

Topics, under ``<prefix>/<camera>``:

- ``/<label>`` or ``/<zone>/<label>``: retained ``ON``/``OFF``, on change only. Retained so a
  subscriber (Home Assistant) that arrives later sees the current state; the publisher
  republishes it after a reconnect.
- ``/event``: JSON start/update/end messages (see ``decisions.Event.payload``).
- ``/detection``: one message per frame and label at or above threshold, unless
  ``events.detections`` is false.
- ``/<label>/snapshot`` or ``/<zone>/<label>/snapshot``: retained JPEG, when snapshots go to MQTT.
- ``/<label>/attributes`` or ``/<zone>/<label>/attributes``: retained JSON about the label's current or
  last event, on every start, update and end (so no more often than events): ``score``, ``top_score``
  (0..1), ``event_id``, ``since`` (ISO 8601 UTC wall-clock time the ON or OFF state began) and, on
  ends that have one, ``end_reason``. Home Assistant shows them as the label entity's attributes.
- ``/<label>/score`` or ``/<zone>/<label>/score``: the label's latest score (0..1) as a plain number,
  QoS 0, not retained, at most once per ``max(event_update_interval_s, 1 s)`` per camera, zone and
  label, and only while the broker is connected: a live view for tuning thresholds, never queued
  through an outage where it would push events out of the bounded queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from streamclf.config import Config
from streamclf.decisions import Decisions, Event, EventType, StateChange
from streamclf.entities import Classification
from streamclf.mqtt_client import MqttClient
from streamclf.snapshots import SnapshotRequest, SnapshotWriter

log = logging.getLogger(__name__)

MIN_SCORE_INTERVAL_S = 1.0  # scores of one label go out at most this often even with event updates on every frame


def state_topic_levels(camera: str, zone: str | None, label: str) -> tuple[str, ...]:
    """Topic levels under the prefix of a label's ON/OFF state: camera[/zone]/label."""
    return (camera, label) if zone is None else (camera, zone, label)


class AlertPublisher:
    """Publishes Decisions; counts what it sent. Called from the inference thread (and at shutdown)."""

    def __init__(self, publisher: MqttClient, cfg: Config, snapshots: SnapshotWriter | None = None,
                 on_publish: Callable[[Decisions], None] | None = None):
        self.publisher = publisher
        self._on_publish = on_publish  # told of every Decisions published (the pipeline's observers)
        self.cfg = cfg
        self.snapshots = snapshots
        self.detections_published = 0
        self.events_published = 0
        self.published_by: Counter[tuple[str, str, str]] = Counter()  # (detection | event, camera, label): metrics
        self.state_changes_published = 0
        self.scores_published = 0
        self._score_sent_at: dict[tuple[str, str | None, str], float] = {}  # monotonic seconds, per key
        self._since: dict[tuple[str, str | None, str], str] = {}  # when each label's ON or OFF state began
        # Writers are the inference thread and, between batches, control and shutdown; status readers
        # copy under it so a snapshot never iterates a Counter that is growing.
        self._counts_lock = threading.Lock()

    def published_counts(self) -> dict[tuple[str, str, str], int]:
        """A copy of the messages published so far by (detection | event, camera, label)."""
        with self._counts_lock:
            return dict(self.published_by)

    def publish(self, decisions: Decisions) -> None:
        if self._on_publish is not None and decisions:
            self._on_publish(decisions)
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
            self._attributes(event)
            self._snapshot(event)

    def _count(self, kind: str, camera: str, label: str) -> None:
        with self._counts_lock:
            if kind == "detection":
                self.detections_published += 1
            else:
                self.events_published += 1
            self.published_by[(kind, camera, label)] += 1

    def publish_scores(self, c: Classification) -> None:
        """Publish the scores of ``c``'s non-background labels on their ``score`` topics, rate-limited.

        Call once per classification; most calls publish nothing (see the module docstring).
        """
        p = self.publisher
        if not p.connected:
            return
        interval_s = max(self.cfg.events.event_update_interval_s, MIN_SCORE_INTERVAL_S)
        now = time.monotonic()
        for label, score in c.scores.items():
            lc = self.cfg.labels.get(label)
            key = (c.camera, c.zone, label)
            if (lc is not None and lc.background) or now - self._score_sent_at.get(key, -interval_s) < interval_s:
                continue
            self._score_sent_at[key] = now
            p.publish(p.topic(*state_topic_levels(c.camera, c.zone, label), "score"), f"{score:.4f}", qos=0)
            self.scores_published += 1

    def _attributes(self, event: Event) -> None:
        key = (event.camera, event.zone, event.label)
        if event.type is not EventType.UPDATE or key not in self._since:  # a start or an end begins a state
            self._since[key] = _iso_now()
        body = {"score": round(event.score, 4), "top_score": round(event.top_score, 4), "event_id": event.id,
                "since": self._since[key]}
        if event.reason is not None:
            body["end_reason"] = event.reason
        p = self.publisher
        p.set_retained(p.topic(*state_topic_levels(event.camera, event.zone, event.label), "attributes"), body,
                       qos=self.cfg.mqtt.qos)

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


def _iso_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f"{now % 1:.3f}"[1:] + "+00:00"


def describe(change: StateChange) -> str:
    """One log line's worth of a state change."""
    where = change.camera if change.zone is None else f"{change.camera}/{change.zone}"
    return f"{where}: {change.label} {change.payload}"
