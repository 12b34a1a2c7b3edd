"""Home Assistant discovery and runtime control against a running daemon and a real broker."""

from __future__ import annotations

import json
import signal

import numpy as np
import paho.mqtt.publish
import pytest

from tests.conftest import base_config
from tests.servers import MqttCollector, make_video, read_retained
from tests.test_homeassistant_schemas import NEWER_THAN_CHECKED, have_home_assistant, home_assistant_check

pytestmark = pytest.mark.slow

LABELS = {
    "red_thing": {"prompts": ["a red object"], "threshold": 0.0},
    "blue_thing": {"prompts": ["a blue object"], "threshold": 0.0},
    "nothing": {"prompts": ["an empty scene"], "background": True},
}


def _video(path, frames: int = 20):
    def frame(i: int) -> np.ndarray:
        img = np.zeros((240, 320, 3), np.uint8)
        img[:] = (0, 0, 255)
        img[:, (i * 13) % 320 :] //= 2  # keep frames distinct
        return img

    return make_video(path, frames, fps=10, size=(320, 240), color_fn=frame)


def _send(broker, topic: str, payload: str | bytes) -> None:
    paho.mqtt.publish.single(topic, payload, qos=1, hostname=broker.host, port=broker.port)


def _command(broker, collector, topic: str, payload: str) -> None:
    """Send a command with a collector cleared of earlier messages, so the next echo is its answer."""
    collector.clear()
    _send(broker, topic, payload)


def _index_of_last(msgs: list, topic: str, payload: bytes) -> int:
    """Position of the last message on ``topic`` with ``payload`` in the collector's ordered stream."""
    hits = [i for i, (t, p, _) in enumerate(msgs) if t == topic and p == payload]
    assert hits, f"no {payload!r} on {topic}; {MqttCollector.summary(msgs)}"
    return hits[-1]


def _detections_after(msgs: list, start: int, camera_topic: str) -> list[dict]:
    return [json.loads(p) for t, p, _ in msgs[start + 1 :] if t == camera_topic]


def _echoed(collector, topic: str, payload: bytes):
    return collector.wait_for(lambda m: any(t == topic and p == payload for t, p, _ in m), timeout=20)


def _configs(msgs: list, discovery_prefix: str) -> dict[str, dict | None]:
    """Latest discovery config per topic (None: deleted)."""
    out: dict[str, dict | None] = {}
    for t, p, _ in msgs:
        if t.startswith(discovery_prefix + "/") and t.endswith("/config"):
            out[t] = json.loads(p) if p else None
    return out


