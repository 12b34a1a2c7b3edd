"""Config reload (SIGHUP): apply what changed without reloading the model.

``plan_reload`` compares the running and the new config; ``apply_reload`` carries the plan
out through ``Pipeline.apply`` (the same swap a runtime ``labels/set`` makes): only cameras
whose capture settings changed are (re)started, label text embeddings are re-encoded only
when prompts or label names changed, alerting rules (thresholds, hysteresis, zones, events)
go to the decider, which ends the events of labels that are gone; then Home Assistant
discovery and the control state topics follow, and the MQTT publisher reconnects in place
only when the ``mqtt`` section changed. The swap happens between two batches, so no batch
ever sees half of each. Settings that only apply at start (model,
topic prefix, node id, Home Assistant discovery) need a restart: the running values stay, and the
log says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamclf.backend import InferenceUnavailable
from streamclf.config import Config
from streamclf.state import SwapTimeout

if TYPE_CHECKING:
    from streamclf.pipeline import Pipeline

log = logging.getLogger(__name__)


class ReloadError(Exception):
    """The new config could not be applied; the running one stays."""


@dataclass(frozen=True)
class ReloadPlan:
    """What differs between the running and the new config."""

    cameras_added: tuple[str, ...] = ()
    cameras_removed: tuple[str, ...] = ()
    cameras_restarted: tuple[str, ...] = ()  # source, fps or another capture setting changed
    reencode_labels: bool = False  # label names, prompts or examples changed, or labels have examples
    labels_changed: bool = False  # labels, thresholds, a camera's labels/overrides/zones, or events
    snapshots_changed: bool = False
    mqtt_changed: bool = False
    # Keys that differ but only apply at start: model.*, topic prefix, homeassistant.*.
    restart_needed: tuple[str, ...] = ()
    metrics_changed: bool = False
    service_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.cameras_added or self.cameras_removed or self.cameras_restarted or self.labels_changed
                    or self.mqtt_changed or self.restart_needed or self.metrics_changed or self.service_changed)

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
    # Example pictures may have changed on disk under the same names: labels with examples are always re-encoded.
    reencode = (old.label_prompts() != new.label_prompts()
                or any(lc.examples for cfg in (old, new) for lc in cfg.labels.values()))
    scoring_changed = any(
        old.cameras[n].model_dump(include=scoring) != new.cameras[n].model_dump(include=scoring)
        for n in new.cameras if n in old.cameras
    )
    restart_needed = tuple(f"model.{k}" for k, v in new.model.model_dump().items() if old.model.model_dump()[k] != v)
    if old.mqtt.topic_prefix != new.mqtt.topic_prefix:
        restart_needed += ("mqtt.topic_prefix",)  # every topic, subscription and retained state derives from it
    if old.mqtt.node_id != new.mqtt.node_id:
        restart_needed += ("mqtt.node_id",)  # so do the claim, the availability topic and the hub's ids
    restart_needed += tuple(
        f"homeassistant.{k}" for k, v in new.homeassistant.model_dump().items()
        if old.homeassistant.model_dump()[k] != v
    )
    same_prefix = {"topic_prefix": old.mqtt.topic_prefix, "node_id": old.mqtt.node_id}
    return ReloadPlan(
        cameras_added=added,
        cameras_removed=removed,
        cameras_restarted=restarted,
        reencode_labels=reencode,
        labels_changed=reencode or old.labels != new.labels or scoring_changed or old.events != new.events,
        snapshots_changed=old.events.snapshots != new.events.snapshots,
        mqtt_changed=old.mqtt != new.mqtt.model_copy(update=same_prefix),
        restart_needed=restart_needed,
        metrics_changed=old.metrics != new.metrics,
        service_changed=old.service != new.service,
    )


def apply_reload(pipeline: Pipeline, new: Config, plan: ReloadPlan, swap_timeout_s: float = 10.0) -> Config:
    """Apply ``plan`` to the running ``pipeline``; returns the config now in effect.

    Raises ReloadError, with nothing changed, when the swap cannot happen between batches
    within ``swap_timeout_s`` seconds (a model call that long is the watchdog's business).
    """
    old = pipeline.cfg
    if plan.restart_needed:
        log.warning(
            "config reload: %s changed; that takes effect after a restart, the running value stays",
            ", ".join(plan.restart_needed),
        )
        new = new.model_copy(update={
            "model": old.model,
            "homeassistant": old.homeassistant,
            "mqtt": new.mqtt.model_copy(update={"topic_prefix": old.mqtt.topic_prefix, "node_id": old.mqtt.node_id}),
        })
    try:
        pipeline.apply(new, restart_cameras=plan.cameras_restarted, swap_timeout_s=swap_timeout_s)
    # ValueError: an example image became unreadable since the check; InferenceUnavailable: the model's server is away.
    except (SwapTimeout, ValueError, InferenceUnavailable) as exc:
        raise ReloadError(f"{exc}; the reload was not applied") from None
    if plan.cameras_added or plan.cameras_removed or plan.labels_changed:
        # Home Assistant entities and the control state topics follow the cameras and labels.
        pipeline.announce(new)
    if plan.mqtt_changed:
        pipeline.publisher.reconfigure(new.mqtt)
        log.info("MQTT: reconnecting to %s:%d with the new settings", new.mqtt.host, new.mqtt.port)
    return new
