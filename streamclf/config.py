"""Configuration: pydantic models for the YAML file, with errors that name key and line.

Every model forbids unknown keys so a typo is an error rather than a silently ignored
setting. ``${VAR}`` in any string is replaced from the environment before validation;
an unset variable is an error naming it and its line. Loading keeps the YAML node
tree so that every validation error can be reported with the line it came from.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Model):
    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    topic_prefix: str = Field("streamclf", min_length=1, description="First level of every topic.")
    client_id: str | None = Field(None, description="MQTT client id; default streamclf-<hostname>.")
    username: str | None = Field(None, description="Broker user name.")
    password: str | None = Field(None, description="Broker password; use ${MQTT_PASSWORD}, not a literal.")
    password_credential: str | None = Field(
        None,
        description="Name of a systemd credential (LoadCredential=) holding the broker password, "
        "read from $CREDENTIALS_DIRECTORY/<name>; instead of password.",
    )
    qos: Literal[0, 1, 2] = Field(1, description="QoS of detection messages.")
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive, seconds.")
    max_queued_messages: int = Field(
        5000, ge=1, description="Messages held while the broker is away; the oldest are dropped beyond this."
    )

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        if any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must not contain '#' or '+' nor start or end with '/'")
        return v

    @field_validator("password_credential")
    @classmethod
    def _credential_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or v in (".", "..")):
            raise ValueError("must be a credential name (a file name, no '/')")
        return v

    @model_validator(mode="after")
    def _one_password(self) -> "MqttConfig":
        if self.password is not None and self.password_credential is not None:
            raise ValueError("set password or password_credential, not both")
        return self

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"streamclf-{socket.gethostname()}"

    def resolve_password(self, env: dict | None = None) -> str | None:
        """The broker password: ``password``, or the credential file ``password_credential`` names.

        Raises ValueError naming the credential and the directory when it cannot be read, so
        a unit file without the matching ``LoadCredential=`` fails with a message that says so.
        """
        if self.password_credential is None:
            return self.password
        env = os.environ if env is None else env
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError(
                f"credential {self.password_credential!r} is configured but $CREDENTIALS_DIRECTORY is not set "
                f"(add LoadCredential={self.password_credential}:/path/to/secret to the unit, or run under systemd)"
            )
        path = Path(directory) / self.password_credential
        try:
            # A trailing newline from `echo secret > file` is never part of the password.
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(
                f"credential {self.password_credential!r} cannot be read from {path}: {exc.strerror or exc} "
                f"(is LoadCredential={self.password_credential}:... in the unit?)"
            ) from None


class ModelConfig(_Model):
    name: str = Field(
        "openai/clip-vit-base-patch32",
        description="Hugging Face hub id, or a local directory saved with save_pretrained.",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto", description="Inference precision; auto picks the fastest that keeps embeddings within 0.999 cosine."
    )
    batch_size: int = Field(8, ge=1, le=1024, description="Frames per model call at most.")
    max_batch_wait_ms: float = Field(
        50, ge=0, description="Longest a frame waits for a batch to fill, ms; 1 s (or this, if longer) while only "
        "frames of files read with realtime: false wait."
    )
    threads: int | None = Field(
        None, ge=1, description="torch intra-op threads of the inference thread (the others use one); default: all cores."
    )
    opencv_threads: int = Field(
        1, ge=1, description="OpenCV worker threads (colour conversion, gating thumbnails); 1 leaves the cores to torch."
    )
    preprocess: Literal["auto", "host", "device"] = Field(
        "auto",
        description="Where frames are resized and normalised: host (CPU) or device (uint8 frames to the GPU); "
        "auto: device on CUDA, host on the CPU.",
    )
    cuda_graphs: bool = Field(
        True,
        description="On CUDA, replay the image model as CUDA graphs (one per batch size 1, 2, 4, .. batch_size), "
        "which removes the per-kernel launch cost that bounds small batches; ignored on the CPU.",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v


# Home Assistant's binary_sensor device classes (homeassistant.components.binary_sensor.BinarySensorDeviceClass);
# tests/test_homeassistant_schemas.py checks this list against the installed Home Assistant.
BinarySensorDeviceClass = Literal[
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas", "heat",
    "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
    "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
]


class LabelConfig(_Model):
    prompts: list[str] | None = Field(
        None, description="Text prompts; default: 'a photo of a <name>' from the label name."
    )
    threshold: float = Field(0.5, ge=0, le=1, description="Score (0..1) at or above which the label is published.")
    background: bool = Field(False, description="Takes part in scoring but is never published.")
    min_consecutive: int = Field(
        2, ge=1, description="Classified frames in a row at or above threshold before the label turns ON."
    )
    off_delay_s: float = Field(5.0, ge=0, description="Seconds below threshold before an ON label turns OFF.")
    cooldown_s: float = Field(0.0, ge=0, description="Least seconds between two starts of the label (per camera and zone).")
    device_class: BinarySensorDeviceClass | None = Field(
        None, description="Home Assistant binary_sensor device class of the label's entities (occupancy, motion, ...)."
    )
    icon: str | None = Field(None, description="Home Assistant icon of the label's entities, mdi:<name>.")

    @field_validator("icon")
    @classmethod
    def _icon(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"mdi:[a-z0-9]+(-[a-z0-9]+)*", v):
            raise ValueError("must be a Material Design icon name like mdi:account")
        return v

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not p.strip() for p in v)):
            raise ValueError("must be a non-empty list of non-empty strings")
        return v

    def prompts_for(self, name: str) -> list[str]:
        """The prompts to embed for this label; names like 'delivery_van' read as 'delivery van'."""
        return list(self.prompts) if self.prompts else [f"a photo of a {name.replace('_', ' ')}"]


class LabelOverride(_Model):
    """Per-camera alerting rules for one label; an unset field keeps the label's own value."""

    threshold: float | None = Field(None, ge=0, le=1, description="Score (0..1) at or above which the label is ON.")
    min_consecutive: int | None = Field(None, ge=1, description="Frames in a row at or above threshold to turn ON.")
    off_delay_s: float | None = Field(None, ge=0, description="Seconds below threshold before turning OFF.")
    cooldown_s: float | None = Field(None, ge=0, description="Least seconds between two starts.")


