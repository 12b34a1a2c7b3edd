"""Home Assistant MQTT discovery: the daemon is a hub device, every camera a device linked to it.

The hub (``identifiers`` ``<node_id>``; model, device and precision in ``model``/``hw_version``):

- a ``binary_sensor`` (``connectivity``) on ``<prefix>/available``;
- when ``service.stats_interval_s`` > 0, ``sensor``s read from the ``<prefix>/stats`` JSON: classified
  frames/s, frames dropped, MQTT messages queued and dropped.

Per camera (``identifiers`` ``<node_id>_<camera>``, ``via_device`` the hub, named ``cameras.<name>.name``):

- per published (non-background) label, and per zone and label when the camera has zones: a
  ``binary_sensor`` on ``<prefix>/<camera>[/<zone>]/<label>`` (``ON``/``OFF``) whose attributes come
  from ``.../<label>/attributes`` (score, top score, event id, since; see streamclf/alerts.py), a
  ``sensor`` on ``.../<label>/score`` (disabled by default: see ``_label_entities``), and, when
  snapshots go to MQTT, an ``image`` on ``.../<label>/snapshot``;
- an ``event`` on ``<prefix>/<camera>/event`` (per zone when the camera has zones), event types
  ``start``/``update``/``end`` with label, zone, scores, event id and times as attributes;
- a ``sensor`` (``enum``) with the top-scoring label on ``<prefix>/<camera>/top_label``;
- a ``binary_sensor`` (``connectivity``) for the stream on ``<prefix>/<camera>/status``;
- a ``switch`` for runtime enable/disable and a ``number`` per label for its threshold (both
  ``entity_category: config``, served by streamclf/control.py).

Label, score and top-label entities need ``<prefix>/available`` and ``<prefix>/<camera>/status`` to
say ``online`` and ``<prefix>/<camera>/enabled/state`` to say ``ON`` (``availability_mode: all``): a
paused or offline camera reads ``unavailable``, not a confident ``off``. The other entities only need
the daemon: a stream sensor that goes unavailable exactly when the stream is down could never show
``off``, and a camera can be switched back on, and its last snapshot and events looked at, while it is
paused.

Topics are ``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` with
``node_id = streamclf_<topic_prefix>`` so that one subscription,
``<discovery_prefix>/+/<node_id>/+/config``, sees exactly what this daemon announced at any time
before: whatever is retained there and not announced now is deleted (streamclf/retained.py), which
is how a camera or label removed from the config loses its entities. Configs are retained, sent
again on every reconnect and whenever Home Assistant's birth message (``online`` on
``<discovery_prefix>/status``) says it has (re)started. Payloads carry no ``object_id`` (Home
Assistant derives entity ids from device and entity names) and entity names never repeat the device
name; docs/home-assistant.md lists the Home Assistant versions they were checked against.

Several nodes on one prefix (``mqtt.node_id``, streamclf/nodes.py): each node is a hub of its own,
``identifiers`` ``<node_id>-node-<node>`` (a ``-`` where a camera device has ``_``, so no camera
name can produce it), its entities' configs under that id, its availability and stats on
``<prefix>/nodes/<node>/...``. Cameras keep the ids above (``<node_id>_<camera>``, configs under
``<node_id>``), so a camera moved to another node keeps its entities; only its ``via_device`` and
availability change. Each node announces only the cameras it holds, and the configs under
``<node_id>`` are shared: each node cleans up there only what belongs to no camera another node
holds, telling a config's camera by its device.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from streamclf import __version__
from streamclf.config import Config
from streamclf.mqtt_client import MqttClient, node_topic
from streamclf.nodes import NodeOwnership
from streamclf.retained import OwnedRetainedTopics

log = logging.getLogger(__name__)


def node_id(topic_prefix: str) -> str:
    """The discovery node id of a daemon: ``streamclf_<topic_prefix>``, restricted to [A-Za-z0-9_-]."""
    return "streamclf_" + re.sub(r"[^A-Za-z0-9_-]", "_", topic_prefix)


def hub_id(topic_prefix: str, node: str | None) -> str:
    """The hub device's identifier and discovery node id: ``node_id``, or ``<node_id>-node-<node>`` for a node."""
    return node_id(topic_prefix) + (f"-node-{node}" if node else "")


def camera_of_config(base: str) -> Callable[[str, bytes], str | None]:
    """For configs under discovery node id ``base``: the camera a retained config belongs to (its
    device is ``<base>_<camera>`` and linked to a hub), or None (a hub's, or unreadable)."""
    def camera_of(topic: str, payload: bytes) -> str | None:
        try:
            device = json.loads(payload).get("device") or {}
            ident = device["identifiers"][0]
        except (ValueError, AttributeError, KeyError, IndexError, TypeError):
            return None
        if "via_device" not in device or not isinstance(ident, str) or not ident.startswith(base + "_"):
            return None
        return ident[len(base) + 1:]
    return camera_of


