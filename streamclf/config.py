"""Configuration: pydantic models for the YAML file, with errors that name key and line.

Every model forbids unknown keys so a typo is an error rather than a silently ignored
setting. ``${VAR}`` in any string is replaced from the environment before validation;
an unset variable is an error naming it and its line. Loading keeps the YAML node
tree so that every validation error can be reported with the line it came from, and
every problem in a file is reported at once.

Every value the checks accept is one the daemon can run with: names are whole MQTT topic
levels of at most ``MAX_NAME_CHARS`` characters, topic prefixes and client ids are bounded
and free of control characters, hosts are host names or addresses, every number has a
finite range, sources use a scheme streamclf reads. A secret (``SECRET_FIELDS``, and any
value substituted from the environment) is never shown in an error; stream URLs are shown
redacted.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streamclf.logs import redact

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Limits. Camera, label and zone names are topic levels: with these bounds the longest topic
# streamclf builds stays under a few kilobytes, far below MQTT's 65,535 bytes.
MAX_NAME_CHARS = 64  # camera, label and zone names
MAX_TOPIC_PREFIX_BYTES = 256  # mqtt.topic_prefix, homeassistant.discovery_prefix and status_topic, UTF-8
MAX_CLIENT_ID_BYTES = 256
MAX_MQTT_STRING_BYTES = 65535  # MQTT's own limit: user name and password
MAX_LABELS = 256  # every label is a retained state per camera (and zone), and runs the text model
MAX_ZONES_PER_CAMERA = 32
MAX_PROMPTS_PER_LABEL = 100
MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens; far longer text is a mistake
MAX_WEBCAM_INDEX = 99  # OpenCV reads index // 100 as a choice of backend
MAX_BOX_PIXELS = 65535
SOURCE_SCHEMES = ("rtsp", "rtsps", "http", "https")  # what OpenCV's FFmpeg reads, TLS included
# Values never shown in an error message, as key paths; a value substituted from ${VAR} is never shown either.
SECRET_FIELDS = frozenset({("mqtt", "password")})

_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_-]{{0,{MAX_NAME_CHARS - 1}}}")
_NAME_RULE = (f"must be 1 to {MAX_NAME_CHARS} letters, digits, '_' or '-', not starting with '-' "
              "(it becomes an MQTT topic level)")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _brief(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters so a huge value cannot flood a message."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} name {_brief(name)} {_NAME_RULE}")


def _name_type(what: str) -> Any:
    """A str type for dict keys that are names, checked key by key, whatever their values hold."""

    def check(name: str) -> str:
        _check_name(name, what)
        return name

    return Annotated[str, AfterValidator(check)]


CameraName, LabelName, ZoneName = _name_type("camera"), _name_type("label"), _name_type("zone")


def _check_count(value: Any, limit: int, what: str) -> None:
    if isinstance(value, dict) and len(value) > limit:
        raise ValueError(f"at most {limit} {what} (it has {len(value)})")


def _check_text(value: str, max_bytes: int | None = None) -> None:
    """No control characters (NUL, newline, DEL, ...), and at most ``max_bytes`` in UTF-8."""
    if _CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters (NUL, newline, tab, DEL, ...)")
    _check_bytes(value, max_bytes)


def _check_bytes(value: str, max_bytes: int | None) -> None:
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    if max_bytes is not None and n > max_bytes:
        raise ValueError(f"must be at most {max_bytes} bytes in UTF-8 (it has {n})")


def _check_topic(value: str) -> None:
    """A topic (or prefix) streamclf publishes or subscribes under."""
    _check_text(value, MAX_TOPIC_PREFIX_BYTES)
    if any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
        raise ValueError("must not contain '#' or '+' nor start or end with '/'")
    if value.startswith("$"):
        raise ValueError("must not start with '$' (topics starting with '$' belong to the broker)")


def _check_host(value: str) -> None:
    """A host name (RFC 1123; '_' allowed, as in Docker service names) or an IPv4/IPv6 address."""
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels) or all(x.isdigit() for x in labels):
        raise ValueError("must be a host name or IP address, without scheme, port or spaces")


class _Model(BaseModel):
    # allow_inf_nan=False: an .inf or .nan from YAML is never a usable time, rate or score.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        # "person:" with nothing under it is YAML's null: read it as a section with every default.
        return {} if data is None else data


class MqttConfig(_Model):
    host: str = Field("127.0.0.1", description="Broker host name or IP address (no scheme, no port).")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    topic_prefix: str = Field(
        "streamclf", min_length=1,
        description=f"First level(s) of every topic: at most {MAX_TOPIC_PREFIX_BYTES} bytes, no '#', '+', "
        "control characters, leading '$' or leading/trailing '/'.",
    )
    client_id: str | None = Field(
        None, min_length=1,
        description=f"MQTT client id, at most {MAX_CLIENT_ID_BYTES} bytes; default streamclf-<hostname>.",
    )
    username: str | None = Field(None, description="Broker user name.")
    password: str | None = Field(
        None, repr=False,
        description="Broker password (text; quote digits in YAML); use ${MQTT_PASSWORD}, not a literal.",
    )
    password_credential: str | None = Field(
        None,
        description="Name of a systemd credential (LoadCredential=) holding the broker password, "
        "read from $CREDENTIALS_DIRECTORY/<name>; instead of password.",
    )
    qos: Literal[0, 1, 2] = Field(1, description="QoS of detection messages.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive, seconds (5..3600).")
    max_queued_messages: int = Field(
        5000, ge=1, le=1_000_000,
        description="Messages held while the broker is away; the oldest are dropped beyond this.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        _check_host(v)
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        _check_topic(v)
        return v

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str | None) -> str | None:
        if v is not None:
            _check_text(v, MAX_CLIENT_ID_BYTES)
        return v

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        if v is not None:
            _check_text(v, MAX_MQTT_STRING_BYTES)
        return v

    @field_validator("password", mode="before")
    @classmethod
    def _password_is_text(cls, v: Any) -> Any:
        # YAML reads 987654321 as a number and 0123 as 83: converting would change the password.
        if v is not None and not isinstance(v, str):
            raise ValueError("must be text: put the password in quotes in YAML, or use ${MQTT_PASSWORD}")
        return v

    @field_validator("password")
    @classmethod
    def _password(cls, v: str | None) -> str | None:
        if v is not None:
            _check_bytes(v, MAX_MQTT_STRING_BYTES)
        return v

    @field_validator("password_credential")
    @classmethod
    def _credential_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v or "/" in v or v in (".", "..") or _CONTROL_CHARACTERS.search(v) or len(v) > 255:
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
            password = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise ValueError(
                f"credential {self.password_credential!r} cannot be read from {path}: {why} "
                f"(is LoadCredential={self.password_credential}:... in the unit?)"
            ) from None
        if len(password.encode("utf-8")) > MAX_MQTT_STRING_BYTES:
            raise ValueError(f"credential {self.password_credential!r} holds more than {MAX_MQTT_STRING_BYTES} bytes, "
                             "MQTT's limit for a password")
        return password


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
        50, ge=0, le=10_000,
        description="Longest a frame waits for a batch to fill, ms (0..10000); 1 s (or this, if longer) while only "
        "frames of files read with realtime: false wait."
    )
    threads: int | None = Field(
        None, ge=1, le=1024,
        description="torch intra-op threads of the inference thread (the others use one); default: all cores.",
    )
    opencv_threads: int = Field(
        1, ge=1, le=256,
        description="OpenCV worker threads (colour conversion, gating thumbnails); 1 leaves the cores to torch.",
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
        if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", v):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        _check_text(v)
        if not v.strip():
            raise ValueError("must not be empty")
        return v


# Home Assistant's binary_sensor device classes (homeassistant.components.binary_sensor.BinarySensorDeviceClass);
# tests/test_homeassistant_schemas.py checks this list against the installed Home Assistant.
BinarySensorDeviceClass = Literal[
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas", "heat",
    "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
    "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
]


class LabelConfig(_Model):
    """How to recognise one label; a label written with an empty body takes every default."""

    prompts: list[str] | None = Field(
        None, max_length=MAX_PROMPTS_PER_LABEL,
        description=f"Text prompts, at most {MAX_PROMPTS_PER_LABEL} of at most {MAX_PROMPT_CHARS} characters; "
        "default: 'a photo of a <name>' from the label name.",
    )
    threshold: float = Field(0.5, ge=0, le=1, description="Score (0..1) at or above which the label is published.")
    background: bool = Field(False, description="Takes part in scoring but is never published.")
    min_consecutive: int = Field(
        2, ge=1, le=1000, description="Classified frames in a row at or above threshold before the label turns ON."
    )
    off_delay_s: float = Field(
        5.0, ge=0, le=86_400, description="Seconds (0..86400) below threshold before an ON label turns OFF."
    )
    cooldown_s: float = Field(
        0.0, ge=0, le=86_400,
        description="Least seconds (0..86400) between two starts of the label (per camera and zone).",
    )
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
        if v is not None and any(len(p) > MAX_PROMPT_CHARS for p in v):
            raise ValueError(f"each prompt must be at most {MAX_PROMPT_CHARS} characters")
        return v

    def prompts_for(self, name: str) -> list[str]:
        """The prompts to embed for this label; names like 'delivery_van' read as 'delivery van'."""
        return list(self.prompts) if self.prompts else [f"a photo of a {name.replace('_', ' ')}"]


class LabelOverride(_Model):
    """Per-camera alerting rules for one label; an unset field keeps the label's own value."""

    threshold: float | None = Field(None, ge=0, le=1, description="Score (0..1) at or above which the label is ON.")
    min_consecutive: int | None = Field(
        None, ge=1, le=1000, description="Frames in a row at or above threshold to turn ON."
    )
    off_delay_s: float | None = Field(
        None, ge=0, le=86_400, description="Seconds (0..86400) below threshold before OFF."
    )
    cooldown_s: float | None = Field(None, ge=0, le=86_400, description="Least seconds (0..86400) between two starts.")


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
        if max(self.box) > MAX_BOX_PIXELS:
            raise ValueError(f"pixel values must be at most {MAX_BOX_PIXELS}")
        return self


