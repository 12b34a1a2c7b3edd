"""Runtime control and Home Assistant discovery without a broker or a model: commands in, state and errors out."""

from __future__ import annotations

import json
from typing import Mapping

import pytest

from streamclf.config import Config, LabelConfig, parse_config
from streamclf.control import Controller
from streamclf.decisions import Decider
from streamclf.entities import Classification
from streamclf.homeassistant import HomeAssistantDiscovery, discovery_entities, node_id
from streamclf.retained import OwnedRetainedTopics

CONFIG = """
mqtt: {topic_prefix: home/clf}
labels:
  person: {threshold: 0.6}
  car: {prompts: ["a car"], threshold: 0.7}
  empty: {background: true}
cameras:
  front: {source: front.mp4}
  back: {source: back.mp4, labels: [car, empty]}
  spare: {source: spare.mp4, enabled: false}
"""


class FakePublisher:
    """The parts of MqttClient that control and discovery use, recording what they publish."""

    def __init__(self, prefix: str = "home/clf"):
        self.prefix = prefix
        self.retained: dict[str, bytes] = {}  # what the broker would hold
        self.published: list[tuple[str, bytes, bool]] = []
        self.subscriptions: dict[str, object] = {}

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def subscribe(self, topic_filter, handler, retained_only=False) -> None:
        self.subscriptions[topic_filter] = handler

    def node_topic(self, *parts: str) -> str:
        return self.topic(*parts)

    def publish(self, topic, payload, qos=0, retain=False) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        payload = payload.encode() if isinstance(payload, str) else bytes(payload)
        self.published.append((topic, payload, retain))
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)

    def set_retained(self, topic, payload, qos=1) -> None:
        self.publish(topic, payload, qos, retain=True)

    def clear_retained(self, topic) -> None:
        self.publish(topic, b"", 1, retain=True)

    def errors(self) -> list[dict]:
        return [json.loads(p) for t, p, _ in self.published if t == self.topic("error")]


