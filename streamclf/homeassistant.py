"""Home Assistant MQTT discovery: every camera appears as a device with its entities.

Per camera (one device, ``identifiers`` ``<node_id>_<camera>``):

- a ``binary_sensor`` per published (non-background) label, state ``<prefix>/<camera>/<label>``
  ``ON``/``OFF``, and per zone and label ``<prefix>/<camera>/<zone>/<label>`` when the camera has zones;
- a ``sensor`` with the top-scoring label, state ``<prefix>/<camera>/top_label``;
- a ``binary_sensor`` (device class ``connectivity``) for the stream, state ``<prefix>/<camera>/status``;
- a ``switch`` for runtime enable/disable and a ``number`` per label for its threshold (both
  ``entity_category: config``, served by streamclf/control.py).

Label entities need both ``<prefix>/available`` and ``<prefix>/<camera>/status`` to say
``online`` (``availability_mode: all``). The stream and control entities only need the daemon:
a stream sensor that goes unavailable exactly when the stream is down could never show ``off``,
and a camera can be switched off while its stream is down.

Topics are ``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` with
``node_id = streamclf_<topic_prefix>`` so that one subscription,
``<discovery_prefix>/+/<node_id>/+/config``, sees exactly what this daemon announced at any time
before: whatever is retained there and not announced now is deleted (streamclf/retained.py), which
is how a camera or label removed from the config loses its entities. Configs are retained, sent
again on every reconnect and whenever Home Assistant's birth message (``online`` on
``<discovery_prefix>/status``) says it has (re)started.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from streamclf import __version__
from streamclf.config import Config
from streamclf.mqtt_client import MqttClient
from streamclf.retained import OwnedRetainedTopics

log = logging.getLogger(__name__)


def node_id(topic_prefix: str) -> str:
    """The discovery node id of a daemon: ``streamclf_<topic_prefix>``, restricted to [A-Za-z0-9_-]."""
    return "streamclf_" + re.sub(r"[^A-Za-z0-9_-]", "_", topic_prefix)


@dataclass(frozen=True)
class DiscoveryEntity:
    """One Home Assistant entity: where its config goes and what it says."""

    component: str  # binary_sensor, sensor, switch, number
    object_id: str
    config: Mapping[str, Any]

    def topic(self, discovery_prefix: str, node: str) -> str:
        return f"{discovery_prefix}/{self.component}/{node}/{self.object_id}/config"


def _title(name: str) -> str:
    return name.replace("_", " ")


def discovery_entities(cfg: Config, zones: Mapping[str, Sequence[str]] | None = None) -> list[DiscoveryEntity]:
    """Every entity of every camera in ``cfg``; ``zones`` maps a camera to its zone names (none by default)."""
    prefix = cfg.mqtt.topic_prefix
    node = node_id(prefix)
    daemon_available = {"topic": f"{prefix}/available", "payload_available": "online", "payload_not_available": "offline"}
    origin = {"name": "streamclf", "sw_version": __version__}
    entities: list[DiscoveryEntity] = []
    for camera in cfg.cameras:
        camera_available = {**daemon_available, "topic": f"{prefix}/{camera}/status"}
        common = {
            "device": {
                "identifiers": [f"{node}_{camera}"],
                "name": camera,
                "manufacturer": "streamclf",
                "model": "CLIP zero-shot classifier",
                "sw_version": __version__,
            },
            "origin": origin,
            "qos": 1,
        }
        label_common = {**common, "availability": [daemon_available, camera_available], "availability_mode": "all"}
        daemon_common = {**common, "availability": [daemon_available]}

        def add(component: str, object_id: str, base: dict, **config: Any) -> None:
            entities.append(DiscoveryEntity(
                component, object_id, {**config, "unique_id": f"{node}_{object_id}", **base}
            ))

        published = [n for n in cfg.labels_for(camera) if not cfg.labels[n].background]
        # A camera with zones is classified only in its zones: it has zone states, no whole-frame state.
        zone_names = list((zones or {}).get(camera, ())) or list(cfg.cameras[camera].zones)
        for label in published:
            if not zone_names:
                add("binary_sensor", f"{camera}_label_{label}", label_common, name=_title(label),
                    state_topic=f"{prefix}/{camera}/{label}", payload_on="ON", payload_off="OFF")
            for zone in zone_names:
                add("binary_sensor", f"{camera}_zone_{zone}_label_{label}", label_common,
                    name=f"{_title(zone)} {_title(label)}", state_topic=f"{prefix}/{camera}/{zone}/{label}",
                    payload_on="ON", payload_off="OFF")
            add("number", f"{camera}_threshold_{label}", daemon_common, name=f"{_title(label)} threshold",
                command_topic=f"{prefix}/{camera}/{label}/threshold/set",
                state_topic=f"{prefix}/{camera}/{label}/threshold/state",
                min=0.0, max=1.0, step=0.01, mode="slider", entity_category="config", icon="mdi:tune")
        if not zone_names:  # top_label is published for whole-frame classifications only
            add("sensor", f"{camera}_top_label", label_common, name="Top label",
                state_topic=f"{prefix}/{camera}/top_label", icon="mdi:tag-search")
        add("binary_sensor", f"{camera}_stream", daemon_common, name="Stream", device_class="connectivity",
            state_topic=f"{prefix}/{camera}/status", payload_on="online", payload_off="offline",
            entity_category="diagnostic")
        add("switch", f"{camera}_enabled", daemon_common, name="Classification",
            command_topic=f"{prefix}/{camera}/enabled/set", state_topic=f"{prefix}/{camera}/enabled/state",
            payload_on="ON", payload_off="OFF", entity_category="config", icon="mdi:cctv")
    return _unique(entities)


def _unique(entities: list[DiscoveryEntity]) -> list[DiscoveryEntity]:
    # Names may contain '_', so e.g. label 'zone_a_label_b' and zone 'a' + label 'b' could meet; keep the first.
    seen: dict[tuple[str, str], DiscoveryEntity] = {}
    for e in entities:
        key = (e.component, e.object_id)
        if key in seen:
            log.error("Home Assistant: two entities would be %s %s (%s and %s); rename a label or zone",
                      e.component, e.object_id, seen[key].config.get("name"), e.config.get("name"))
            continue
        seen[key] = e
    return list(seen.values())


class HomeAssistantDiscovery:
    """Announces ``discovery_entities`` retained, keeps them current, deletes the ones no longer wanted."""

    def __init__(self, cfg: Config, publisher: MqttClient):
        self.settings = cfg.homeassistant
        self.node_id = node_id(cfg.mqtt.topic_prefix)
        self._cfg = cfg
        self._publisher = publisher
        self._configs = OwnedRetainedTopics(publisher, f"{self.settings.discovery_prefix}/+/{self.node_id}/+/config")
        self.resent = 0

    def start(self, zones: Mapping[str, Sequence[str]] | None = None) -> None:
        """Subscribe and queue the configs; call before the publisher connects."""
        self._configs.start()
        if self.settings.enabled:
            self._publisher.subscribe(self.settings.effective_status_topic, self._on_homeassistant_status)
        self.announce(self._cfg, zones)

    def announce(self, cfg: Config, zones: Mapping[str, Sequence[str]] | None = None) -> None:
        """Announce the entities of ``cfg`` (e.g. after a live label change) and delete the others.

        With ``homeassistant.enabled: false`` nothing is announced, so everything announced before is deleted.
        """
        self._cfg = cfg
        entities = discovery_entities(cfg, zones) if self.settings.enabled else []
        prefix = self.settings.discovery_prefix
        self._configs.replace({
            e.topic(prefix, self.node_id): json.dumps(e.config, separators=(",", ":")) for e in entities
        })
        log.info("Home Assistant discovery: %d entit%s announced under %s/+/%s",
                 len(entities), "y" if len(entities) == 1 else "ies", prefix, self.node_id)

    def _on_homeassistant_status(self, topic: str, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            log.info("Home Assistant is online (%s); sending discovery again", topic)
            self.resent += 1
            self._configs.republish()