class ZoneConfig(_Model):
    """A named rectangle of a camera's frame, cropped and classified as its own image."""

    box: tuple[float, float, float, float] = Field(
        description="[x_min, y_min, x_max, y_max]: fractions of the frame (0..1) or pixels, see coordinates."
    )
    coordinates: Literal["normalized", "pixels"] = Field(
        "normalized", description="normalized: box is in 0..1 of the frame's width/height; pixels: in pixels."
    )

    @model_validator(mode="after")
    def _box(self) -> "ZoneConfig":
        x0, y0, x1, y1 = self.box
        if min(self.box) < 0:
            raise ValueError("box values must not be negative")
        if not (x0 < x1 and y0 < y1):
            raise ValueError("box must be [x_min, y_min, x_max, y_max] with x_min < x_max and y_min < y_max")
        if self.coordinates == "normalized" and max(self.box) > 1:
            raise ValueError("normalized box values must be within 0..1 (for pixel values set coordinates: pixels)")
        return self


class CameraConfig(_Model):
    source: Union[int, str] = Field(description="Video file path, rtsp:// or http:// URL, or webcam index.")
    name: str | None = Field(
        None, min_length=1, description="Friendly name (Home Assistant device name); default: the key made readable, "
        "front_gate -> Front gate."
    )
    fps: float = Field(2.0, gt=0, le=120, description="Frames classified per second of video.")
    labels: list[str] | None = Field(None, description="Labels scored for this camera; default: all.")
    realtime: bool = Field(
        True, description="Files only: false classifies every sampled frame as fast as possible, dropping none."
    )
    loop: bool = Field(False, description="Files only: start again at the end instead of ending.")
    enabled: bool = Field(True, description="A disabled camera is not opened.")
    label_overrides: dict[str, LabelOverride] = Field(
        default_factory=dict, description="Label name -> alerting rules for this camera that replace the label's own."
    )
    zones: dict[str, ZoneConfig] = Field(
        default_factory=dict, description="Zone name -> region classified on its own; default: the whole frame."
    )
    # Reliability (see README "Reliability"): every camera fails and recovers on its own.
    open_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Longest an open (connect, RTSP handshake, first packets) may take, seconds."
    )
    read_timeout_s: float = Field(10.0, gt=0, le=600, description="Longest one read of a stream may block, seconds.")
    rtsp_transport: Literal["tcp", "udp"] = Field(
        "tcp", description="RTSP media transport; TCP survives lossy links and NAT better."
    )
    reconnect_backoff_initial_s: float = Field(
        1.0, gt=0, description="Wait before the first reconnect, seconds; doubles after each failed attempt."
    )
    reconnect_backoff_max_s: float = Field(30.0, gt=0, description="Cap on the reconnect wait, seconds.")
    stall_timeout_s: float = Field(
        20.0, gt=0, le=3600,
        description="Live sources: reopen a stream that delivers no frame for this long, seconds. "
        "Raise it for cameras that are legitimately quiet.",
    )
    max_frame_age_s: float | None = Field(
        10.0, gt=0,
        description="A frame older than this (seconds since capture) when its batch runs is dropped as stale; "
        "null keeps every frame. Files with realtime: false are never dropped as stale.",
    )
    decode_threads: int = Field(
        1, ge=0, le=64, description="FFmpeg decoder threads for this camera; 0: FFmpeg's choice (all cores)."
    )
    decode_priority: Literal["auto", "normal", "idle"] = Field(
        "auto",
        description="CPU priority of this camera's decoding. idle: Linux SCHED_IDLE, it decodes only on CPU "
        "time that nothing else in the machine wants, so it never delays the model or a live camera; "
        "auto: idle for files read with realtime: false (batch jobs), normal for everything else.",
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: int | str) -> int | str:
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> "CameraConfig":
        if self.reconnect_backoff_max_s < self.reconnect_backoff_initial_s:
            raise ValueError(
                f"reconnect_backoff_max_s ({self.reconnect_backoff_max_s}) must be at least "
                f"reconnect_backoff_initial_s ({self.reconnect_backoff_initial_s})"
            )
        return self

    @property
    def idle_decoding(self) -> bool:
        """Whether this camera decodes at idle priority (see ``decode_priority``)."""
        if self.decode_priority == "auto":
            return self.is_file and not self.realtime
        return self.decode_priority == "idle"

    @property
    def effective_max_frame_age_s(self) -> float | None:
        """The stale limit that applies: none for files read as fast as possible, which drop nothing."""
        return None if self.is_file and not self.realtime else self.max_frame_age_s

    @property
    def is_file(self) -> bool:
        return isinstance(self.source, str) and "://" not in self.source