def test_discovery_is_announced_resent_on_birth_and_follows_the_config(tmp_path, broker, prefix, collector,
                                                                      tiny_clip_dir, start_daemon):
    ha = f"{prefix}ha"
    node = f"streamclf_{prefix}"
    video = _video(tmp_path / "v.mp4")
    cam = {"source": str(video), "fps": 2, "realtime": True, "loop": True}
    cfg = base_config(tiny_clip_dir, broker, prefix, {"drive": cam, "porch": cam}, labels=LABELS,
                      homeassistant={"discovery_prefix": ha})
    expected = {
        f"{ha}/{component}/{node}/{object_id}/config"
        for camera in ("drive", "porch")
        for component, object_id in [
            ("binary_sensor", f"{camera}_label_red_thing"), ("binary_sensor", f"{camera}_label_blue_thing"),
            ("number", f"{camera}_threshold_red_thing"), ("number", f"{camera}_threshold_blue_thing"),
            ("sensor", f"{camera}_top_label"), ("binary_sensor", f"{camera}_stream"), ("switch", f"{camera}_enabled"),
            ("sensor", f"{camera}_score_red_thing"), ("sensor", f"{camera}_score_blue_thing"),
            ("image", f"{camera}_snapshot_red_thing"), ("image", f"{camera}_snapshot_blue_thing"),
            ("event", f"{camera}_event"),
        ]
    } | {
        f"{ha}/{component}/{node}/hub_{suffix}/config"
        for component, suffix in [("binary_sensor", "online"), ("sensor", "classified_fps"),
                                  ("sensor", "frames_dropped"), ("sensor", "mqtt_queued"), ("sensor", "mqtt_dropped")]
    }
    with MqttCollector(broker.host, broker.port, f"{ha}/#") as ha_collector:
        daemon = start_daemon(cfg)
        ha_collector.wait_for(lambda m: set(_configs(m, ha)) >= expected, timeout=60)
        configs = _configs(ha_collector.all, ha)
        assert set(configs) == expected
        red = configs[f"{ha}/binary_sensor/{node}/drive_label_red_thing/config"]
        assert red["unique_id"] == f"{node}_drive_label_red_thing"
        assert red["state_topic"] == f"{prefix}/drive/red_thing"
        assert red["device"]["identifiers"] == [f"{node}_drive"] and red["device"]["name"] == "Drive"
        assert red["device"]["via_device"] == node
        assert red["availability"] == [
            {"topic": f"{prefix}/available", "payload_available": "online", "payload_not_available": "offline"},
            {"topic": f"{prefix}/drive/status", "payload_available": "online", "payload_not_available": "offline"},
            {"topic": f"{prefix}/drive/enabled/state", "payload_available": "ON", "payload_not_available": "OFF"},
        ]
        assert red["availability_mode"] == "all"
        hub = configs[f"{ha}/binary_sensor/{node}/hub_online/config"]["device"]
        assert hub["identifiers"] == [node] and hub["hw_version"] == "cpu, fp32"
        if have_home_assistant():  # the payloads a real daemon sent pass Home Assistant's own schemas
            report = home_assistant_check({t: json.dumps(c) for t, c in configs.items()})
            assert (report["errors"], report["validated"]) == ({}, len(configs))
            assert {k for keys in report["dropped"].values() for k in keys} <= NEWER_THAN_CHECKED
        # Every availability topic the label entities need is there and says available.
        for topic, available in [(f"{prefix}/drive/status", b"online"), (f"{prefix}/drive/enabled/state", b"ON")]:
            collector.wait_for(lambda m, topic=topic, available=available:
                               read_retained(broker.host, broker.port, topic) == available, timeout=30)
        # Label attributes come with the events, scores with the classifications (rate-limited).
        collector.wait_for(lambda m: any(t == f"{prefix}/drive/red_thing/score" for t, _, _ in m), timeout=30)
        collector.wait_for(lambda m: any(t == f"{prefix}/drive/red_thing/attributes" for t, _, _ in m), timeout=30)
        attributes = collector.json_messages(f"{prefix}/drive/red_thing/attributes")
        assert attributes[-1]["event_id"] and 0 <= attributes[-1]["score"] <= 1
        top = configs[f"{ha}/sensor/{node}/porch_top_label/config"]
        assert top["state_topic"] == f"{prefix}/porch/top_label"
        # The states they point at are there: the stream is online, the top label is one of the camera's labels.
        collector.wait_for(lambda m: any(t == f"{prefix}/porch/top_label" for t, _, _ in m), timeout=30)
        assert read_retained(broker.host, broker.port, f"{prefix}/porch/status") == b"online"
        top_label = read_retained(broker.host, broker.port, f"{prefix}/porch/top_label")
        assert top_label in (b"red_thing", b"blue_thing", b"nothing")
        retained = read_retained(broker.host, broker.port, f"{ha}/switch/{node}/drive_enabled/config")
        assert json.loads(retained)["command_topic"] == f"{prefix}/drive/enabled/set"

        # Home Assistant restarts: its birth message brings every config again.
        ha_collector.clear()
        _send(broker, f"{ha}/status", "online")
        ha_collector.wait_for(lambda m: set(_configs(m, ha)) >= expected, timeout=20)

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(20) == 0, daemon.output

        # Camera porch and label blue_thing leave the config, label green_thing joins: their entities follow.
        ha_collector.clear()
        labels = {**LABELS, "green_thing": {"prompts": ["a green object"]}}
        del labels["blue_thing"]
        cfg2 = base_config(tiny_clip_dir, broker, prefix, {"drive": cam}, labels=labels,
                           homeassistant={"discovery_prefix": ha})
        daemon = start_daemon(cfg2)
        removed = {t for t in expected if "/porch_" in t or "blue_thing" in t}
        added = {f"{ha}/binary_sensor/{node}/drive_label_green_thing/config",
                 f"{ha}/number/{node}/drive_threshold_green_thing/config",
                 f"{ha}/sensor/{node}/drive_score_green_thing/config",
                 f"{ha}/image/{node}/drive_snapshot_green_thing/config"}
        ha_collector.wait_for(
            lambda m: all(_configs(m, ha).get(t, 0) is None for t in removed)
            and all(_configs(m, ha).get(t) for t in added),
            timeout=60,
        )
        for t in removed:
            assert read_retained(broker.host, broker.port, t) is None, t
        for t in (expected - removed) | added:
            assert read_retained(broker.host, broker.port, t), t
        assert daemon.proc.poll() is None, daemon.output

        # Switching discovery off removes every entity this daemon announced.
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(20) == 0, daemon.output
        ha_collector.clear()
        cfg3 = base_config(tiny_clip_dir, broker, prefix, {"drive": cam}, labels=labels,
                           homeassistant={"discovery_prefix": ha, "enabled": False})
        daemon = start_daemon(cfg3)
        left = (expected - removed) | added
        ha_collector.wait_for(lambda m: all(_configs(m, ha).get(t, 0) is None for t in left), timeout=60)


