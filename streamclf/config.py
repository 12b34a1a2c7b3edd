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

import glob
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
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
MAX_EXAMPLE_ENTRIES = 100  # paths or globs per label
MAX_EXAMPLE_IMAGES = 500  # images per label once globs are expanded: each is embedded at start and on reload
MAX_WEBCAM_INDEX = 99  # OpenCV reads index // 100 as a choice of backend
MAX_BOX_PIXELS = 65535
SOURCE_SCHEMES = ("rtsp", "rtsps", "http", "https")  # what OpenCV's FFmpeg reads, TLS included
# Values never shown in an error message, as key paths; a value substituted from ${VAR} is never shown either.
SECRET_FIELDS = frozenset({("mqtt", "password")})
# How each supported checkpoint family (config.json's model_type) turns similarities into scores.
SCORE_OF_MODEL_TYPE = {"clip": "softmax", "siglip": "sigmoid"}

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


def _name_check(what: str) -> Callable[[str], str]:
    """A validator for dict keys that are names, checked key by key, whatever their values hold."""

    def check(name: str) -> str:
        _check_name(name, what)
        return name

    return check


CameraName = Annotated[str, AfterValidator(_name_check("camera"))]
LabelName = Annotated[str, AfterValidator(_name_check("label"))]
ZoneName = Annotated[str, AfterValidator(_name_check("zone"))]


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
    node_id: str | None = Field(
        None,
        description=f"This daemon's name among several sharing one broker and topic_prefix (1 to {MAX_NAME_CHARS} "
        "of A-Z a-z 0-9 _ -): it claims its cameras under <prefix>/nodes/<node_id> and owns only their "
        "retained topics and Home Assistant entities. Unset: the only daemon on this prefix.",
    )
    client_id: str | None = Field(
        None, min_length=1,
        description=f"MQTT client id, at most {MAX_CLIENT_ID_BYTES} bytes; default streamclf-<hostname>, "
        "or streamclf-<hostname>-<node_id> with a node_id.",
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
        description="Non-retained messages held while the broker is away; the oldest are dropped beyond this. "
        "Retained states are held besides, one (the newest) per topic, and never dropped.",
    )
    tls: bool = Field(
        False,
        description="Connect with TLS, trusting the system's CA store (implied by tls_ca_certs or a client cert).",
    )
    tls_ca_certs: str | None = Field(
        None, description="Absolute path of a PEM file of the CA certificate(s) that signed the broker's; turns TLS on."
    )
    tls_client_cert: str | None = Field(
        None,
        description="Absolute path of a PEM client certificate, for brokers that require one (with tls_client_key).",
    )
    tls_client_key: str | None = Field(
        None, description="Absolute path of the unencrypted PEM private key of tls_client_cert."
    )
    tls_insecure: bool = Field(
        False, description="Do not check that the broker's certificate names mqtt.host (the CA is still checked)."
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

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str | None) -> str | None:
        if v is not None:
            _check_name(v, "node")
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

    @field_validator("tls_ca_certs", "tls_client_cert", "tls_client_key")
    @classmethod
    def _tls_path(cls, v: str | None) -> str | None:
        return _absolute_path(v)

    @model_validator(mode="after")
    def _one_password(self) -> "MqttConfig":
        if self.password is not None and self.password_credential is not None:
            raise ValueError("set password or password_credential, not both")
        if (self.password is not None or self.password_credential is not None) and not self.username:
            raise ValueError("a password needs mqtt.username: MQTT sends no password without a user name")
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("set tls_client_cert and tls_client_key together (mutual TLS), or neither")
        if self.tls_insecure and not self.tls_enabled:
            raise ValueError("tls_insecure applies to TLS only: set tls: true or tls_ca_certs")
        return self

    @property
    def tls_enabled(self) -> bool:
        """TLS is on: asked for, or implied by a CA file or a client certificate."""
        return self.tls or self.tls_ca_certs is not None or self.tls_client_cert is not None

    def tls_file_problems(self) -> list[tuple[tuple, str]]:
        """What is wrong with the TLS files (unreadable, not PEM, key and certificate apart), by key path."""
        return tls_file_problems(("mqtt",), self.tls_ca_certs, self.tls_client_cert, self.tls_client_key)

    @property
    def effective_client_id(self) -> str:
        # Two nodes on one host must not share a client id: the broker would disconnect one for the other.
        node = f"-{self.node_id}" if self.node_id else ""
        return self.client_id or f"streamclf-{socket.gethostname()}{node}"

    def resolve_password(self, env: Mapping[str, str] | None = None) -> str | None:
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


