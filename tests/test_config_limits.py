"""Config limits: every value check-config accepts is one the daemon can run with.

Names are whole topic levels of bounded length, topics and client ids fit MQTT, hosts are
host names or addresses, every number has a finite range, sources use a scheme streamclf
reads, and the label count is bounded. Each row is one value and what must be said about it.
"""

from __future__ import annotations

import copy
import typing

import annotated_types
import pytest
import yaml
from pydantic import BaseModel

from streamclf.config import (
    MAX_LABELS,
    MAX_NAME_CHARS,
    MAX_ZONES_PER_CAMERA,
    Config,
    ConfigError,
    load_config,
    parse_config,
)

BASE = {
    "mqtt": {"host": "127.0.0.1", "topic_prefix": "home/clf"},
    "labels": {"person": {}, "car": {"prompts": ["a car"]}, "empty": {"background": True}},
    "cameras": {
        "front": {
            "source": "front.mp4",
            "label_overrides": {"person": {"threshold": 0.7}},
            "zones": {"porch": {"box": [0.0, 0.5, 0.5, 1.0]}},
        },
    },
}


def _with(path: str, value) -> dict:
    """BASE with the dotted key ``path`` set to ``value``."""
    cfg = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return cfg


def _problems(cfg: dict) -> list:
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(cfg, allow_unicode=True))
    return info.value.problems


def test_base_is_valid():
    cfg = parse_config(yaml.safe_dump(BASE))
    assert cfg.cameras["front"].zones["porch"].box == (0.0, 0.5, 0.5, 1.0)


def _renamed(section: str, old: str, new: str) -> dict:
    cfg = copy.deepcopy(BASE)
    if section == "zones":
        zones = cfg["cameras"]["front"]["zones"]
        zones[new] = zones.pop(old)
    else:
        cfg[section][new] = cfg[section].pop(old)
        if section == "labels":
            cfg["cameras"]["front"]["label_overrides"] = {}
    return cfg


LONG = "x" * (MAX_NAME_CHARS + 1)


@pytest.mark.parametrize(
    "section, name, where",
    [
        ("cameras", "front\n", "cameras"),
        ("labels", "person\n", "labels"),
        ("zones", "porch\n", "cameras.front.zones"),
        ("cameras", "front\r", "cameras"),
        ("cameras", LONG, "cameras"),
        ("labels", LONG, "labels"),
        ("zones", LONG, "cameras.front.zones"),
    ],
    ids=["camera-newline", "label-newline", "zone-newline", "camera-cr", "camera-long", "label-long", "zone-long"],
)
def test_names_are_checked_whole_and_bounded(section, name, where):
    old = {"cameras": "front", "labels": "person", "zones": "porch"}[section]
    problems = _problems(_renamed(section, old, name))
    assert any(p.path.startswith(where) and f"1 to {MAX_NAME_CHARS}" in p.message for p in problems), problems


def test_longest_names_are_accepted():
    name = "n" * MAX_NAME_CHARS
    cfg = parse_config(yaml.safe_dump(_renamed("cameras", "front", name)))
    assert name in cfg.cameras


def test_longest_topic_stays_far_under_the_mqtt_limit():
    """The bounds on prefix and names keep every topic streamclf builds under a few kilobytes."""
    from streamclf.config import MAX_TOPIC_PREFIX_BYTES

    longest = "/".join(["p" * MAX_TOPIC_PREFIX_BYTES] + ["n" * MAX_NAME_CHARS] * 3 + ["threshold", "state"])
    assert len(longest.encode()) < 2048