@dataclass(frozen=True)
class DiscoveryEntity:
    """One Home Assistant entity: where its config goes and what it says."""

    component: str  # binary_sensor, sensor, switch, number, image, event
    object_id: str
    config: Mapping[str, Any]
    hub: bool = False  # the hub's (the daemon's or node's own), not a camera's

    def topic(self, discovery_prefix: str, node: str) -> str:
        return f"{discovery_prefix}/{self.component}/{node}/{self.object_id}/config"


def readable(key: str) -> str:
    """A config key as a name: ``front_gate`` -> ``Front gate`` (sentence case, as Home Assistant names)."""
    text = key.replace("_", " ").strip() or key
    return text[0].upper() + text[1:]


_DAEMON_ONLINE = {"payload_available": "online", "payload_not_available": "offline"}
# The event message as Home Assistant's event entity wants it: ``event_type`` plus attributes. Messages of
# other zones (or of zones, for the whole-frame entity) render empty, which Home Assistant skips.
_EVENT_FIELDS = ("'event_type': value_json.type, 'label': value_json.label, 'zone': value_json.zone, "
                 "'score': value_json.score, 'top_score': value_json.top_score, 'event_id': value_json.id, "
                 "'start_time': value_json.start_time, 'end_time': value_json.end_time, "
                 "'end_reason': value_json.get('reason')")
_STATS = {  # object id suffix -> (name, value template over <prefix>/stats, extra config)
    "classified_fps": ("Classified frames per second", "{{ value_json.classified_fps }}",
                       {"unit_of_measurement": "frames/s", "state_class": "measurement", "icon": "mdi:speedometer"}),
    "frames_dropped": ("Frames dropped",
                       "{% set ns = namespace(n=0) %}{% for c in value_json.cameras.values() %}"
                       "{% set ns.n = ns.n + (c.frames_dropped.values() | sum) %}{% endfor %}{{ ns.n }}",
                       {"state_class": "total_increasing", "icon": "mdi:image-off", "entity_category": "diagnostic"}),
    "mqtt_queued": ("MQTT messages queued", "{{ value_json.mqtt.queued_messages }}",
                    {"state_class": "measurement", "icon": "mdi:tray-full", "entity_category": "diagnostic"}),
    "mqtt_dropped": ("MQTT messages dropped", "{{ value_json.mqtt.dropped_messages }}",
                     {"state_class": "total_increasing", "icon": "mdi:tray-remove", "entity_category": "diagnostic"}),
}


def event_template(zone: str | None) -> str:
    """The event entity's ``value_template`` for the whole frame (``zone`` None) or one zone."""
    match = "value_json.zone is none" if zone is None else f"value_json.zone == '{zone}'"
    return "{% if " + match + " %}{{ {" + _EVENT_FIELDS + "} | tojson }}{% endif %}"


class _Entities:
    """Collects the entities of one config; ``add`` fills in unique_id, device, origin and availability."""

    def __init__(self, cfg: Config, hardware: str | None):
        self.cfg = cfg
        self.prefix = cfg.mqtt.topic_prefix
        self.node = node_id(self.prefix)
        self.hub_id = hub_id(self.prefix, cfg.mqtt.node_id)
        self.available_topic = node_topic(self.prefix, cfg.mqtt.node_id, "available")
        self.stats_topic = node_topic(self.prefix, cfg.mqtt.node_id, "stats")
        self.daemon_available = [{"topic": self.available_topic, **_DAEMON_ONLINE}]
        self.origin = {"name": "streamclf", "sw_version": __version__}
        name = "streamclf" if self.prefix == "streamclf" else f"streamclf {self.prefix}"
        self.hub = {
            "identifiers": [self.hub_id],
            "name": f"{name} {cfg.mqtt.node_id}" if cfg.mqtt.node_id else name,
            "manufacturer": "streamclf",
            "model": cfg.model.name,
            "sw_version": __version__,
            **({"hw_version": hardware} if hardware else {}),
        }
        self.items: list[DiscoveryEntity] = []

    def add(self, component: str, object_id: str, device: dict, availability: list | None, **config: Any) -> None:
        hub = device is self.hub
        base = {"unique_id": f"{self.hub_id if hub else self.node}_{object_id}", "device": device,
                "origin": self.origin, "qos": 1}
        if availability:
            base["availability"] = availability
            if len(availability) > 1:
                base["availability_mode"] = "all"
        self.items.append(DiscoveryEntity(component, object_id, {**config, **base}, hub))


