"""Config reload (SIGHUP): apply what changed without reloading the model.

``plan_reload`` compares the running and the new config; ``apply_reload`` carries the plan
out: only cameras whose capture settings changed are (re)started, label text embeddings
are re-encoded only when prompts or label names changed, alerting rules (thresholds,
hysteresis, zones, events) go to the decider, which ends the events of labels that are
gone, and the MQTT publisher reconnects only when the ``mqtt`` section changed. The swap
of config, label embeddings, zones, rules and publisher happens under the pipeline's
``swap_lock``, i.e. between two batches, so no batch ever sees half of each. Model
settings need a restart: the running model stays, and the log says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streamclf.capture import CameraState
from streamclf.config import Config
from streamclf.publisher import MqttPublisher
from streamclf.snapshots import SnapshotWriter
from streamclf.zones import ZoneCropper

log = logging.getLogger(__name__)


class ReloadError(Exception):
    """The new config could not be applied; the running one stays."""


@dataclass(frozen=True)
class ReloadPlan:
    """What differs between the running and the new config."""

    cameras_added: tuple[str, ...] = ()
    cameras_removed: tuple[str, ...] = ()
    cameras_restarted: tuple[str, ...] = ()  # source, fps or another capture setting changed
    reencode_labels: bool = False  # label names or prompts changed
    labels_changed: bool = False  # labels, thresholds, a camera's labels/overrides/zones, or events
    snapshots_changed: bool = False
    mqtt_changed: bool = False
    model_changed: tuple[str, ...] = ()  # model.* keys that differ; they need a restart
    metrics_changed: bool = False
    service_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.cameras_added or self.cameras_removed or self.cameras_restarted or self.labels_changed
                    or self.mqtt_changed or self.model_changed or self.metrics_changed or self.service_changed)

    def describe(self) -> str:
        parts = []
        for what, names in (("cameras added", self.cameras_added), ("cameras removed", self.cameras_removed),
                            ("cameras restarted", self.cameras_restarted)):
            if names:
                parts.append(f"{what}: {', '.join(names)}")
        if self.reencode_labels:
            parts.append("labels re-encoded")
        elif self.labels_changed:
            parts.append("alerting rules updated")
        if self.mqtt_changed:
            parts.append("MQTT reconnected")
        if self.metrics_changed:
            parts.append("metrics server restarted")
        if self.service_changed:
            parts.append("service settings updated")
        return "; ".join(parts) or "no changes"


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare two validated configs."""
    added = tuple(n for n in new.cameras if n not in old.cameras)
    removed = tuple(n for n in old.cameras if n not in new.cameras)
    # Labels, overrides and zones change what is scored and decided, not the capture: no restart for those.
    scoring = {"labels", "label_overrides", "zones"}
    restarted = tuple(
        n for n in new.cameras
        if n in old.cameras and old.cameras[n].model_dump(exclude=scoring) != new.cameras[n].model_dump(exclude=scoring)
    )
    prompts = lambda cfg: {n: lc.prompts_for(n) for n, lc in cfg.labels.items()}  # noqa: E731
    reencode = prompts(old) != prompts(new)
    scoring_changed = any(
        old.cameras[n].model_dump(include=scoring) != new.cameras[n].model_dump(include=scoring)
        for n in new.cameras if n in old.cameras
    )
    model_changed = tuple(k for k, v in new.model.model_dump().items() if old.model.model_dump()[k] != v)
    return ReloadPlan(
        cameras_added=added,
        cameras_removed=removed,
        cameras_restarted=restarted,
        reencode_labels=reencode,
        labels_changed=reencode or old.labels != new.labels or scoring_changed or old.events != new.events,
        snapshots_changed=old.events.snapshots != new.events.snapshots,
        mqtt_changed=old.mqtt != new.mqtt,
        model_changed=model_changed,
        metrics_changed=old.metrics != new.metrics,
        service_changed=old.service != new.service,
    )