@pytest.mark.parametrize(
    "path, value, expected",
    [
        # MQTT strings: topic prefix, discovery topics, client id, user name.
        ("mqtt.topic_prefix", "p" * 65536, "at most"),
        ("mqtt.topic_prefix", "home\x00clf", "control character"),
        ("mqtt.topic_prefix", "home\nclf", "control character"),
        ("mqtt.topic_prefix", "home/+/clf", "'#' or '+'"),
        ("mqtt.topic_prefix", "home/#", "'#' or '+'"),
        ("mqtt.topic_prefix", "$SYS/clf", "'$'"),
        ("mqtt.client_id", "c" * 65536, "at most"),
        ("mqtt.client_id", "clf\x00", "control character"),
        ("mqtt.username", "u\x00", "control character"),
        ("mqtt.username", "u" * 65536, "at most"),
        ("mqtt.password", "p" * 65536, "at most"),
        ("homeassistant.discovery_prefix", "ha\x00", "control character"),
        ("homeassistant.discovery_prefix", "h" * 65536, "at most"),
        ("homeassistant.status_topic", "ha/\x7fstatus", "control character"),
        # Hosts.
        ("mqtt.host", "", "host name or IP address"),
        ("mqtt.host", "not a host", "host name or IP address"),
        ("mqtt.host", "broker:1883", "host name or IP address"),
        ("mqtt.host", "mqtt://broker", "host name or IP address"),
        ("mqtt.host", "-broker", "host name or IP address"),
        ("mqtt.host", "1.2.3.256", "host name or IP address"),
        ("mqtt.host", "b" * 64 + ".local", "host name or IP address"),
        ("metrics.host", "not a host", "host name or IP address"),
        ("metrics.host", "", "host name or IP address"),
        # Numbers: finite and within a range the daemon can run with.
        ("model.max_batch_wait_ms", float("inf"), "finite"),
        ("model.max_batch_wait_ms", float("nan"), "finite"),
        ("model.max_batch_wait_ms", 1e9, "less than or equal to"),
        ("labels.person.off_delay_s", float("inf"), "finite"),
        ("labels.person.off_delay_s", 1e9, "less than or equal to"),
        ("labels.person.cooldown_s", float("inf"), "finite"),
        ("labels.person.threshold", float("nan"), "finite"),
        ("labels.person.min_consecutive", 10**9, "less than or equal to"),
        ("cameras.front.label_overrides.person.off_delay_s", float("inf"), "finite"),
        ("cameras.front.label_overrides.person.cooldown_s", 1e9, "less than or equal to"),
        ("cameras.front.label_overrides.person.threshold", float("nan"), "finite"),
        ("cameras.front.label_overrides.person.min_consecutive", 10**9, "less than or equal to"),
        ("events.event_update_interval_s", float("inf"), "finite"),
        ("events.event_update_interval_s", 1e9, "less than or equal to"),
        ("events.snapshots.max_files", 10**12, "less than or equal to"),
        ("service.stall_timeout_s", float("inf"), "finite"),
        ("service.stall_timeout_s", 1e9, "less than or equal to"),
        ("service.stats_interval_s", float("inf"), "finite"),
        ("cameras.front.stall_timeout_s", float("inf"), "finite"),
        ("cameras.front.max_frame_age_s", float("inf"), "finite"),
        ("cameras.front.max_frame_age_s", 1e9, "less than or equal to"),
        ("cameras.front.reconnect_backoff_max_s", float("inf"), "finite"),
        ("cameras.front.reconnect_backoff_max_s", 1e9, "less than or equal to"),
        ("cameras.front.reconnect_backoff_initial_s", 1e9, "less than or equal to"),
        ("cameras.front.fps", float("nan"), "finite"),
        ("cameras.front.open_timeout_s", float("inf"), "finite"),
        ("cameras.front.zones.porch.box", [0, 0, float("inf"), 1], "finite"),
        ("change_gate.max_reuse_s", float("inf"), "finite"),
        ("change_gate.max_reuse_s", 1e9, "less than or equal to"),
        ("change_gate.threshold", float("nan"), "finite"),
        ("mqtt.keepalive_s", 10**9, "less than or equal to"),
        ("mqtt.max_queued_messages", 10**12, "less than or equal to"),
        ("model.threads", 10**6, "less than or equal to"),
        ("model.opencv_threads", 10**6, "less than or equal to"),
        # Sources: a scheme FFmpeg reads here, a host, a valid port.
        ("cameras.front.source", "ftp://nas/driveway.mp4", "ftp:// sources are not supported"),
        ("cameras.front.source", "file:///videos/driveway.mp4", "plain path"),
        ("cameras.front.source", "udp://239.0.0.1:1234", "udp:// sources are not supported"),
        ("cameras.front.source", "rtsp:///stream", "no host"),
        ("cameras.front.source", "rtsp://cam:99999/stream", "port"),
        ("cameras.front.source", "videos/a\x00.mp4", "control character"),
        ("cameras.front.source", -1, "webcam index"),
        ("cameras.front.source", 100, "webcam index"),
        ("cameras.front.source", True, "webcam index"),
        ("events.snapshots.directory", "snaps\x00", "control character"),
        ("model.name", "openai/clip\x00", "control character"),
    ],
)
def test_values_the_daemon_cannot_run_with_are_rejected(path, value, expected):
    problems = _problems(_with(path, value))
    matching = [p for p in problems if p.path.startswith(path.rsplit(".", 1)[0])]
    assert any(expected in p.message for p in matching), problems
    assert all(p.line for p in matching), problems