class SnapshotConfig(_Model):
    """JPEG snapshots of the zone (or whole frame) that started an event."""

    enabled: bool = Field(True, description="Take snapshots at all.")
    on_update: bool = Field(False, description="Also on every event update, not only on start.")
    mqtt: bool = Field(True, description="Publish retained on <prefix>/<camera>[/<zone>]/<label>/snapshot.")
    directory: str | None = Field(None, description="Also write files here (relative to the config file).")
    max_files: int = Field(100, ge=1, description="Files kept in directory; the oldest .jpg beyond it are deleted.")
    width: int | None = Field(None, ge=8, le=8192, description="Pixels; unset: from height keeping aspect, or as is.")
    height: int | None = Field(None, ge=8, le=8192, description="Pixels; unset: from width keeping aspect, or as is.")
    quality: int = Field(80, ge=1, le=100, description="JPEG quality, 1..100.")


class EventsConfig(_Model):
    """What the decisions publish: ON/OFF state, start/update/end events, per-frame detections."""

    detections: bool = Field(True, description="Publish every above-threshold frame on <prefix>/<camera>/detection.")
    event_update_interval_s: float = Field(
        5.0, ge=0, description="Least seconds between two update events of one active label; 0: every frame."
    )
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)


# Topic levels the daemon itself uses under <prefix>/<camera>/: a label or zone of that name would collide.
RESERVED_TOPIC_NAMES = frozenset(
    {"status", "detection", "event", "snapshot", "enabled", "threshold", "state", "set", "top_label", "error", "stats"}
)