def discovery_entities(cfg: Config, zones: Mapping[str, Sequence[str]] | None = None,
                       hardware: str | None = None, cameras: Iterable[str] | None = None) -> list[DiscoveryEntity]:
    """Every entity of the hub and of every camera in ``cfg`` (or of ``cameras``, those of them this node holds).

    ``zones`` maps a camera to its zone names (default: the config's); ``hardware`` (e.g. ``cpu, fp32``:
    the model's device and precision) becomes the hub's ``hw_version``.
    """
    out = _Entities(cfg, hardware)
    _hub_entities(out)
    for camera in cfg.cameras if cameras is None else cameras:
        # A camera with zones is classified only in its zones: it has zone states, no whole-frame state.
        zone_names = list((zones or {}).get(camera, ())) or list(cfg.cameras[camera].zones)
        _camera_entities(out, camera, zone_names)
    return _unique(out.items)


def _hub_entities(out: _Entities) -> None:
    out.add("binary_sensor", "hub_online", out.hub, None, name="Online", device_class="connectivity",
            state_topic=out.available_topic, payload_on="online", payload_off="offline",
            entity_category="diagnostic")
    interval_s = out.cfg.service.stats_interval_s
    if not interval_s:
        return
    for suffix, (name, template, extra) in _STATS.items():
        # expire_after: a daemon whose MQTT connection lives on but whose main loop hangs stops sending stats.
        out.add("sensor", f"hub_{suffix}", out.hub, out.daemon_available, name=name, state_topic=out.stats_topic,
                value_template=template, expire_after=max(1, math.ceil(3 * interval_s)), **extra)


def _camera_entities(out: _Entities, camera: str, zone_names: list[str]) -> None:
    cfg, prefix = out.cfg, out.prefix
    device = {
        "identifiers": [f"{out.node}_{camera}"],
        "name": cfg.cameras[camera].name or readable(camera),
        "manufacturer": "streamclf",
        "model": "CLIP zero-shot classifier",
        "sw_version": __version__,
        "via_device": out.hub_id,
    }
    honest = out.daemon_available + [
        {"topic": f"{prefix}/{camera}/status", **_DAEMON_ONLINE},
        {"topic": f"{prefix}/{camera}/enabled/state", "payload_available": "ON", "payload_not_available": "OFF"},
    ]
    published = [n for n in cfg.labels_for(camera) if not cfg.labels[n].background]
    zones: list[str | None] = [*zone_names] or [None]  # None: the whole frame
    for label in published:
        for zone in zones:
            _label_entities(out, camera, zone, label, device, honest)
        out.add("number", f"{camera}_threshold_{label}", device, out.daemon_available,
                name=f"{readable(label)} threshold", command_topic=f"{prefix}/{camera}/{label}/threshold/set",
                state_topic=f"{prefix}/{camera}/{label}/threshold/state",
                min=0.0, max=1.0, step=0.01, mode="slider", entity_category="config", icon="mdi:tune")
    for zone in zones:
        out.add("event", f"{camera}_event" if zone is None else f"{camera}_zone_{zone}_event", device,
                out.daemon_available, name="Event" if zone is None else f"{readable(zone)} event",
                state_topic=f"{prefix}/{camera}/event", event_types=["start", "update", "end"],
                value_template=event_template(zone), icon="mdi:motion-sensor")
    if not zone_names:  # top_label is published for whole-frame classifications only
        out.add("sensor", f"{camera}_top_label", device, honest, name="Top label",
                state_topic=f"{prefix}/{camera}/top_label", device_class="enum",
                options=list(cfg.labels_for(camera)), icon="mdi:tag-search")
    out.add("binary_sensor", f"{camera}_stream", device, out.daemon_available, name="Stream",
            device_class="connectivity", state_topic=f"{prefix}/{camera}/status", payload_on="online",
            payload_off="offline", entity_category="diagnostic")
    out.add("switch", f"{camera}_enabled", device, out.daemon_available, name="Classification",
            command_topic=f"{prefix}/{camera}/enabled/set", state_topic=f"{prefix}/{camera}/enabled/state",
            payload_on="ON", payload_off="OFF", entity_category="config", icon="mdi:cctv")


