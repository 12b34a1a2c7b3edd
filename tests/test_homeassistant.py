"""Home Assistant discovery payloads and the alert topics behind them, without a broker or a model."""

from __future__ import annotations

import json

import pytest

from streamclf.alerts import AlertPublisher
from streamclf.config import ConfigError, parse_config
from streamclf.decisions import Decider
from streamclf.entities import Classification
from streamclf.homeassistant import HomeAssistantDiscovery, discovery_entities, event_template, readable
from tests.test_control import FakePublisher

CONFIG = """
mqtt: {topic_prefix: home/clf}
labels:
  person: {threshold: 0.5, min_consecutive: 1, off_delay_s: 0, device_class: occupancy, icon: "mdi:account"}
  delivery_van: {threshold: 0.5, min_consecutive: 1, off_delay_s: 0}
  empty: {background: true}
cameras:
  front_gate: {source: front.mp4, name: "Gate at the front"}
  back_yard:
    source: back.mp4
    zones: {porch: {box: [0, 0, 0.5, 1]}, lawn_edge: {box: [0.5, 0, 1, 1]}}
"""


def by_id(cfg, **kwargs) -> dict:
    return {e.object_id: (e.component, e.config) for e in discovery_entities(cfg, **kwargs)}


@pytest.mark.parametrize("key, expected", [("front_gate", "Front gate"), ("porch", "Porch"), ("Cam_2", "Cam 2"),
                                           ("a", "A")])
def test_readable_names(key, expected):
    assert readable(key) == expected


def test_the_hub_device_and_every_camera_linked_to_it():
    cfg = parse_config(CONFIG)
    entities = by_id(cfg, hardware="cpu, fp32")
    component, online = entities["hub_online"]
    assert component == "binary_sensor" and online["state_topic"] == "home/clf/available"
    assert "availability" not in online  # it must be able to show off
    hub = online["device"]
    assert hub["identifiers"] == ["streamclf_home_clf"] and hub["name"] == "streamclf home/clf"
    assert (hub["model"], hub["hw_version"]) == ("openai/clip-vit-base-patch32", "cpu, fp32")
    assert "configuration_url" not in hub  # no page is served yet
    fps = entities["hub_classified_fps"][1]
    assert fps["state_topic"] == "home/clf/stats" and fps["value_template"] == "{{ value_json.classified_fps }}"
    assert fps["expire_after"] == 180 and fps["device"] == hub
    cameras = {c["device"]["identifiers"][0]: c["device"] for _, c in entities.values() if c["device"] != hub}
    assert set(cameras) == {"streamclf_home_clf_front_gate", "streamclf_home_clf_back_yard"}
    assert all(d["via_device"] == "streamclf_home_clf" for d in cameras.values())
    assert cameras["streamclf_home_clf_front_gate"]["name"] == "Gate at the front"
    assert cameras["streamclf_home_clf_back_yard"]["name"] == "Back yard"
    no_stats = by_id(cfg.model_copy(update={"service": cfg.service.model_copy(update={"stats_interval_s": 0})}))
    assert [k for k in no_stats if k.startswith("hub_")] == ["hub_online"]
    assert "hw_version" not in no_stats["hub_online"][1]["device"]


def test_label_entities_names_looks_attributes_scores_and_availability():
    entities = by_id(parse_config(CONFIG))
    person = entities["front_gate_label_person"][1]
    assert (person["name"], person["device_class"], person["icon"]) == ("Person", "occupancy", "mdi:account")
    assert person["json_attributes_topic"] == "home/clf/front_gate/person/attributes"
    van = entities["front_gate_label_delivery_van"][1]
    assert van["name"] == "Delivery van" and "device_class" not in van and "icon" not in van
    zoned = entities["back_yard_zone_lawn_edge_label_delivery_van"][1]
    assert zoned["name"] == "Lawn edge delivery van"
    assert zoned["state_topic"] == "home/clf/back_yard/lawn_edge/delivery_van"
    # Paused (enabled/state OFF) or offline cameras read unavailable rather than a confident off.
    assert [(a["topic"], a["payload_available"]) for a in person["availability"]] == [
        ("home/clf/available", "online"), ("home/clf/front_gate/status", "online"),
        ("home/clf/front_gate/enabled/state", "ON")]
    assert person["availability_mode"] == "all"
    component, score = entities["front_gate_score_person"]
    assert component == "sensor" and score["state_topic"] == "home/clf/front_gate/person/score"
    assert score["enabled_by_default"] is False and score["state_class"] == "measurement"
    assert score["name"] == "Person score" and score["availability"] == person["availability"]
    top = entities["front_gate_top_label"][1]
    assert top["device_class"] == "enum" and top["options"] == ["person", "delivery_van", "empty"]
    assert top["availability"] == person["availability"]
    assert "back_yard_top_label" not in entities  # zoned cameras publish no whole-frame top label
    # Entity names never begin with their device's name (Home Assistant would show it twice).
    for _, config in entities.values():
        assert config["name"][0].isupper(), config["name"]
        assert not config["name"].lower().startswith(config["device"]["name"].lower()), config["name"]