def _check_source_url(url: str) -> None:
    """A URL OpenCV's FFmpeg reads here: a known scheme, a host, a valid port. Messages never show the URL."""
    scheme = url.split("://", 1)[0]
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,31}", scheme):
        raise ValueError("is neither a file path nor a URL (the text before '://' is not a scheme)")
    scheme = scheme.lower()
    if scheme == "file":
        raise ValueError("write a local file as a plain path, without file://")
    if scheme not in SOURCE_SCHEMES:
        raise ValueError(f"{scheme}:// sources are not supported; supported are "
                         f"{', '.join(s + '://' for s in SOURCE_SCHEMES)} URLs, file paths and webcam indexes")
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("the URL has no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the URL's port is not a number from 1 to 65535 "
                         "(a '/', '?' or '#' in a user name or password must be percent-encoded)")


class CameraConfig(_Model):
    source: Union[int, str] = Field(
        description="Video file path; rtsp://, rtsps://, http:// or https:// URL (TLS certificates are checked "
        "against the system's CA store; SSL_CERT_FILE names another); or webcam index 0..99."
    )
    name: str | None = Field(
        None, min_length=1, max_length=100, description="Friendly name (Home Assistant device name); default: the key made readable, "
        "front_gate -> Front gate."
    )
    fps: float = Field(2.0, gt=0, le=120, description="Frames classified per second of video.")
    labels: list[str] | None = Field(
        None, max_length=MAX_LABELS, description="Labels scored for this camera, each once; default: all."
    )
    realtime: bool = Field(
        True, description="Files only: false classifies every sampled frame as fast as possible, dropping none."
    )
    loop: bool = Field(False, description="Files only: start again at the end instead of ending.")
    enabled: bool = Field(True, description="A disabled camera is not opened.")
    label_overrides: dict[LabelName, LabelOverride] = Field(
        default_factory=dict, description="Label name -> alerting rules for this camera that replace the label's own."
    )
    zones: dict[ZoneName, ZoneConfig] = Field(
        default_factory=dict,
        description=f"Zone name (1 to {MAX_NAME_CHARS} of A-Z a-z 0-9 _ -) -> region classified on its own, "
        f"at most {MAX_ZONES_PER_CAMERA}; default: the whole frame.",
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
        1.0, gt=0, le=3600, description="Wait before the first reconnect, seconds; doubles after each failed attempt."
    )
    reconnect_backoff_max_s: float = Field(30.0, gt=0, le=3600, description="Cap on the reconnect wait, seconds.")
    stall_timeout_s: float = Field(
        20.0, gt=0, le=3600,
        description="Live sources: reopen a stream that delivers no frame for this long, seconds. "
        "Raise it for cameras that are legitimately quiet.",
    )
    max_frame_age_s: float | None = Field(
        10.0, gt=0, le=3600,
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

    @field_validator("source", mode="before")
    @classmethod
    def _source_type(cls, v: Any) -> Any:
        if isinstance(v, bool):  # YAML's true/false would otherwise read as webcam 1/0
            raise ValueError(f"must be a file path, a URL or a webcam index (0..{MAX_WEBCAM_INDEX}), not true/false")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if not 0 <= v <= MAX_WEBCAM_INDEX:
                raise ValueError(f"a webcam index must be 0..{MAX_WEBCAM_INDEX}")
            return v
        if not v.strip():
            raise ValueError("must not be empty")
        _check_text(v)
        if "://" in v:
            _check_source_url(v)
        return v

    @field_validator("labels")
    @classmethod
    def _labels_once(cls, v: list[str] | None) -> list[str] | None:
        repeated = sorted({n for n in v if v.count(n) > 1}) if v else []
        if repeated:
            raise ValueError(f"lists labels more than once: {repeated}")
        return v

    @field_validator("zones", mode="before")
    @classmethod
    def _zone_count(cls, v: Any) -> Any:
        _check_count(v, MAX_ZONES_PER_CAMERA, "zones per camera")
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
    max_files: int = Field(
        100, ge=1, le=1_000_000, description="Files kept in directory; the oldest .jpg beyond it are deleted."
    )
    width: int | None = Field(None, ge=8, le=8192, description="Pixels; unset: from height keeping aspect, or as is.")
    height: int | None = Field(None, ge=8, le=8192, description="Pixels; unset: from width keeping aspect, or as is.")
    quality: int = Field(80, ge=1, le=100, description="JPEG quality, 1..100.")

    @field_validator("directory")
    @classmethod
    def _directory(cls, v: str | None) -> str | None:
        if v is not None:
            _check_text(v)
            if not v.strip():
                raise ValueError("must not be empty (null: no files)")
        return v


class EventsConfig(_Model):
    """What the decisions publish: ON/OFF state, start/update/end events, per-frame detections."""

    detections: bool = Field(True, description="Publish every above-threshold frame on <prefix>/<camera>/detection.")
    event_update_interval_s: float = Field(
        5.0, ge=0, le=3600,
        description="Least seconds (0..3600) between two update events of one active label; 0: every frame.",
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
        10.0, gt=0, le=3600,
        description="A frame this many seconds (frame time) after the last classified one is always classified.",
    )



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
        if v is not None:
            if not v:
                raise ValueError("must not be empty")
            _check_topic(v)
        return v

    @property
    def effective_status_topic(self) -> str:
        return self.status_topic or f"{self.discovery_prefix}/status"


class MetricsConfig(_Model):
    """streamclf's HTTP server: Prometheus metrics and /healthz, and the live page."""

    enabled: bool = Field(False, description="Serve Prometheus metrics and /healthz over HTTP.")
    page: bool = Field(True, description="Serve the live page at / and its JSON, images and live updates under /api.")
    host: str = Field(
        "127.0.0.1",
        description="Address (or host name) the HTTP server listens on; 0.0.0.0 or :: for every interface "
        "(put the page behind a reverse proxy with authentication then, see docs/live-page.md).",
    )
    port: int = Field(9108, ge=1, le=65535, description="TCP port of the HTTP server.")
    max_connections: int = Field(
        32, ge=1, le=1024, description="Connections served at once (1..1024); more are answered 503 and closed."
    )
    max_streams: int = Field(
        4, ge=1, le=64, description="Live-update streams (open pages) at once (1..64); more are answered 503."
    )
    idle_timeout_s: float = Field(
        10, ge=0.5, le=300,
        description="Seconds (0.5..300) a connection may send or accept nothing before it is closed.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        _check_host(v)
        return v


class ServiceConfig(_Model):
    stall_timeout_s: float = Field(
        30, gt=0, le=3600,
        description="Seconds without progress (a model call running, or frames waiting and none classified) "
        "after which the pipeline counts as hung: watchdog pings stop and /healthz says 503.",
    )
    stats_interval_s: float = Field(
        60, ge=0, le=86_400, description="Seconds (0..86400) between <prefix>/stats messages; 0 turns them off."
    )


class Config(_Model):
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    change_gate: ChangeGateConfig = Field(default_factory=ChangeGateConfig)
    labels: dict[LabelName, LabelConfig] = Field(
        description=f"Label name (1 to {MAX_NAME_CHARS} of A-Z a-z 0-9 _ -) -> how to recognise it; "
        f"at most {MAX_LABELS} labels."
    )
    cameras: dict[CameraName, CameraConfig] = Field(
        description=f"Camera name (1 to {MAX_NAME_CHARS} of A-Z a-z 0-9 _ -) -> source and sampling."
    )
    events: EventsConfig = Field(default_factory=EventsConfig)

    @field_validator("labels", "cameras", mode="before")
    @classmethod
    def _not_empty(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, dict) and not v:
            raise ValueError("must name at least one entry")
        if info.field_name == "labels":
            _check_count(v, MAX_LABELS, "labels")
        return v

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> "Config":
        # validate_config defers these so it can report each with its own key path and line.
        if not (info.context or {}).get("defer_cross_checks"):
            problems = self.problems()
            if problems:
                raise ValueError(format_problems(problems))
        return self

    def cross_check_problems(self) -> list[tuple[tuple, str]]:
        """Rules that span sections, as (key path, message) pairs."""
        cameras = {
            name: _CameraRefs(cam.labels, list(cam.label_overrides), list(cam.zones))
            for name, cam in self.cameras.items()
        }
        return _cross_section_problems(list(self.labels), cameras)

    def problems(self) -> list[ConfigProblem]:
        """Rules that span sections, as problems without lines (the config was not read from a file)."""
        return [ConfigProblem(_dotted(loc), None, msg) for loc, msg in self.cross_check_problems()]

    def labels_for(self, camera: str) -> list[str]:
        """Label names scored for ``camera``, in config order."""
        cam = self.cameras[camera]
        return list(cam.labels) if cam.labels is not None else list(self.labels)

    def label_prompts(self) -> dict[str, list[str]]:
        """Label name -> the prompts its text embedding is made from, in config order."""
        return {name: lc.prompts_for(name) for name, lc in self.labels.items()}


class _CameraRefs(NamedTuple):
    """The names a camera refers to, all that the cross-section rules need."""

    labels: list[str] | None  # None: every label
    overrides: list[str]
    zones: list[str]


def _cross_section_problems(labels: list[str], cameras: Mapping[str, _CameraRefs]) -> list[tuple[tuple, str]]:
    """Rules between the labels section and the cameras, as (key path, message) pairs.

    Works on names alone, so it runs on a file whose sections have other errors as well.
    """
    problems = []
    known = set(labels)
    for cam_name, cam in cameras.items():
        names = list(cam.labels) if cam.labels is not None else list(labels)
        unknown = [n for n in names if n not in known]
        where = ("cameras", cam_name, "labels")
        if unknown:
            problems.append((where, f"unknown label(s) {unknown}; known labels: {sorted(known)}"))
        elif len(names) < 2:
            problems.append((where, "needs at least two labels: scores are a softmax over them"))
        for label in cam.overrides:
            if label not in names:
                problems.append(
                    (("cameras", cam_name, "label_overrides", label), f"not a label of this camera: {names}")
                )
        for zone in cam.zones:
            if zone in known or zone in RESERVED_TOPIC_NAMES:
                problems.append(
                    (("cameras", cam_name, "zones", zone), "name collides with a label or topic name in MQTT topics")
                )
    for label in labels:
        if label in RESERVED_TOPIC_NAMES:
            problems.append(
                (("labels", label), f"name is used by streamclf's own topics; avoid {sorted(RESERVED_TOPIC_NAMES)}")
            )
    return problems


def _raw_cross_section_problems(data: Any) -> list[tuple[tuple, str]]:
    """The cross-section rules on unvalidated data, skipping whatever is too malformed to read."""
    if not (isinstance(data, dict) and isinstance(data.get("labels"), dict) and isinstance(data.get("cameras"), dict)):
        return []
    cameras = {}
    for name, cam in data["cameras"].items():
        cam = {} if cam is None else cam
        if not isinstance(cam, dict):
            continue
        labels = cam.get("labels")
        overrides, zones = cam.get("label_overrides") or {}, cam.get("zones") or {}
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            continue
        if not isinstance(overrides, dict) or not isinstance(zones, dict):
            continue
        cameras[str(name)] = _CameraRefs(labels, [str(k) for k in overrides], [str(k) for k in zones])
    return _cross_section_problems([str(k) for k in data["labels"]], cameras)


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config: where (key path, line in the file if known) and what."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<top level>'}: {self.message}"


def format_problems(problems: Iterable[ConfigProblem]) -> str:
    """Problems on one line, ``; ``-separated: for log lines and MQTT error replies."""
    return "; ".join(str(p) for p in problems)


class ConfigError(Exception):
    """The config could not be loaded; ``problems`` lists every error found, in file order."""

    def __init__(self, source: str, problems: list[ConfigProblem]):
        self.source = source
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        super().__init__(f"{source}: {format_problems(problems)}")


def validation_problems(
    exc: ValidationError, lines: Mapping[tuple, int] | None = None, from_env: AbstractSet[tuple] = frozenset()
) -> list[ConfigProblem]:
    """Each error of ``exc`` as a problem: key path, YAML line when ``lines`` has it, message.

    The rejected value is shown only when it cannot be a secret: never for ``SECRET_FIELDS``
    nor for key paths in ``from_env`` (values substituted from ``${VAR}``); URLs are redacted.
    """
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the config reference in README.md)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] != "missing" and loc[-1:] != ("[key]",):  # a key's message names it
                shown = _shown_value(loc, err["input"], from_env)
                msg = f"{msg} ({shown})" if shown else msg
        problems.append(_problem(loc, msg, lines or {}))
    return problems