class ChangeGateConfig(_Model):
    enabled: bool = Field(False, description="Skip the model for frames that barely differ from the last classified one.")
    grid: int = Field(32, ge=4, le=256, description="Frames are compared as grid x grid colour thumbnails (cells).")
    cell_delta: int = Field(
        12, ge=1, le=255, description="A cell has changed when a channel differs by more than this (0..255 levels)."
    )
    threshold: float = Field(
        0.01, ge=0, le=1, description="Fraction of cells (0..1) that must change for a frame to be classified again."
    )
    max_reuse_s: float = Field(
        10.0, gt=0, description="A frame this many seconds (frame time) after the last classified one is always classified."
    )


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


class HomeAssistantConfig(_Model):
    enabled: bool = Field(
        True, description="Announce every camera to Home Assistant by MQTT discovery; false removes what was announced."
    )
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's MQTT discovery prefix.")
    status_topic: str | None = Field(
        None, description="Home Assistant's birth topic; 'online' there re-sends discovery. Default <discovery_prefix>/status."
    )

    @field_validator("discovery_prefix", "status_topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "#+") or v.startswith("/") or v.endswith("/")):
            raise ValueError("must be a non-empty topic without '#' or '+' that neither starts nor ends with '/'")
        return v

    @property
    def effective_status_topic(self) -> str:
        return self.status_topic or f"{self.discovery_prefix}/status"


class MetricsConfig(_Model):
    enabled: bool = Field(False, description="Serve Prometheus metrics and /healthz over HTTP.")
    host: str = Field("127.0.0.1", description="Address the metrics server listens on; 0.0.0.0 for every interface.")
    port: int = Field(9108, ge=1, le=65535, description="TCP port of the metrics server.")


class ServiceConfig(_Model):
    stall_timeout_s: float = Field(
        30, gt=0,
        description="Seconds without progress (a model call running, or frames waiting and none classified) "
        "after which the pipeline counts as hung: watchdog pings stop and /healthz says 503.",
    )
    stats_interval_s: float = Field(
        60, ge=0, description="Seconds between <prefix>/stats messages; 0 turns them off."
    )


class Config(_Model):
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    change_gate: ChangeGateConfig = Field(default_factory=ChangeGateConfig)
    labels: dict[str, LabelConfig] = Field(description="Label name -> how to recognise it.")
    cameras: dict[str, CameraConfig] = Field(description="Camera name -> source and sampling.")
    events: EventsConfig = Field(default_factory=EventsConfig)

    @field_validator("labels", "cameras")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("must name at least one entry")
        for name in v:
            if not _NAME.match(str(name)):
                raise ValueError(f"name {name!r} must be letters, digits, '_' or '-' (it becomes an MQTT topic level)")
        return v

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> "Config":
        # parse_config defers these so it can report each with its own key path and line.
        if not (info.context or {}).get("defer_cross_checks"):
            problems = self.cross_check_problems()
            if problems:
                raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        return self

    def cross_check_problems(self) -> list[tuple[tuple, str]]:
        """Rules that span sections, as (key path, message) pairs."""
        problems = []
        for cam_name, cam in self.cameras.items():
            names = self.labels_for(cam_name)
            unknown = [n for n in names if n not in self.labels]
            if unknown:
                problems.append(
                    (("cameras", cam_name, "labels"), f"unknown label(s) {unknown}; known labels: {sorted(self.labels)}")
                )
            elif len(names) < 2:
                problems.append(
                    (("cameras", cam_name, "labels"), "needs at least two labels: scores are a softmax over them")
                )
            for label in cam.label_overrides:
                if label not in names:
                    problems.append(
                        (("cameras", cam_name, "label_overrides", label), f"not a label of this camera: {names}")
                    )
            for zone in cam.zones:
                if not _NAME.match(str(zone)):
                    problems.append((("cameras", cam_name, "zones", zone), "name must be letters, digits, '_' or '-'"))
                elif zone in self.labels or zone in RESERVED_TOPIC_NAMES:
                    problems.append(
                        (("cameras", cam_name, "zones", zone), "name collides with a label or topic name in MQTT topics")
                    )
        for label in self.labels:
            if label in RESERVED_TOPIC_NAMES:
                problems.append(
                    (("labels", label), f"name is used by streamclf's own topics; avoid {sorted(RESERVED_TOPIC_NAMES)}")
                )
        return problems

    def labels_for(self, camera: str) -> list[str]:
        """Label names scored for ``camera``, in config order."""
        cam = self.cameras[camera]
        return list(cam.labels) if cam.labels is not None else list(self.labels)


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file: where (key path, line) and what."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<top level>'}: {self.message}"


class ConfigError(Exception):
    """The config could not be loaded; ``problems`` lists every error found."""

    def __init__(self, source: str, problems: list[ConfigProblem]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(str(p) for p in problems))


def _to_python(node: yaml.Node, path: tuple, lines: dict, env: dict, problems: list) -> Any:
    """Convert a composed YAML node into Python data, recording each key path's line."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) else key_node.value
            sub = path + (key,)
            lines[sub] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, sub, lines, env, problems)
            lines[sub] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, path + (i,), lines, env, problems) for i, v in enumerate(node.value)]
    value = node.value
    if "${" in value:
        def sub_env(m: re.Match) -> str:
            name = m.group(1)
            if name not in env:
                problems.append(
                    ConfigProblem(_dotted(path), node.start_mark.line + 1, f"environment variable ${{{name}}} is not set")
                )
                return ""
            return env[name]

        return _ENV_PATTERN.sub(sub_env, value)
    # Let YAML's own resolver type plain scalars (ints, bools, null) exactly as safe_load would.
    return yaml.safe_load(yaml.serialize(node)) if node.style is None else value


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(text: str, source: str = "<config>", env: dict | None = None) -> Config:
    """Parse and validate YAML ``text``; raise ConfigError listing every problem with its line."""
    env = dict(os.environ) if env is None else env
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(source, [ConfigProblem("", mark.line + 1 if mark else None, f"not valid YAML: {exc}")])
    if root is None:
        raise ConfigError(source, [ConfigProblem("", None, "the file is empty")])
    lines: dict[tuple, int] = {}
    problems: list[ConfigProblem] = []
    data = _to_python(root, (), lines, env, problems)
    if problems:
        raise ConfigError(source, problems)
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("", 1, "the top level must be a mapping")])
    try:
        cfg = Config.model_validate(data, context={"defer_cross_checks": True})
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see the config reference in README.md)"
            elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], (dict, list)):
                msg = f"{msg} (got {err['input']!r})"
            problems.append(_problem(tuple(err["loc"]), msg, lines))
        raise ConfigError(source, problems) from None
    problems = [_problem(loc, msg, lines) for loc, msg in cfg.cross_check_problems()]
    try:
        cfg.mqtt.resolve_password(env)
    except ValueError as exc:
        problems.append(_problem(("mqtt", "password_credential"), str(exc), lines))
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _problem(loc: tuple, message: str, lines: dict[tuple, int]) -> ConfigProblem:
    """A problem at key path ``loc``, with the line of the deepest part of the path the YAML has."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return ConfigProblem(_dotted(loc), lines[loc[:n]], message)
    return ConfigProblem(_dotted(loc), None, message)


def load_config(path: str | Path, env: dict | None = None) -> Config:
    """Read and validate the config file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [ConfigProblem("", None, f"cannot read the file: {exc.strerror or exc}")])
    return parse_config(text, str(p), env)