class FakePipeline:
    """ControlTarget over a real Decider; replace_labels records what it was given."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.decider = Decider(cfg)
        self.paused: set[str] = set()

    def camera_enabled(self, camera):
        return self.cfg.cameras[camera].enabled and camera not in self.paused

    def set_camera_enabled(self, camera, enabled):
        (self.paused.discard if enabled else self.paused.add)(camera)

    def threshold(self, camera, label):
        return self.decider.threshold(camera, label)

    def set_threshold(self, camera, label, threshold):
        self.decider.set_threshold(camera, label, threshold)

    def replace_labels(self, labels: Mapping[str, LabelConfig]) -> Config:
        self.cfg = self.cfg.model_copy(update={"labels": dict(labels)})
        self.decider.update_labels(labels)
        return self.cfg


@pytest.fixture
def control():
    cfg = parse_config(CONFIG)
    pub, target = FakePublisher(), FakePipeline(cfg)
    announced = []
    c = Controller(target, pub, on_labels_changed=announced.append)
    c.start()  # publishes the state; tests apply commands with c.apply, so its thread stays idle
    yield c, pub, target, announced
    c.stop()


def test_initial_state_is_published_from_the_config(control):
    _, pub, _, _ = control
    r = pub.retained
    assert r["home/clf/front/enabled/state"] == b"ON" and r["home/clf/spare/enabled/state"] == b"OFF"
    assert r["home/clf/front/person/threshold/state"] == b"0.6"
    assert r["home/clf/back/car/threshold/state"] == b"0.7"
    assert "home/clf/back/person/threshold/state" not in r  # not one of back's labels
    assert "home/clf/front/empty/threshold/state" not in r  # background: never published, no threshold
    assert json.loads(r["home/clf/labels/state"])["car"] == {
        "prompts": ["a car"], "examples": None, "examples_weight": 0.5, "threshold": 0.7, "background": False,
        "min_consecutive": 2, "off_delay_s": 5.0, "cooldown_s": 0.0, "device_class": None, "icon": None,
    }


@pytest.mark.parametrize(
    "topic, payload, error",
    [
        ("front/enabled/set", b"OFF", None),
        ("front/enabled/set", b"on", None),
        ("front/enabled/set", b"MAYBE", "expected ON or OFF"),
        ("nowhere/enabled/set", b"OFF", "unknown camera 'nowhere'"),
        ("spare/enabled/set", b"ON", "enabled: false in the config file"),
        ("front/enabled/set", b"\xff\xfe", "not UTF-8"),
        ("front/person/threshold/set", b"0.25", None),
        ("front/person/threshold/set", b"1.5", "from 0 to 1"),
        ("front/person/threshold/set", b"-0.1", "from 0 to 1"),
        ("front/person/threshold/set", b"nan", "from 0 to 1"),
        ("front/person/threshold/set", b"high", "from 0 to 1"),
        ("back/person/threshold/set", b"0.5", "camera 'back' has no label 'person'"),
        ("front/empty/threshold/set", b"0.5", "background label"),
        ("nowhere/person/threshold/set", b"0.5", "unknown camera"),
        ("labels/set", b'{"dog": {}, "cat": {"threshold": 0.4}, "car": {}, "empty": {"background": true}}', None),
        ("labels/set", b"{not json", "not valid JSON"),
        ("labels/set", b'["dog", "cat"]', "expected a JSON object"),
        ("labels/set", b'{"dog": {"prompt": ["a dog"]}, "car": {}, "empty": {}}', "labels.dog.prompt: unknown key"),
        ("labels/set", b'{"dog": {"threshold": 2}, "car": {}, "empty": {}}', "labels.dog.threshold: Input should be"),
        ("labels/set", b'{"dog": {}, "cat": {}}', "cameras.back.labels: unknown label(s) ['car', 'empty']"),
        ("labels/set", b'{"car": {}, "empty": {}}', None),
        ("labels/set", b'{"car": {}}', "needs at least two labels"),
        ("labels/set", b'{"bad/name": {}, "car": {}, "empty": {}}', "1 to 64 letters"),
        ("labels/set", b'{}', "must name at least one entry"),
        ("labels/set", b'{"car": {"prompts": ["' + b"x" * 70000 + b'"]}}', "payload too large"),
        # Names are whole topic levels: "$" of a pattern must not match before a trailing newline.
        ("labels/set", b'{"person\\n": {}, "car": {}, "empty": {"background": true}}', "1 to 64 letters"),
        ("labels/set", b'{"' + b"x" * 65 + b'": {}, "car": {}, "empty": {}}', "1 to 64 letters"),
        ("labels/set", json.dumps({**{f"l{i}": {} for i in range(257)}, "car": {}, "empty": {}}).encode(),
         "at most 256 labels"),
        ("labels/set", b'{"dog": null, "car": {}, "empty": {"background": true}}', None),
        ("labels/set", b'{"dog": {"off_delay_s": Infinity}, "car": {}, "empty": {}}',
         "labels.dog.off_delay_s: Input should be a finite number"),
    ],
)
def test_commands_are_validated_and_invalid_ones_change_nothing(control, topic, payload, error):
    c, pub, target, announced = control
    before_cfg, before_retained = target.cfg, dict(pub.retained)
    applied = c.apply(f"home/clf/{topic}", payload)
    if error is None:
        assert applied and not pub.errors()
        return
    assert not applied
    [err] = pub.errors()
    assert error in err["error"]
    assert err["topic"] == f"home/clf/{topic}"
    assert err["payload"] == payload[:200].decode("utf-8", errors="replace")
    assert target.cfg is before_cfg and pub.retained == before_retained and not target.paused and not announced


def test_state_is_echoed_after_each_change(control):
    c, pub, target, announced = control
    assert c.apply("home/clf/front/enabled/set", b"OFF")
    assert pub.retained["home/clf/front/enabled/state"] == b"OFF" and target.paused == {"front"}
    assert c.apply("home/clf/front/car/threshold/set", b"0.9")
    assert pub.retained["home/clf/front/car/threshold/state"] == b"0.9"
    assert target.threshold("front", "car") == 0.9 and target.threshold("back", "car") == 0.7  # per camera

    assert c.apply("home/clf/labels/set", b'{"car": {"threshold": 0.5}, "van": {}, "empty": {"background": true}}')
    assert [cfg.labels.keys() for cfg in announced] == [{"car", "van", "empty"}]
    r = pub.retained
    assert set(json.loads(r["home/clf/labels/state"])) == {"car", "van", "empty"}
    assert "home/clf/front/person/threshold/state" not in r  # removed with its label
    assert r["home/clf/front/van/threshold/state"] == b"0.5"
    assert r["home/clf/front/car/threshold/state"] == b"0.9"  # a per-camera override outlives the label change
    assert r["home/clf/back/car/threshold/state"] == b"0.5"
    assert r["home/clf/front/enabled/state"] == b"OFF"


def test_thresholds_are_per_camera_in_decisions():
    cfg = parse_config(CONFIG)
    d = Decider(cfg)
    d.set_threshold("front", "car", 0.95)
    scores = {"person": 0.1, "car": 0.8, "empty": 0.1}
    assert [x.label for x in d.observe(Classification("front", 0, 0.0, 0.0, scores), now=1.0).detections] == []
    assert [x.label for x in d.observe(Classification("back", 0, 0.0, 0.0, scores), now=1.0).detections] == ["car"]
    with pytest.raises(KeyError):
        d.set_threshold("front", "dog", 0.5)


def test_discovery_entities_describe_each_camera():
    cfg = parse_config(CONFIG)
    node = node_id("home/clf")
    assert node == "streamclf_home_clf"
    entities = {(e.component, e.object_id): e for e in discovery_entities(cfg)}
    person = entities[("binary_sensor", "front_label_person")].config
    assert person["unique_id"] == "streamclf_home_clf_front_label_person"
    assert person["state_topic"] == "home/clf/front/person"
    assert (person["payload_on"], person["payload_off"]) == ("ON", "OFF")
    assert person["device"]["identifiers"] == ["streamclf_home_clf_front"] and person["device"]["name"] == "Front"
    assert [a["topic"] for a in person["availability"]] == [
        "home/clf/available", "home/clf/front/status", "home/clf/front/enabled/state"]
    assert person["availability_mode"] == "all"
    # A camera with zones is classified only in its zones: zone sensors replace the whole-frame ones.
    zoned = {(e.component, e.object_id): e for e in discovery_entities(cfg, zones={"front": ["porch"]})}
    porch_person = zoned[("binary_sensor", "front_zone_porch_label_person")].config
    assert porch_person["state_topic"] == "home/clf/front/porch/person"
    assert ("binary_sensor", "front_label_person") not in zoned and ("sensor", "front_top_label") not in zoned
    assert ("binary_sensor", "front_label_empty") not in entities  # background labels are never ON
    assert ("binary_sensor", "back_label_person") not in entities  # not one of back's labels
    assert entities[("sensor", "back_top_label")].config["state_topic"] == "home/clf/back/top_label"
    stream = entities[("binary_sensor", "front_stream")].config
    assert stream["device_class"] == "connectivity" and stream["state_topic"] == "home/clf/front/status"
    assert [a["topic"] for a in stream["availability"]] == ["home/clf/available"]
    switch = entities[("switch", "front_enabled")].config
    assert switch["command_topic"] == "home/clf/front/enabled/set"
    assert switch["state_topic"] == "home/clf/front/enabled/state"
    number = entities[("number", "back_threshold_car")].config
    assert number["command_topic"] == "home/clf/back/car/threshold/set" and (number["min"], number["max"]) == (0, 1)
    assert len({e["unique_id"] for e in (x.config for x in entities.values())}) == len(entities)
    topic = next(iter(discovery_entities(cfg))).topic("homeassistant", node)
    assert topic.startswith("homeassistant/") and topic.endswith("/config") and f"/{node}/" in topic


def test_stale_retained_topics_are_deleted_and_owned_ones_kept():
    pub = FakePublisher()
    owned = OwnedRetainedTopics(pub, "ha/+/node/+/config")
    owned.start()
    owned.replace({"ha/sensor/node/a/config": "A", "ha/sensor/node/b/config": "B"})
    on_message = pub.subscriptions["ha/+/node/+/config"]
    on_message("ha/sensor/node/a/config", b"old A")  # ours: kept
    on_message("ha/sensor/node/gone/config", b"X")  # from an earlier run: deleted
    on_message("ha/sensor/node/gone/config", b"")  # the deletion coming back: ignored
    assert pub.retained == {"ha/sensor/node/a/config": b"A", "ha/sensor/node/b/config": b"B"}
    assert owned.removed_stale == 1
    owned.replace({"ha/sensor/node/a/config": "A"})
    assert pub.retained == {"ha/sensor/node/a/config": b"A"}


def test_discovery_off_removes_everything_and_birth_resends():
    cfg = parse_config(CONFIG)
    pub = FakePublisher()
    ha = HomeAssistantDiscovery(cfg, pub)
    ha.start()
    n = len(pub.retained)
    assert n == len(discovery_entities(cfg)) and all(t.startswith("homeassistant/") for t in pub.retained)
    pub.published.clear()
    pub.subscriptions["homeassistant/status"]("homeassistant/status", b"online")
    assert len(pub.published) == n and ha.resent == 1
    pub.subscriptions["homeassistant/status"]("homeassistant/status", b"offline")
    assert ha.resent == 1

    disabled = cfg.homeassistant.model_copy(update={"enabled": False})
    off = HomeAssistantDiscovery(cfg.model_copy(update={"homeassistant": disabled}), pub)
    off.start()
    # The broker hands the new run every retained config under its filter.
    on_config = pub.subscriptions[f"{off.settings.discovery_prefix}/+/{off.node_id}/+/config"]
    for topic, payload in list(pub.retained.items()):
        on_config(topic, payload)
    assert pub.retained == {}