@pytest.mark.parametrize(
    "path, value",
    [
        ("mqtt.host", "broker.local"),
        ("mqtt.host", "mosquitto"),
        ("mqtt.host", "mqtt_broker"),  # a Docker Compose service name
        ("mqtt.host", "::1"),
        ("mqtt.host", "192.168.1.10"),
        ("mqtt.host", "fe80::1%eth0"),
        ("metrics.host", "0.0.0.0"),
        ("metrics.host", "::"),
        ("mqtt.topic_prefix", "home/cameras/clf"),
        ("mqtt.topic_prefix", "maison/caméras"),
        ("mqtt.client_id", "streamclf-garage"),
        ("mqtt.username", "u" * 1000),
        ("cameras.front.source", "rtsps://cam.local:322/stream"),  # TLS: OpenCV's FFmpeg reads it
        ("cameras.front.source", "https://cam.local/video.mjpg"),
        ("cameras.front.source", "rtsp://admin:Sec@ret@cam.local:554/stream"),
        ("cameras.front.source", "http://cam.local/snapshot.cgi?user=admin&pwd=x"),
        ("cameras.front.source", 0),
        ("cameras.front.source", 99),
        ("cameras.front.max_frame_age_s", None),
        ("model.max_batch_wait_ms", 0),
        ("events.event_update_interval_s", 0),
        ("cameras.front.zones.porch", {"box": [0, 0, 7680, 4320], "coordinates": "pixels"}),
    ],
)
def test_sane_values_are_accepted(path, value):
    parse_config(yaml.safe_dump(_with(path, value), allow_unicode=True))


def _numeric_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = typing.get_args(annotation)
        is_dict = typing.get_origin(annotation) is dict
        models = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        for sub in models:
            out += _numeric_fields(sub, f"{prefix}{name}.*." if is_dict else f"{prefix}{name}.")
        if annotation in (int, float) or int in args or float in args:
            out.append((f"{prefix}{name}", field))
    return out


# Numbers whose range is checked by a validator rather than by Field bounds: each has rows above.
_BOUNDED_BY_VALIDATORS = {"cameras.*.source", "cameras.*.zones.*.box"}


def test_every_number_in_the_config_has_a_finite_upper_bound():
    fields = _numeric_fields(Config)
    assert len(fields) > 30  # the walk found the nested sections
    unbounded = [
        path for path, field in fields
        if path not in _BOUNDED_BY_VALIDATORS
        and not any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in field.metadata)
    ]
    assert unbounded == []


def test_label_count_is_bounded():
    many = {f"l{i}": {} for i in range(MAX_LABELS)}
    parse_config(yaml.safe_dump({**BASE, "labels": many, "cameras": {"c": {"source": "c.mp4"}}}))
    too_many = {**many, "one_more": {}}
    problems = _problems({**BASE, "labels": too_many, "cameras": {"c": {"source": "c.mp4"}}})
    assert [p.path for p in problems] == ["labels"]
    assert f"at most {MAX_LABELS} labels" in problems[0].message and problems[0].line is not None


def test_a_camera_lists_each_label_once_and_has_bounded_zones():
    problems = _problems(_with("cameras.front.labels", ["person", "car", "person"]))
    assert any(p.path == "cameras.front.labels" and "more than once: ['person']" in p.message for p in problems)
    zones = {f"z{i}": {"box": [0, 0, 1, 1]} for i in range(MAX_ZONES_PER_CAMERA + 1)}
    problems = _problems(_with("cameras.front.zones", zones))
    assert any(p.path == "cameras.front.zones" and f"at most {MAX_ZONES_PER_CAMERA}" in p.message for p in problems)


def test_a_prompt_list_is_bounded():
    problems = _problems(_with("labels.person.prompts", ["a person"] * 1000))
    assert any(p.path == "labels.person.prompts" and "at most" in p.message for p in problems), problems
    problems = _problems(_with("labels.person.prompts", ["a person " * 1000]))
    assert any(p.path.startswith("labels.person.prompts") and "at most" in p.message for p in problems), problems


def test_reload_reads_names_whole_too(tmp_path):
    """SIGHUP reload goes through load_config: the same whole-name rule applies."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_renamed("cameras", "front", "front\n")))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.path.startswith("cameras") and "camera name 'front\\n'" in p.message for p in info.value.problems)