def test_threshold_and_enable_at_runtime_and_bad_commands_change_nothing(tmp_path, broker, prefix, collector,
                                                                         tiny_clip_dir, start_daemon):
    video = _video(tmp_path / "v.mp4")
    cameras = {
        "a": {"source": str(video), "fps": 5, "realtime": True, "loop": True},
        "b": {"source": str(video), "fps": 5, "realtime": True, "loop": True,
              "labels": ["red_thing", "blue_thing", "nothing"]},
    }
    daemon = start_daemon(base_config(tiny_clip_dir, broker, prefix, cameras, labels=LABELS))
    det_a, det_b = f"{prefix}/a/detection", f"{prefix}/b/detection"
    collector.wait_for(lambda m: len(collector.messages(det_a)) >= 4 and len(collector.messages(det_b)) >= 4,
                       timeout=60)
    assert read_retained(broker.host, broker.port, f"{prefix}/a/enabled/state") == b"ON"
    assert read_retained(broker.host, broker.port, f"{prefix}/a/red_thing/threshold/state") == b"0.0"
    labels_state = read_retained(broker.host, broker.port, f"{prefix}/labels/state")
    assert set(json.loads(labels_state)) == set(LABELS)

    def after(topic: str, payload: bytes, camera_topic: str, n: int, other_topic: str | None = None) -> list[dict]:
        """Detections on ``camera_topic`` after the echo, once ``other_topic`` (or it) has ``n`` after it."""
        wait_topic = other_topic or camera_topic
        msgs = collector.wait_for(
            lambda m: len(_detections_after(m, _index_of_last(m, topic, payload), wait_topic)) >= n
            if any(t == topic and p == payload for t, p, _ in m) else False,
            timeout=30,
        )
        return _detections_after(msgs, _index_of_last(msgs, topic, payload), camera_topic)

    # Threshold 1.0 on camera a: red_thing (score < 1) stops there, and only there.
    _command(broker, collector, f"{prefix}/a/red_thing/threshold/set", "1")
    dets = after(f"{prefix}/a/red_thing/threshold/state", b"1.0", det_a, 6)
    assert {d["label"] for d in dets} == {"blue_thing"}
    assert "red_thing" in {d["label"] for d in after(f"{prefix}/a/red_thing/threshold/state", b"1.0", det_b, 4)}
    _command(broker, collector, f"{prefix}/a/red_thing/threshold/set", "0")
    detected = after(f"{prefix}/a/red_thing/threshold/state", b"0.0", det_a, 6)
    assert {d["label"] for d in detected} == {"red_thing", "blue_thing"}

    # Camera b switched off: nothing from it while a goes on; switched on: back.
    _command(broker, collector, f"{prefix}/b/enabled/set", "OFF")
    assert after(f"{prefix}/b/enabled/state", b"OFF", det_b, 10, other_topic=det_a) == []
    assert read_retained(broker.host, broker.port, f"{prefix}/b/enabled/state") == b"OFF"
    _command(broker, collector, f"{prefix}/b/enabled/set", "ON")
    assert len(after(f"{prefix}/b/enabled/state", b"ON", det_b, 4)) >= 4

    # Bad commands: each answered on <prefix>/error, none changes anything.
    bad = [
        (f"{prefix}/labels/set", "{not json"),
        (f"{prefix}/labels/set", json.dumps({"red_thing": {"prompt": ["typo"]}, "blue_thing": {}})),
        (f"{prefix}/labels/set", json.dumps({"red_thing": {}, "nothing": {"background": True}})),  # b names blue_thing
        (f"{prefix}/a/red_thing/threshold/set", "1.5"),
        (f"{prefix}/ghost/red_thing/threshold/set", "0.5"),
        (f"{prefix}/ghost/enabled/set", "OFF"),
        (f"{prefix}/a/enabled/set", "sometimes"),
    ]
    collector.clear()
    for topic, payload in bad:
        _send(broker, topic, payload)
    msgs = collector.wait_for(lambda m: len(collector.json_messages(f"{prefix}/error")) >= len(bad), timeout=20)
    errors = collector.json_messages(f"{prefix}/error")
    assert [e["topic"] for e in errors] == [t for t, _ in bad]
    assert [e["payload"] for e in errors] == [p for _, p in bad]
    assert "not valid JSON" in errors[0]["error"]
    assert "labels.red_thing.prompt: unknown key" in errors[1]["error"]
    assert "cameras.b.labels: unknown label(s) ['blue_thing']" in errors[2]["error"]
    assert "from 0 to 1" in errors[3]["error"]
    assert "unknown camera 'ghost'" in errors[4]["error"] and "unknown camera 'ghost'" in errors[5]["error"]
    assert "expected ON or OFF" in errors[6]["error"]
    assert not [t for t, _, _ in msgs if t.endswith("/state")]  # no state changed
    assert read_retained(broker.host, broker.port, f"{prefix}/labels/state") == labels_state
    assert read_retained(broker.host, broker.port, f"{prefix}/a/red_thing/threshold/state") == b"0.0"
    assert read_retained(broker.host, broker.port, f"{prefix}/a/enabled/state") == b"ON"
    collector.clear()
    collector.wait_for(lambda m: len(collector.messages(det_a)) >= 4 and len(collector.messages(det_b)) >= 4,
                       timeout=30)
    for d in collector.json_messages(f"{prefix}/+/detection"):
        assert set(d["scores"]) == set(LABELS)
    assert daemon.proc.poll() is None, daemon.output
    assert "Traceback" not in daemon.output


