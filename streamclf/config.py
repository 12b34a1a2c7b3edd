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

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"streamclf-{socket.gethostname()}"


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
    max_batch_wait_ms: float = Field(50, ge=0, description="Longest a frame waits for a batch to fill, ms.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: all cores.")
    opencv_threads: int = Field(
        1, ge=1, description="OpenCV worker threads (colour conversion, gating thumbnails); 1 leaves the cores to torch."
    )
    preprocess: Literal["auto", "host", "device"] = Field(
        "auto",
        description="Where frames are resized and normalised: host (CPU) or device (uint8 frames to the GPU); "
        "auto: device on CUDA, host on the CPU.",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v


class LabelConfig(_Model):
    prompts: list[str] | None = Field(
        None, description="Text prompts; default: 'a photo of a <name>' from the label name."
    )
    threshold: float = Field(0.5, ge=0, le=1, description="Score (0..1) at or above which the label is published.")
    background: bool = Field(False, description="Takes part in scoring but is never published.")

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not p.strip() for p in v)):
            raise ValueError("must be a non-empty list of non-empty strings")
        return v

    def prompts_for(self, name: str) -> list[str]:
        """The prompts to embed for this label; names like 'delivery_van' read as 'delivery van'."""
        return list(self.prompts) if self.prompts else [f"a photo of a {name.replace('_', ' ')}"]


class CameraConfig(_Model):
    source: Union[int, str] = Field(description="Video file path, rtsp:// or http:// URL, or webcam index.")
    fps: float = Field(2.0, gt=0, le=120, description="Frames classified per second of video.")
    labels: list[str] | None = Field(None, description="Labels scored for this camera; default: all.")
    realtime: bool = Field(
        True, description="Files only: false classifies every sampled frame as fast as possible, dropping none."
    )
    loop: bool = Field(False, description="Files only: start again at the end instead of ending.")
    enabled: bool = Field(True, description="A disabled camera is not opened.")
    decode_threads: int = Field(
        1, ge=0, le=64, description="FFmpeg decoder threads for this camera; 0: FFmpeg's choice (all cores)."
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: int | str) -> int | str:
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        return v

    @property
    def is_file(self) -> bool:
        return isinstance(self.source, str) and "://" not in self.source


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


class Config(_Model):
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    change_gate: ChangeGateConfig = Field(default_factory=ChangeGateConfig)
    labels: dict[str, LabelConfig] = Field(description="Label name -> how to recognise it.")
    cameras: dict[str, CameraConfig] = Field(description="Camera name -> source and sampling.")

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