def tls_file_problems(section: tuple, ca: str | None, cert: str | None, key: str | None,
                      names: tuple[str, str, str] = ("tls_ca_certs", "tls_client_cert", "tls_client_key"),
                      ) -> list[tuple[tuple, str]]:
    """What is wrong with a CA file and a certificate with its key (unreadable, not PEM, apart), by key path
    under ``section``; ``names`` are the three keys. Reads the files as the daemon will when it connects.
    Messages never quote a file's content."""
    problems: list[tuple[tuple, str]] = []
    for name, path, kind in zip(names, (ca, cert, key), ("ca", "cert", "key"), strict=True):
        if path is None:
            continue
        try:
            text = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a PEM (text) file"
            problems.append(((*section, name), f"cannot read {path}: {why}"))
            continue
        marker = "PRIVATE KEY-----" if kind == "key" else "-----BEGIN CERTIFICATE-----"
        if marker not in text:
            what = "a PEM private key" if kind == "key" else "a PEM certificate"
            problems.append(((*section, name), f"{path} holds no {what}"))
        elif kind == "key" and "ENCRYPTED" in text:
            problems.append(((*section, name), f"{path} is encrypted; the daemon needs an unencrypted key "
                             "(readable only by its user)"))
    return problems or _tls_context_problems(section, names, ca, cert, key)


def _refuse_password() -> str:
    raise ValueError("the key is encrypted")


def _tls_context_problems(section: tuple, names: tuple[str, str, str], ca: str | None, cert: str | None,
                          key: str | None) -> list[tuple[tuple, str]]:
    """Load the TLS files into an SSL context, as paho and gRPC will; problems by key path."""
    ctx = ssl.create_default_context()
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            return [((*section, names[0]), f"{ca} is not a usable PEM CA file ({exc.reason or exc})")]
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(cert, key, password=_refuse_password)
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            return [((*section, names[2]), f"{key} and {cert} cannot be used together ({reason})")]
    return []


def _absolute_path(v: str | None) -> str | None:
    if v is not None:
        _check_text(v)
        if not os.path.isabs(v):
            raise ValueError("must be an absolute path (the daemon's working directory is not the config's)")
    return v