def test_images_follow_mqtt_snapshots_and_events_per_camera_or_zone():
    cfg = parse_config(CONFIG)
    entities = by_id(cfg)
    component, image = entities["front_gate_snapshot_person"]
    assert component == "image" and image["image_topic"] == "home/clf/front_gate/person/snapshot"
    assert image["content_type"] == "image/jpeg" and image["name"] == "Person snapshot"
    porch_snapshot = entities["back_yard_zone_porch_snapshot_person"][1]
    assert porch_snapshot["image_topic"] == "home/clf/back_yard/porch/person/snapshot"
    snaps = cfg.events.snapshots
    for off in ({"mqtt": False}, {"enabled": False}):
        quiet_events = cfg.events.model_copy(update={"snapshots": snaps.model_copy(update=off)})
        quiet = cfg.model_copy(update={"events": quiet_events})
        assert not [k for k, (c, _) in by_id(quiet).items() if c == "image"]
    events = {k: c for k, (comp, c) in entities.items() if comp == "event"}
    assert set(events) == {"front_gate_event", "back_yard_zone_porch_event", "back_yard_zone_lawn_edge_event"}
    assert all(e["state_topic"].endswith("/event") and e["event_types"] == ["start", "update", "end"]
               for e in events.values())
    assert events["back_yard_zone_porch_event"]["name"] == "Porch event"
    assert events["back_yard_zone_porch_event"]["value_template"] == event_template("porch")


def test_a_removed_label_loses_its_image_and_score_entities_too():
    cfg = parse_config(CONFIG)
    pub = FakePublisher()
    HomeAssistantDiscovery(cfg, pub).start()
    assert any("/image/" in t and t.endswith("front_gate_snapshot_delivery_van/config") for t in pub.retained)
    labels = {k: v for k, v in cfg.labels.items() if k != "delivery_van"}
    ha = HomeAssistantDiscovery(cfg, pub)
    ha.start()
    ha.announce(cfg.model_copy(update={"labels": labels}))
    assert not [t for t in pub.retained if "delivery_van" in t]
    assert any(t.endswith("front_gate_snapshot_person/config") for t in pub.retained)


@pytest.mark.parametrize(
    "label_extra, camera_extra, error",
    [
        ("device_class: motion", "", None),
        ("device_class: person", "", "device_class"),
        ('icon: "mdi:walk"', "", None),
        ("icon: walk", "", "mdi:"),
        ("", "name: Front door", None),
        ("", 'name: ""', "name"),
    ],
)
def test_home_assistant_config_fields_validate(label_extra, camera_extra, error):
    text = f"""
labels:
  person: {{{label_extra}}}
  car: {{}}
cameras:
  front: {{source: v.mp4{', ' + camera_extra if camera_extra else ''}}}
"""
    if error is None:
        parse_config(text)
        return
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert error in str(info.value)


class ConnectedPublisher(FakePublisher):
    connected = True


def test_attributes_follow_events_and_scores_are_rate_limited(monkeypatch):
    cfg = parse_config(CONFIG)
    pub = ConnectedPublisher()
    alerts = AlertPublisher(pub, cfg)
    decider = Decider(cfg)
    c = Classification("front_gate", 0, 0.0, 0.0, {"person": 0.8, "delivery_van": 0.1, "empty": 0.1})
    alerts.publish(decider.observe(c, now=0.0))
    attrs = json.loads(pub.retained["home/clf/front_gate/person/attributes"])
    assert (attrs["score"], attrs["top_score"]) == (0.8, 0.8)
    assert attrs["event_id"] and attrs["since"].endswith("+00:00")
    alerts.publish(decider.observe(Classification("front_gate", 1, 0, 0, {"person": 0.1, "empty": 0.9}), now=1.0))
    ended = json.loads(pub.retained["home/clf/front_gate/person/attributes"])
    assert ended["event_id"] == attrs["event_id"] and ended["score"] == 0.1 and ended["top_score"] == 0.8
    assert "end_reason" not in ended
    alerts.publish(decider.observe(c, now=2.0))
    alerts.publish(decider.end_silent_camera("front_gate", 60.0))
    assert json.loads(pub.retained["home/clf/front_gate/person/attributes"])["end_reason"] == "camera_offline"

    clock = [100.0]
    monkeypatch.setattr("streamclf.alerts.time.monotonic", lambda: clock[0])
    pub.published.clear()
    for _ in range(3):  # three frames within a second: one score per label
        alerts.publish_scores(c)
    assert sorted((t, p) for t, p, _ in pub.published) == [
        ("home/clf/front_gate/delivery_van/score", b"0.1000"), ("home/clf/front_gate/person/score", b"0.8000")]
    assert all(not retain for _, _, retain in pub.published)  # never retained
    clock[0] += cfg.events.event_update_interval_s
    alerts.publish_scores(Classification("back_yard", 0, 0, 0, {"person": 0.3, "empty": 0.7}, zone="porch"))
    alerts.publish_scores(c)
    assert [t for t, _, _ in pub.published[2:]] == [
        "home/clf/back_yard/porch/person/score", "home/clf/front_gate/person/score",
        "home/clf/front_gate/delivery_van/score"]
    pub.connected = False  # a live view: nothing is queued through an outage
    clock[0] += 60
    alerts.publish_scores(c)
    assert len(pub.published) == 5 and alerts.scores_published == 5
