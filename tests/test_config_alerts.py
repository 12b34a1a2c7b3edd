"""Config of alerting: per-label rules, per-camera overrides, zones, events and snapshots."""

from __future__ import annotations

import pytest

from streamclf.config import ConfigError, parse_config
from tests.conftest import dedent

VALID = dedent(
    """
    labels:
      person:
        threshold: 0.6
        min_consecutive: 3
        off_delay_s: 10
        cooldown_s: 60
      nothing:
        background: true
    cameras:
      front:
        source: front.mp4
        label_overrides:
          person: {threshold: 0.7, off_delay_s: 2}
        zones:
          porch: {box: [0.0, 0.5, 0.5, 1.0]}
          gate: {box: [600, 0, 1280, 360], coordinates: pixels}
    events:
      detections: false
      event_update_interval_s: 2
      snapshots:
        directory: snaps
        max_files: 10
        height: 240
        quality: 70
    """
)


def test_valid_alerting_config():
    cfg = parse_config(VALID)
    person = cfg.labels["person"]
    assert (person.threshold, person.min_consecutive, person.off_delay_s, person.cooldown_s) == (0.6, 3, 10, 60)
    front = cfg.cameras["front"]
    assert front.label_overrides["person"].threshold == 0.7 and front.label_overrides["person"].cooldown_s is None
    assert front.zones["gate"].box == (600, 0, 1280, 360) and front.zones["gate"].coordinates == "pixels"
    assert front.zones["porch"].coordinates == "normalized"
    assert cfg.events.detections is False and cfg.events.event_update_interval_s == 2
    assert cfg.events.snapshots.height == 240 and cfg.events.snapshots.width is None


def test_defaults_keep_the_per_frame_topic_and_take_snapshots_to_mqtt():
    cfg = parse_config("labels: {a: {}, b: {}}\ncameras: {c: {source: x.mp4}}\n")
    assert cfg.events.detections is True and cfg.events.snapshots.enabled and cfg.events.snapshots.mqtt
    assert cfg.events.snapshots.directory is None
    assert cfg.cameras["c"].zones == {} and cfg.cameras["c"].label_overrides == {}
    a = cfg.labels["a"]
    assert (a.min_consecutive, a.off_delay_s, a.cooldown_s) == (2, 5.0, 0.0)


@pytest.mark.parametrize(
    "old, new, expected_path, expected_line, expected_text",
    [
        ("    min_consecutive: 3\n", "    min_consecutive: 0\n", "labels.person.min_consecutive", 4,
         "greater than or equal to 1"),
        ("    off_delay_s: 10\n", "    off_delay_s: -1\n", "labels.person.off_delay_s", 5,
         "greater than or equal to 0"),
        ("person: {threshold: 0.7", "person: {threshold: 1.7", "cameras.front.label_overrides.person.threshold", 13,
         "less than or equal to 1"),
        ("person: {threshold: 0.7, off_delay_s: 2}", "dog: {threshold: 0.7}", "cameras.front.label_overrides.dog", 13,
         "not a label of this camera"),
        ("person: {threshold: 0.7, off_delay_s: 2}", "person: {treshold: 0.7}",
         "cameras.front.label_overrides.person.treshold", 13, "unknown key"),
        ("[0.0, 0.5, 0.5, 1.0]", "[0.0, 0.5, 0.5, 1.5]", "cameras.front.zones.porch", 15, "coordinates: pixels"),
        ("[0.0, 0.5, 0.5, 1.0]", "[0.5, 0.5, 0.5, 1.0]", "cameras.front.zones.porch", 15, "x_min < x_max"),
        ("[0.0, 0.5, 0.5, 1.0]", "[0.0, 0.5, 1.0]", "cameras.front.zones.porch.box", 15, ""),
        ("coordinates: pixels", "coordinates: percent", "cameras.front.zones.gate.coordinates", 16, "'normalized'"),
        ("      porch:", "      person:", "cameras.front.zones.person", 15, "collides"),
        ("      porch:", "      event:", "cameras.front.zones.event", 15, "collides"),
        ("  person:\n    threshold", "  status:\n    threshold", "labels.status", 2, "own topics"),
        ("  detections: false\n", "  detection: false\n", "events.detection", 18, "unknown key"),
        ("    quality: 70\n", "    quality: 0\n", "events.snapshots.quality", 24, "greater than or equal to 1"),
        ("    max_files: 10\n", "    max_files: 0\n", "events.snapshots.max_files", 22, "greater than or equal to 1"),
    ],
    ids=["min-consecutive-0", "negative-off-delay", "override-out-of-range", "override-unknown-label",
         "override-typo", "zone-normalized-above-1", "zone-empty", "zone-three-numbers", "zone-units",
         "zone-named-like-label", "zone-reserved-name", "label-reserved-name", "events-typo", "snapshot-quality",
         "snapshot-max-files"],
)
def test_alerting_config_errors_name_key_and_line(old, new, expected_path, expected_line, expected_text):
    assert old in VALID
    with pytest.raises(ConfigError) as info:
        parse_config(VALID.replace(old, new))
    matching = [p for p in info.value.problems if p.path.startswith(expected_path)]
    assert matching, f"no problem at {expected_path}: {info.value.problems}"
    assert matching[0].line == expected_line
    assert expected_text in matching[0].message
