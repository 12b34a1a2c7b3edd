"""Every discovery payload streamclf sends, validated by Home Assistant's own MQTT platform schemas.

Home Assistant runs in its own venv, .venv-ha (scripts/ha_venv.sh; scripts/test.sh makes it): the
payloads and sample messages go to scripts/ha_check_discovery.py there as JSON. Its value templates
are rendered by Home Assistant's template engine with real streamclf messages, so a template that
Home Assistant would reject or misread fails here, not in someone's house.
"""

from __future__ import annotations

import functools
import json
import subprocess
from typing import get_args

import pytest

from streamclf.config import BinarySensorDeviceClass, parse_config
from streamclf.decisions import Event, EventType
from streamclf.homeassistant import HomeAssistantDiscovery
from tests.conftest import REPO
from tests.test_control import FakePublisher

HA_PYTHON = REPO / ".venv-ha" / "bin" / "python"
CHECKER = REPO / "scripts" / "ha_check_discovery.py"


@functools.cache
def have_home_assistant() -> bool:
    """Whether .venv-ha has a Home Assistant whose MQTT platforms import."""
    if not HA_PYTHON.exists():
        return False
    probe = subprocess.run([str(HA_PYTHON), "-c", "import homeassistant.components.mqtt.binary_sensor"],
                           capture_output=True, timeout=120)
    return probe.returncode == 0


needs_home_assistant = pytest.mark.skipif(
    not have_home_assistant(),
    reason="needs Home Assistant in .venv-ha: run scripts/ha_venv.sh (scripts/test.sh does; it needs PyPI)",
)

CONFIG = """
mqtt: {topic_prefix: home/clf}
labels:
  person: {device_class: occupancy, icon: "mdi:account"}
  delivery_van: {prompts: ["a delivery van"], threshold: 0.7}
  empty: {background: true}
cameras:
  front_gate: {source: front.mp4, name: Front gate}
  back_yard:
    source: back.mp4
    labels: [person, empty]
    zones: {porch: {box: [0, 0, 0.5, 1]}}
"""

START = Event(EventType.START, "1700000000.000000-abc123", "front_gate", None, "person", 0.81, 0.81, 1700000000.0, None)
PORCH_END = Event(EventType.END, "1700000001.000000-def456", "back_yard", "porch", "person", 0.2, 0.9,
                  1700000001.0, 1700000030.0, reason="camera_offline")
STATS = {"classified_fps": 2.5, "mqtt": {"queued_messages": 3, "dropped_messages": 1},
         "cameras": {"front_gate": {"frames_dropped": {"stale": 4, "queue_full": 1}},
                     "back_yard": {"frames_dropped": {"superseded": 2}}}}


def home_assistant_check(payloads: dict[str, str], samples: dict | None = None) -> dict:
    """Run the checker in .venv-ha over ``payloads`` (discovery topic -> JSON text); its JSON report."""
    request = json.dumps({"payloads": payloads, "samples": samples or {}})
    done = subprocess.run([str(HA_PYTHON), str(CHECKER)], input=request, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def announced(cfg) -> dict[str, str]:
    pub = FakePublisher()
    HomeAssistantDiscovery(cfg, pub, hardware="cpu, fp32").start()
    return {t: p.decode() for t, p in pub.retained.items()}


@needs_home_assistant
def test_every_discovery_payload_passes_home_assistants_schemas():
    cfg = parse_config(CONFIG)
    payloads = announced(cfg)
    assert {t.split("/")[1] for t in payloads} == {"binary_sensor", "sensor", "number", "switch", "image", "event"}
    event_samples = {"start": json.dumps(START.payload()), "porch_end": json.dumps(PORCH_END.payload())}
    samples = {
        "home/clf/front_gate/event": event_samples,
        "home/clf/back_yard/event": event_samples,
        "home/clf/stats": {"stats": json.dumps(STATS)},
    }
    report = home_assistant_check(payloads, samples)
    assert report["errors"] == {}
    # Keys this release ignores: only the enum sensor's options, which later releases' MQTT sensor takes
    # (and 2024.3 accepts any state of an enum sensor without them).
    assert report["dropped"] == {"homeassistant/sensor/streamclf_home_clf/front_gate_top_label/config": ["options"]}
    assert report["validated"] == len(payloads)
    assert report["binary_sensor_device_classes"] == sorted(get_args(BinarySensorDeviceClass))

    rendered = report["rendered"]
    whole = rendered["homeassistant/event/streamclf_home_clf/front_gate_event/config"]
    assert whole["porch_end"] == ""  # another camera's zone: Home Assistant skips an empty rendering
    assert json.loads(whole["start"]) == {
        "event_type": "start", "label": "person", "zone": None, "score": 0.81, "top_score": 0.81,
        "event_id": START.id, "start_time": 1700000000.0, "end_time": None, "end_reason": None}
    porch = rendered["homeassistant/event/streamclf_home_clf/back_yard_zone_porch_event/config"]
    assert porch["start"] == ""
    assert json.loads(porch["porch_end"])["event_type"] == "end"
    assert json.loads(porch["porch_end"])["end_reason"] == "camera_offline"
    stats = {t.split("/")[-2]: r["stats"] for t, r in rendered.items() if "/hub_" in t}
    assert stats == {"hub_classified_fps": "2.5", "hub_frames_dropped": "7", "hub_mqtt_queued": "3",
                     "hub_mqtt_dropped": "1"}


@needs_home_assistant
def test_variants_pass_too_without_snapshots_stats_or_zones():
    cfg = parse_config(CONFIG + "events: {snapshots: {mqtt: false}}\nservice: {stats_interval_s: 0}\n")
    payloads = announced(cfg)
    report = home_assistant_check(payloads)
    assert (report["errors"], report["validated"]) == ({}, len(payloads))
    assert {k for keys in report["dropped"].values() for k in keys} <= NEWER_THAN_CHECKED


# Keys that Home Assistant releases newer than the one in .venv-ha take and it ignores.
NEWER_THAN_CHECKED = {"options"}