def _shown_value(loc: tuple, value: Any, from_env: AbstractSet[tuple]) -> str | None:
    """How a rejected value appears in its message: '' for containers, a notice instead of a secret."""
    if isinstance(value, (dict, list, tuple, BaseModel)):
        return None
    if any(loc[: len(secret)] == secret for secret in SECRET_FIELDS):
        return "the value is not shown"
    if any(loc[: len(path)] == path for path in from_env):
        return "the value from the environment is not shown"
    # Redacted before it is cut, so a cut cannot leave part of a password without its '@'.
    return f"got {_brief(redact(value) if isinstance(value, str) else value)}"


def validate_config(
    data: Any, source: str = "<config>", lines: Mapping[tuple, int] | None = None,
    from_env: AbstractSet[tuple] = frozenset(), env: Mapping[str, str] | None = None,
) -> Config:
    """Validate ``data`` (a config as Python data); raise ConfigError listing every problem.

    ``lines`` and ``from_env`` come from the YAML reader (see ``parse_config``). With ``env``,
    the password credential is read too, as the daemon will at start.
    """
    lines = lines or {}
    try:
        cfg = Config.model_validate(data, context={"defer_cross_checks": True})
    except ValidationError as exc:
        problems = validation_problems(exc, lines, from_env)
        seen = {(p.path, p.message) for p in problems}
        problems += [p for p in (_problem(loc, msg, lines) for loc, msg in _raw_cross_section_problems(data))
                     if (p.path, p.message) not in seen]
        raise ConfigError(source, problems) from None
    problems = [_problem(loc, msg, lines) for loc, msg in cfg.cross_check_problems()]
    if env is not None:
        try:
            cfg.mqtt.resolve_password(env)
        except ValueError as exc:
            problems.append(_problem(("mqtt", "password_credential"), str(exc), lines))
    if problems:
        raise ConfigError(source, problems)
    return cfg