def apply_reload(pipeline, new: Config, plan: ReloadPlan, swap_timeout_s: float = 10.0) -> Config:
    """Apply ``plan`` to the running ``pipeline``; returns the config now in effect.

    Raises ReloadError, with nothing changed, when the swap cannot happen between batches
    within ``swap_timeout_s`` seconds (a model call that long is the watchdog's business).
    """
    old = pipeline.cfg
    if plan.model_changed:
        log.warning(
            "config reload: model settings changed (%s); they take effect after a restart, the running model stays",
            ", ".join(f"model.{k}" for k in plan.model_changed),
        )
        new = new.model_copy(update={"model": old.model})
    # The slow parts happen before the swap, while batches keep running.
    label_set = pipeline.classifier.encode_labels({n: lc.prompts_for(n) for n, lc in new.labels.items()}) \
        if plan.reencode_labels else None
    publisher = MqttPublisher(new.mqtt) if plan.mqtt_changed else None
    zones = ZoneCropper(new.cameras)
    snapshots = None
    if plan.snapshots_changed:
        snapshots = SnapshotWriter(
            new.events.snapshots,
            lambda topic, jpeg: pipeline.publisher.set_retained(topic, jpeg, qos=pipeline.cfg.mqtt.qos),
            pipeline.base_dir,
        )

    if not pipeline.swap_lock.acquire(timeout=swap_timeout_s):
        raise ReloadError(f"a batch has been running for more than {swap_timeout_s:g} s; the reload was not applied")
    old_snapshots = None
    try:
        pipeline.cfg = new
        if label_set is not None:
            pipeline.label_set = label_set
        pipeline.zones = zones
        decisions = [pipeline.decider.update_config(new)]  # labels that are gone end their events, turn OFF
        for name in plan.cameras_restarted:
            if old.cameras[name].enabled != new.cameras[name].enabled:
                decisions.append(pipeline.decider.set_camera_enabled(name, new.cameras[name].enabled))
        if publisher is not None:
            _swap_publisher(pipeline, publisher)
        if snapshots is not None:
            snapshots.start()
            old_snapshots, pipeline.snapshots = pipeline.snapshots, snapshots
        pipeline.alerts.cfg = new
        pipeline.alerts.publisher = pipeline.publisher
        pipeline.alerts.snapshots = pipeline.snapshots
        for d in decisions:
            pipeline.alerts.publish(d)
    finally:
        pipeline.swap_lock.release()
    if old_snapshots is not None:
        old_snapshots.stop(timeout_s=1.0)

    for name in plan.cameras_removed + plan.cameras_restarted:
        pipeline.remove_camera(name)
    for name in plan.cameras_restarted + plan.cameras_added:
        pipeline.add_camera(name, new.cameras[name])
    return new


def _swap_publisher(pipeline, new: MqttPublisher) -> None:
    old: MqttPublisher = pipeline.publisher
    # Old first: if both use the same broker and prefix, the last word on <prefix>/available must be "online".
    old.stop(flush_timeout_s=1.0)
    for topic_filter, handler in dict(old._subscriptions).items():
        new.subscribe(topic_filter, handler)
    # Retained state (label ON/OFF, snapshots) moves along, under the new prefix if that changed.
    for topic, msg in dict(old._retained_state).items():
        if topic == old.topic("available"):
            continue
        if topic.startswith(old.prefix + "/"):
            topic = new.prefix + topic[len(old.prefix):]
        new.set_retained(topic, msg.payload, msg.qos)
    pipeline.publisher = new  # before the statuses: a camera reporting meanwhile reaches the new one
    for name in pipeline.cfg.cameras:
        cam = pipeline.cameras.get(name)
        online = cam is not None and cam.state is CameraState.ONLINE
        new.set_retained(new.topic(name, "status"), "online" if online else "offline")
    new.start()
    log.info("MQTT: publishing to %s:%d under %s/ now", new.cfg.host, new.cfg.port, new.prefix)