_TRITON_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TritonClientConfig(_Model):
    """Where a node's model runs when ``model.backend`` is ``triton`` (``streamclf.remote.client``)."""

    url: str = Field("localhost:8001", description="The Triton server's gRPC address, host:port.")
    model_prefix: str = Field(
        "streamclf", description="The server's models are <prefix>_image, <prefix>_text and <prefix>_info."
    )
    timeout_s: float = Field(10, gt=0, le=600, description="Longest one request may take, seconds (0..600).")
    retry_max_s: float = Field(
        30, ge=1, le=3600, description="Longest wait between reconnect attempts, seconds (1..3600); the wait "
        "doubles from 1 s up to this."
    )
    tls: bool = Field(
        False, description="gRPC over TLS, trusting the system's CA store (implied by tls_ca_certs or a client cert)."
    )
    tls_ca_certs: str | None = Field(
        None, description="Absolute path of a PEM file of the CA certificate(s) that signed the server's; turns TLS on."
    )
    tls_client_cert: str | None = Field(
        None, description="Absolute path of a PEM client certificate, for servers that require one (with the key)."
    )
    tls_client_key: str | None = Field(
        None, description="Absolute path of the unencrypted PEM private key of tls_client_cert."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("must be host:port (the server's gRPC port), without a scheme")
        _check_host(host)
        return v

    @field_validator("model_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _TRITON_PREFIX.fullmatch(v):
            raise ValueError("must be 1 to 64 of A-Z a-z 0-9 _ -")
        return v

    @field_validator("tls_ca_certs", "tls_client_cert", "tls_client_key")
    @classmethod
    def _tls_path(cls, v: str | None) -> str | None:
        return _absolute_path(v)

    @model_validator(mode="after")
    def _pair(self) -> "TritonClientConfig":
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("set tls_client_cert and tls_client_key together (mutual TLS), or neither")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls or self.tls_ca_certs is not None or self.tls_client_cert is not None

    def tls_file_problems(self) -> list[tuple[tuple, str]]:
        return tls_file_problems(("model", "triton"), self.tls_ca_certs, self.tls_client_cert, self.tls_client_key)


class ModelConfig(_Model):
    name: str = Field(
        "openai/clip-vit-base-patch32",
        description="Hugging Face hub id, or a local directory saved with save_pretrained.",
    )
    backend: Literal["local", "triton"] = Field(
        "local", description="Where the model runs: local (torch in this process) or triton (a Triton server; "
        "this process then needs neither torch nor transformers)."
    )
    triton: TritonClientConfig = Field(default_factory=TritonClientConfig)
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
    score: Literal["auto", "softmax", "sigmoid"] = Field(
        "auto",
        description="How scores are made, which must be the model's: softmax over a camera's labels (CLIP) or a "
        "sigmoid per label (SigLIP). auto: from the checkpoint's config.json when it is on this machine, else "
        "softmax's rules (at least two labels per camera); the model is checked against it when it loads.",
    )
    cuda_graphs: bool = Field(
        True,
        description="On CUDA, replay the image model as CUDA graphs (one per batch size 1, 2, 4, .. batch_size), "
        "which removes the per-kernel launch cost that bounds small batches; ignored on the CPU.",
    )

    max_queued_frames_mib: int = Field(
        256, ge=16, le=65_536,
        description="Memory (MiB, 16..65536) that frames waiting for the model may hold in all; beyond it a live "
        "camera's oldest waiting frame is dropped and a file waits. One frame is always accepted.",
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

    @property
    def effective_score(self) -> str:
        """softmax or sigmoid: ``score``, or for auto the checkpoint's own when its config.json is here
        (with a Triton backend the server's model is checked when the node connects)."""
        if self.score != "auto" or self.backend == "triton":
            return "softmax" if self.score == "auto" else self.score
        return SCORE_OF_MODEL_TYPE.get(checkpoint_model_type(self.name) or "", "softmax")


def checkpoint_model_type(name: str) -> str | None:
    """The ``model_type`` in a checkpoint's config.json, from its directory or the Hugging Face cache;
    None when neither has it (never asks the hub)."""
    import json

    path: Any = Path(name).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(name, "config.json")
        except ValueError:  # not a hub id
            return None
    if not isinstance(path, (str, Path)):
        return None
    try:
        model_type = json.loads(Path(path).read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) else None


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
    examples: list[str] | None = Field(
        None, max_length=MAX_EXAMPLE_ENTRIES,
        description="Pictures of the label (of what it is not, for a background label): paths or globs, relative "
        f"to the config file; at most {MAX_EXAMPLE_IMAGES} images. Their image embeddings join the prompts'.",
    )
    examples_weight: float = Field(
        0.5, ge=0, le=1,
        description="Weight w (0..1) of the examples: embedding = normalise((1-w) mean(prompts) + w mean(examples)).",
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

    @field_validator("examples")
    @classmethod
    def _examples(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not e.strip() for e in v)):
            raise ValueError("must be a non-empty list of paths or globs")
        for entry in v or []:
            _check_text(entry, 4096)
        return v

    def example_paths(self, base_dir: str | Path) -> list[Path]:
        """The example image files, globs expanded (sorted), relative entries under ``base_dir``.

        Raises ValueError naming the entry that matches no file, or when there are too many images.
        """
        paths: list[Path] = []
        for entry in self.examples or []:
            full = Path(base_dir, Path(entry).expanduser())
            if any(c in entry for c in "*?["):
                found = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if os.path.isfile(p))
                if not found:
                    raise ValueError(f"{entry!r} matches no file (under {base_dir})")
                paths += found
            elif not full.is_file():
                raise ValueError(f"{entry!r}: no such file ({full})")
            else:
                paths.append(full)
        if len(paths) > MAX_EXAMPLE_IMAGES:
            raise ValueError(f"at most {MAX_EXAMPLE_IMAGES} example images per label (these match {len(paths)})")
        return paths

    def prompts_for(self, name: str) -> list[str]:
        """The prompts to embed for this label; names like 'delivery_van' read as 'delivery van'."""
        return list(self.prompts) if self.prompts else [f"a photo of a {name.replace('_', ' ')}"]


@dataclass(frozen=True)
class LabelExamples:
    """A label's example images, as files, and their weight (0..1) in its embedding."""

    paths: tuple[Path, ...]
    weight: float


def example_problems(labels: Mapping[str, LabelConfig], base_dir: str | Path) -> list[tuple[tuple, str]]:
    """Example images that are missing, match nothing or do not decode (OpenCV), as (key path, message) pairs."""
    import cv2

    problems: list[tuple[tuple, str]] = []
    for name, lc in labels.items():
        where = ("labels", name, "examples")
        try:
            paths = lc.example_paths(base_dir)
        except ValueError as exc:
            problems.append((where, str(exc)))
            continue
        for path in paths:
            if cv2.imread(str(path), cv2.IMREAD_COLOR) is None:
                problems.append((where, f"{path} is not an image OpenCV can decode (missing, unreadable or corrupt)"))
    return problems


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
        None, min_length=1, max_length=100,
        description="Friendly name (Home Assistant device name); default: the key made readable, "
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
    max_frame_side_px: int | None = Field(
        1920, ge=224, le=16_384,
        description="Frames whose longer side is above this many pixels (224..16384) are shrunk to it as they are "
        "decoded, keeping the aspect: the model sees 224 pixels and snapshots rarely need more, while an 8K frame "
        "takes 95 MiB. Keep it large enough for small zones. null: never shrink. Not applied to a camera with a "
        "zone in pixel coordinates.",
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
        return isinstance(self.source, str) and "://" not in self.source and not is_video_device(self.source)

    @property
    def frame_side_limit_px(self) -> int | None:
        """The longest frame side kept at capture, pixels; None: frames stay as decoded.

        Pixel zones are measured on the frame as the camera sends it, so their cameras are never shrunk.
        """
        if any(z.coordinates == "pixels" for z in self.zones.values()):
            return None
        return self.max_frame_side_px


def is_video_device(source: str) -> bool:
    """Whether a path names a capture device (``/dev/video7``, ``/dev/v4l/by-id/...``): a live source, not a file."""
    return os.path.normpath(os.path.expanduser(source)).startswith("/dev/")


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
    max_queued_mib: int = Field(
        64, ge=1, le=4096,
        description="Memory (MiB, 1..4096) the pictures waiting to be encoded may hold; beyond it the oldest "
        "pending snapshot is dropped. The newest is always kept.",
    )

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


# <prefix>/nodes/<node_id>: where nodes sharing a prefix claim their cameras (streamclf/nodes.py).
NODES_TOPIC_LEVEL = "nodes"

# Topic levels the daemon itself uses under <prefix>/<camera>/: a label or zone of that name would collide.
RESERVED_TOPIC_NAMES = frozenset(
    {"status", "detection", "event", "snapshot", "enabled", "threshold", "state", "set", "top_label", "error", "stats",
     "attributes", "score"}
)

class ChangeGateConfig(_Model):
    enabled: bool = Field(
        False, description="Skip the model for frames that barely differ from the last classified one."
    )
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
        None,
        description="Home Assistant's birth topic; 'online' there re-sends discovery. "
        "Default <discovery_prefix>/status.",
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
        problems = _cross_section_problems(list(self.labels), cameras, self.model.effective_score)
        if self.mqtt.node_id is not None and NODES_TOPIC_LEVEL in self.cameras:
            # <prefix>/nodes/<node> is a node's claim: a camera's topics there would read as one.
            problems.append((("cameras", NODES_TOPIC_LEVEL), f"with mqtt.node_id set, {NODES_TOPIC_LEVEL!r} "
                             "is the nodes' topic level; rename the camera"))
        triton = self.model.triton
        if self.model.backend == "triton" and triton.timeout_s >= self.service.stall_timeout_s:
            # A hung server holds each batch for timeout_s; the watchdog must not take that for a hung
            # pipeline and restart the node in a loop, since a restart cannot bring the server back.
            problems.append((("model", "triton", "timeout_s"), f"{triton.timeout_s:g} s must be below "
                             f"service.stall_timeout_s ({self.service.stall_timeout_s:g} s)"))
        return problems

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

    def label_examples(self, base_dir: str | Path) -> dict[str, LabelExamples]:
        """Label name -> its example images (files under ``base_dir``, the config file's directory),
        for the labels that have examples. Raises ValueError as ``LabelConfig.example_paths``."""
        return {name: LabelExamples(tuple(lc.example_paths(base_dir)), lc.examples_weight)
                for name, lc in self.labels.items() if lc.examples}


class _CameraRefs(NamedTuple):
    """The names a camera refers to, all that the cross-section rules need."""

    labels: list[str] | None  # None: every label
    overrides: list[str]
    zones: list[str]


def _cross_section_problems(labels: list[str], cameras: Mapping[str, _CameraRefs],
                            score: str = "softmax") -> list[tuple[tuple, str]]:
    """Rules between the labels section and the cameras, as (key path, message) pairs.

    ``score`` (softmax or sigmoid) is the model's: a softmax needs two labels to compare, a
    per-label sigmoid scores a single one.

    Works on names alone, so it runs on a file whose sections have other errors as well.
    """
    problems: list[tuple[tuple, str]] = []
    known = set(labels)
    for cam_name, cam in cameras.items():
        names = list(cam.labels) if cam.labels is not None else list(labels)
        unknown = [n for n in names if n not in known]
        where = ("cameras", cam_name, "labels")
        if unknown:
            problems.append((where, f"unknown label(s) {unknown}; known labels: {sorted(known)}"))
        elif len(names) < 2 and score == "softmax":
            problems.append((where, "needs at least two labels: this model's scores are a softmax over a camera's "
                                    "labels (a per-label model such as SigLIP, model.score: sigmoid, scores one)"))
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
    model = data.get("model")
    try:
        score = ModelConfig.model_validate(model if isinstance(model, dict) else {}).effective_score
    except ValidationError:
        score = "softmax"
    return _cross_section_problems([str(k) for k in data["labels"]], cameras, score)


class ServeSettings(_Model):
    """The Triton server of ``streamclf serve`` (``streamclf.remote.server``)."""

    address: str = Field("0.0.0.0", description="The address Triton's gRPC, HTTP and metrics endpoints listen on.")
    grpc_port: int = Field(8001, ge=1, le=65535, description="gRPC port: the one nodes use (model.triton.url).")
    http_port: int = Field(8000, ge=1, le=65535, description="HTTP port (KServe v2 REST, /v2/health/ready).")
    metrics_port: int = Field(8002, ge=1, le=65535, description="Triton's Prometheus metrics port.")
    max_batch_size: int = Field(64, ge=1, le=1024, description="Frames per model call at most, across every node.")
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="Batch sizes the dynamic batcher tries to form (each 1..max_batch_size)."
    )
    max_queue_delay_us: int = Field(
        2000, ge=0, le=1_000_000, description="Longest a request waits for others to join its batch, microseconds."
    )
    instances: int = Field(
        1, ge=1, le=16, description="Model instances Triton runs at once (each its own copy of the image model)."
    )
    tls_cert: str | None = Field(
        None, description="Absolute path of the PEM certificate gRPC serves over TLS (with tls_key); off without."
    )
    tls_key: str | None = Field(None, description="Absolute path of the unencrypted PEM private key of tls_cert.")
    tls_client_ca: str | None = Field(
        None, description="Absolute path of a PEM CA file: nodes must then present a certificate it signed."
    )

    @field_validator("tls_cert", "tls_key", "tls_client_ca")
    @classmethod
    def _tls_path(cls, v: str | None) -> str | None:
        return _absolute_path(v)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        _check_host(v)
        return v

    @model_validator(mode="after")
    def _sizes(self) -> "ServeSettings":
        bad = [n for n in self.preferred_batch_sizes if not 1 <= n <= self.max_batch_size]
        if bad:
            raise ValueError(f"serve.preferred_batch_sizes {bad}: each must be 1..max_batch_size "
                             f"({self.max_batch_size})")
        if len({self.grpc_port, self.http_port, self.metrics_port}) < 3:
            raise ValueError("serve.grpc_port, http_port and metrics_port must differ")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set serve.tls_cert and serve.tls_key together, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("serve.tls_client_ca needs TLS: set serve.tls_cert and serve.tls_key")
        return self

    def tls_file_problems(self) -> list[tuple[tuple, str]]:
        return tls_file_problems(("serve",), self.tls_client_ca, self.tls_cert, self.tls_key,
                                 names=("tls_client_ca", "tls_cert", "tls_key"))


class ServeConfig(_Model):
    """The config of ``streamclf serve``: the model section (as a daemon's) and the server's own."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    service: ServiceConfig = Field(default_factory=ServiceConfig)



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
    base_dir: str | Path | None = None,
) -> Config:
    """Validate ``data`` (a config as Python data); raise ConfigError listing every problem.

    ``lines`` and ``from_env`` come from the YAML reader (see ``parse_config``). With ``env``,
    the password credential is read too, as the daemon will at start. With ``base_dir`` (the
    config file's directory) every label's example images are found and decoded.
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
    if base_dir is not None:
        problems += [_problem(loc, msg, lines) for loc, msg in example_problems(cfg.labels, base_dir)]
    if env is not None:
        try:
            cfg.mqtt.resolve_password(env)
        except ValueError as exc:
            problems.append(_problem(("mqtt", "password_credential"), str(exc), lines))
        problems += [_problem(loc, msg, lines) for loc, msg in cfg.mqtt.tls_file_problems()]
        if cfg.model.backend == "triton":
            problems += [_problem(loc, msg, lines) for loc, msg in cfg.model.triton.tls_file_problems()]
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


def _read_yaml(text: str, source: str, env: Mapping[str, str]) -> tuple[dict, "_YamlReader"]:
    """The YAML mapping in ``text`` and the reader that noted its lines and problems; ConfigError if none."""
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
    return data, reader


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(str(p), [ConfigProblem("", None, f"cannot read the file: {why}")]) from None


def load_serve_config(path: str | Path, env: dict | None = None) -> ServeConfig:
    """Read and validate the config of ``streamclf serve`` (its ``model``, ``serve`` and ``service`` sections)."""
    p = Path(path)
    text = _read_text(p)
    data, reader = _read_yaml(text, str(p), dict(os.environ) if env is None else env)
    problems = list(reader.problems)
    try:
        cfg = ServeConfig.model_validate(data)
        problems += [_problem(loc, msg, reader.lines) for loc, msg in cfg.serve.tls_file_problems()]
    except ValidationError as exc:
        problems += validation_problems(exc, reader.lines, reader.from_env)
    if problems:
        raise ConfigError(str(p), problems)
    return cfg


def parse_config(text: str, source: str = "<config>", env: dict | None = None,
                 base_dir: str | Path | None = None) -> Config:
    """Parse and validate YAML ``text``; raise ConfigError listing every problem with its line.

    ``base_dir``: the directory relative paths in it are under; example images are checked when given.
    """
    env = dict(os.environ) if env is None else env
    data, reader = _read_yaml(text, source, env)
    problems = list(reader.problems)
    try:
        cfg = validate_config(data, source, reader.lines, reader.from_env, env, base_dir)
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
    text = _read_text(p)
    return parse_config(text, str(p), env, p.resolve().parent)