class _YamlReader:
    """Turns a composed YAML node tree into Python data, noting each key path's line, the key
    paths whose value came from ``${VAR}``, and problems (unset variables, repeated keys, bad tags)."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.lines: dict[tuple, int] = {}
        self.from_env: set[tuple] = set()
        self.problems: list[ConfigProblem] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def read(self, node: yaml.Node, path: tuple = ()) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self._problem(path, key_node, "a key must be a plain name, not a list or mapping")
                    continue
                key = key_node.value
                sub = path + (key,)
                if key in out:
                    self._problem(sub, key_node, "key appears more than once; only one value can apply")
                self.lines[sub] = key_node.start_mark.line + 1
                out[key] = self.read(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.read(v, path + (i,)) for i, v in enumerate(node.value)]
        if "${" in node.value:
            self.from_env.add(path)
            return _ENV_PATTERN.sub(lambda m: self._variable(m.group(1), path, node), node.value)
        try:
            # Typed exactly as yaml.safe_load would: ints, floats, bools, null (an empty value).
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._problem(path, node, _yaml_message(exc))
            return None

    def _variable(self, name: str, path: tuple, node: yaml.Node) -> str:
        if name not in self.env:
            self._problem(path, node, f"environment variable ${{{name}}} is not set")
            return ""
        return self.env[name]

    def _problem(self, path: tuple, node: yaml.Node, message: str) -> None:
        self.problems.append(ConfigProblem(_dotted(path), node.start_mark.line + 1, message))


def _yaml_message(exc: yaml.YAMLError) -> str:
    """What is wrong, without the excerpt of the line PyYAML adds (it may hold a password)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"not valid YAML: {type(exc).__name__}"
    parts = []
    if exc.context:
        started = f" (line {exc.context_mark.line + 1})" if exc.context_mark else ""
        parts.append(f"{exc.context}{started}")
    if exc.problem:
        parts.append(exc.problem)
    column = f" at column {exc.problem_mark.column + 1}" if exc.problem_mark else ""
    return f"not valid YAML{column}: {', '.join(parts) or type(exc).__name__}"