def _label_entities(out: _Entities, camera: str, zone: str | None, label: str, device: dict, honest: list) -> None:
    lc = out.cfg.labels[label]
    where = f"{out.prefix}/{camera}" if zone is None else f"{out.prefix}/{camera}/{zone}"
    stem = f"{camera}_" if zone is None else f"{camera}_zone_{zone}_"
    name = readable(label) if zone is None else f"{readable(zone)} {label.replace('_', ' ')}"
    look = {k: v for k, v in (("device_class", lc.device_class), ("icon", lc.icon)) if v}
    out.add("binary_sensor", f"{stem}label_{label}", device, honest, name=name, state_topic=f"{where}/{label}",
            payload_on="ON", payload_off="OFF", json_attributes_topic=f"{where}/{label}/attributes", **look)
    # Off by default: it changes with every score message (up to one a second per label), and each change
    # is a row in Home Assistant's recorder; enable it while tuning a threshold.
    out.add("sensor", f"{stem}score_{label}", device, honest, name=f"{name} score",
            state_topic=f"{where}/{label}/score", state_class="measurement", suggested_display_precision=2,
            enabled_by_default=False, icon="mdi:percent-circle")
    if out.cfg.events.snapshots.enabled and out.cfg.events.snapshots.mqtt:
        out.add("image", f"{stem}snapshot_{label}", device, out.daemon_available,
                name=f"{name} snapshot", image_topic=f"{where}/{label}/snapshot", content_type="image/jpeg")


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


def _json(config: Mapping[str, Any]) -> str:
    return json.dumps(config, separators=(",", ":"))


class HomeAssistantDiscovery:
    """Announces ``discovery_entities`` retained, keeps them current, deletes the ones no longer wanted."""

    def __init__(self, cfg: Config, publisher: MqttClient, hardware: str | None = None,
                 ownership: NodeOwnership | None = None):
        """``hardware``: the model's device and precision (e.g. ``cuda:0, fp16``), shown on the hub device.
        ``ownership``: with several nodes on the prefix, which cameras this node holds."""
        self.settings = cfg.homeassistant
        self.hardware = hardware
        self.node_id = node_id(cfg.mqtt.topic_prefix)
        self.hub_id = hub_id(cfg.mqtt.topic_prefix, cfg.mqtt.node_id)
        self._cfg = cfg
        self._zones: Mapping[str, Sequence[str]] | None = None
        self._publisher = publisher
        self._ownership = ownership
        self._lock = threading.Lock()  # announces come from control, reload and (with nodes) the claims
        prefix = self.settings.discovery_prefix
        # Camera configs (and, for the only daemon on a prefix, the hub's) live under node_id. A node's hub
        # has its own id, so each node's cleanup there is exactly its own; under node_id it spares the
        # cameras other nodes hold.
        self._configs = OwnedRetainedTopics(publisher, f"{prefix}/+/{self.node_id}/+/config",
                                            camera_of_config(self.node_id), ownership)
        self._hub_configs = (OwnedRetainedTopics(publisher, f"{prefix}/+/{self.hub_id}/+/config")
                             if self.hub_id != self.node_id else None)
        self.resent = 0

    def start(self, zones: Mapping[str, Sequence[str]] | None = None) -> None:
        """Subscribe and queue the configs; call before the publisher connects."""
        self._configs.start()
        if self._hub_configs is not None:
            self._hub_configs.start()
        if self.settings.enabled:
            self._publisher.subscribe(self.settings.effective_status_topic, self._on_homeassistant_status)
        if self._ownership is not None:
            self._ownership.on_change(self._on_ownership_change)
        self.announce(self._cfg, zones)

    def announce(self, cfg: Config, zones: Mapping[str, Sequence[str]] | None = None) -> None:
        """Announce the entities of ``cfg`` (e.g. after a live label change) and delete the others.

        With ``homeassistant.enabled: false`` nothing is announced, so everything announced before is deleted.
        With several nodes, only the cameras this node holds are announced.
        """
        with self._lock:
            self._cfg, self._zones = cfg, zones
            cameras = None if self._ownership is None else self._ownership.held_of(cfg.cameras)
            entities = discovery_entities(cfg, zones, self.hardware, cameras) if self.settings.enabled else []
            prefix = self.settings.discovery_prefix
            configs = {e.topic(prefix, self.hub_id if e.hub else self.node_id): _json(e.config) for e in entities}
            if self._hub_configs is None:
                self._configs.replace(configs)
            else:
                hub = {t: p for t, p in configs.items() if f"/{self.hub_id}/" in t}
                self._configs.replace({t: p for t, p in configs.items() if t not in hub})
                self._hub_configs.replace(hub)
        log.info("Home Assistant discovery: %d entit%s announced under %s/+/%s",
                 len(entities), "y" if len(entities) == 1 else "ies", prefix, self.node_id)

    def _on_ownership_change(self) -> None:
        # The cameras held changed (or the claims became known): announce those, then judge what the
        # broker held before, now that our own configs are owned again and not taken for leftovers.
        self.announce(self._cfg, self._zones)
        self._configs.flush_pending()

    def _on_homeassistant_status(self, topic: str, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            log.info("Home Assistant is online (%s); sending discovery again", topic)
            self.resent += 1
            self._configs.republish()
            if self._hub_configs is not None:
                self._hub_configs.republish()