def test_live_label_change_switches_between_batches_without_dropping_frames(tmp_path, broker, prefix, collector,
                                                                            tiny_clip_dir, start_daemon):
    ha = f"{prefix}ha"
    node = f"streamclf_{prefix}"
    video = _video(tmp_path / "v.mp4", frames=30)
    # Not realtime: frames are read as fast as the model takes them and none is dropped; looping keeps it going.
    cameras = {"c": {"source": str(video), "fps": 10, "realtime": False, "loop": True}}
    cfg = base_config(tiny_clip_dir, broker, prefix, cameras, labels=LABELS,
                      mqtt={"max_queued_messages": 1_000_000}, homeassistant={"discovery_prefix": ha})
    new_labels = {
        "cat": {"prompts": ["a photo of a cat"], "threshold": 0.0},
        "dog": {"threshold": 0.0},
        "nothing": {"prompts": ["an empty scene"], "background": True},
    }
    with MqttCollector(broker.host, broker.port, f"{ha}/#") as ha_collector:
        daemon = start_daemon(cfg)
        det = f"{prefix}/c/detection"
        collector.wait_for(lambda m: len(collector.messages(det)) >= 20, timeout=60)
        _send(broker, f"{prefix}/labels/set", json.dumps(new_labels))

        def first_new(m) -> int | None:
            idx = [json.loads(p)["frame_index"] for t, p, _ in m if t == det and b'"cat"' in p]
            return min(idx) if idx else None

        msgs = collector.wait_for(lambda m: first_new(m) is not None, timeout=30)
        switch = first_new(msgs)
        last = switch + 40
        collector.wait_for(lambda m: any(t == det and json.loads(p)["frame_index"] >= last for t, p, _ in m),
                           timeout=30)
        daemon.signal(signal.SIGKILL)
        by_frame: dict[int, set] = {}
        for d in collector.json_messages(det):
            keys = frozenset(d["scores"])
            by_frame.setdefault(d["frame_index"], set()).add(keys)
        # Every frame up to well after the switch was classified and published: none dropped.
        assert set(range(last + 1)) <= set(by_frame)
        # Each frame was scored entirely with one label set: the old one before the switch, the new one from it on.
        old, new = frozenset(LABELS), frozenset(new_labels)
        for i in range(last + 1):
            assert by_frame[i] == ({old} if i < switch else {new}), i
        assert {d["label"] for d in collector.json_messages(det) if d["frame_index"] >= switch} == {"cat", "dog"}
        assert set(json.loads(read_retained(broker.host, broker.port, f"{prefix}/labels/state"))) == set(new_labels)
        assert read_retained(broker.host, broker.port, f"{prefix}/c/cat/threshold/state") == b"0.0"
        assert read_retained(broker.host, broker.port, f"{prefix}/c/red_thing/threshold/state") is None
        # Home Assistant follows: entities for the new labels, the old ones deleted.
        ha_collector.wait_for(
            lambda m: _configs(m, ha).get(f"{ha}/binary_sensor/{node}/c_label_cat/config")
            and _configs(m, ha).get(f"{ha}/binary_sensor/{node}/c_label_red_thing/config", 0) is None,
            timeout=20,
        )