def _dotted(path: tuple) -> str:
    """``cameras.front.zones[0]``; a key that is not a plain name is quoted: ``labels.'car\\n'``."""
    out = ""
    for part in path:
        if part == "[key]":  # pydantic's marker for an error in a dict's key rather than its value
            continue
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if re.fullmatch(r"[A-Za-z0-9_-]+", str(part)) else _brief(part, 40)
        out += f".{text}" if out else text
    return out


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith((parent + ".", parent + "["))


def parse_config(text: str, source: str = "<config>", env: dict | None = None) -> Config:
    """Parse and validate YAML ``text``; raise ConfigError listing every problem with its line."""
    env = dict(os.environ) if env is None else env
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(source, [ConfigProblem("", mark.line + 1 if mark else None, _yaml_message(exc))]) from None
    if root is None:
        raise ConfigError(source, [ConfigProblem("", None, "the file is empty")])
    reader = _YamlReader(env)
    data = reader.read(root)
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("", 1, "the top level must be a mapping")])
    problems = list(reader.problems)
    try:
        cfg = validate_config(data, source, reader.lines, reader.from_env, env)
    except ConfigError as exc:
        # A value left empty by an unset variable is reported as that, not again as what the emptiness breaks.
        problems += [p for p in exc.problems if not any(_under(p.path, q.path) for q in reader.problems)]
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _problem(loc: tuple, message: str, lines: Mapping[tuple, int]) -> ConfigProblem:
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
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(str(p), [ConfigProblem("", None, f"cannot read the file: {why}")]) from None
    return parse_config(text, str(p), env)
