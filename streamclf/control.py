"""Runtime control over MQTT: pause cameras, tune thresholds, replace the label set, no restart.

| command topic                               | payload                            | echoed, retained, on            |
|---------------------------------------------|------------------------------------|---------------------------------|
| ``<prefix>/<camera>/enabled/set``           | ``ON`` / ``OFF``                   | ``.../<camera>/enabled/state``  |
| ``<prefix>/<camera>/<label>/threshold/set`` | a number, 0..1                     | ``.../<label>/threshold/state`` |
| ``<prefix>/labels/set``                     | JSON like the config's ``labels:`` | ``<prefix>/labels/state``       |

Every payload is validated before anything changes. A rejected one changes nothing and is
answered on ``<prefix>/error`` (JSON: ``topic``, ``error``, ``payload`` excerpt, ``timestamp``)
and in the log. Commands run one at a time on their own thread, so a label change, which runs
the text model, never stalls paho's network thread; the queue is bounded and overflow is
rejected like an invalid payload. A flood cannot flood anything else: error replies are sent
at most ``max_error_replies_per_s`` per second (the next one sent says how many were not), and
log lines per cause (rejected, applied) at most ``log_lines_per_window`` per
``log_window_s`` seconds, with one line summing up the rest. Runtime changes last until the daemon restarts: the config
file stays the source of truth, and the state topics are set from it again at start.

With several nodes on the prefix (``mqtt.node_id``, streamclf/nodes.py), a command for a camera
another node holds is that node's: it is ignored here, not answered as an unknown camera. The
label set is each node's own: ``<prefix>/labels/set`` reaches every node,
``<prefix>/nodes/<node>/labels/set`` one, and each echoes on ``<prefix>/nodes/<node>/labels/state``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Mapping, Protocol

from pydantic import Field, TypeAdapter, ValidationError

from streamclf.bounded_queue import BoundedQueue, OverflowPolicy
from streamclf.config import Config, ConfigError, LabelConfig, format_problems, validate_config
from streamclf.mqtt_client import MqttClient
from streamclf.nodes import NodeOwnership, camera_level
from streamclf.retained import OwnedRetainedTopics
from streamclf.throttle import LogThrottle, RateLimit
from streamclf.workers import Workers

log = logging.getLogger(__name__)

PAYLOAD_EXCERPT_CHARS = 200
# A label set is a few dozen prompts; a bigger payload is a mistake, and would run the text model for long.
MAX_LABELS_PAYLOAD_BYTES = 64 * 1024

_on_off = TypeAdapter(Literal["ON", "OFF"])
_threshold = TypeAdapter(Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)])


class ControlTarget(Protocol):
    """What runtime control needs from the running pipeline (streamclf/pipeline.py implements it)."""

    @property
    def cfg(self) -> Config: ...

    def camera_enabled(self, camera: str) -> bool: ...

    def set_camera_enabled(self, camera: str, enabled: bool) -> None: ...

    def threshold(self, camera: str, label: str) -> float: ...

    def set_threshold(self, camera: str, label: str, threshold: float) -> None: ...

    def replace_labels(self, labels: Mapping[str, LabelConfig]) -> Config: ...


class ControlError(ValueError):
    """A command that was rejected; the message is published on ``<prefix>/error``."""


class _NotOurs(Exception):
    """A command for a camera another node holds: not ours to apply nor to answer."""


def _camera_of_topic(prefix: str) -> Callable[[str, bytes], str | None]:
    """The camera of a retained ``<prefix>/<camera>/...`` state topic (the payload says nothing of it)."""
    return lambda topic, payload: camera_level(prefix, topic)


@dataclass(frozen=True)
class ControlMessage:
    topic: str
    payload: bytes


_STOP = ControlMessage("", b"")


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ControlError("payload is not UTF-8 text") from None


def config_with_labels(cfg: Config, payload: bytes) -> Config:
    """``cfg`` with its ``labels:`` section replaced by the JSON ``payload``, validated like the config file."""
    if len(payload) > MAX_LABELS_PAYLOAD_BYTES:
        raise ControlError(f"payload too large ({len(payload)} bytes; at most {MAX_LABELS_PAYLOAD_BYTES})")
    try:
        labels = json.loads(_text(payload))
    except json.JSONDecodeError as exc:
        raise ControlError(f"not valid JSON: {exc}") from None
    if not isinstance(labels, dict):
        raise ControlError("expected a JSON object mapping label names to label settings, like the config's labels:")
    try:
        # Everything is validated again, by the config file's rules (names, counts, ranges) and
        # cross-section rules included: a camera that names a label the new set lacks, or that would
        # be left with fewer than two labels, rejects the whole change.
        return validate_config({**cfg.model_dump(), "labels": labels}, source="labels/set")
    except ConfigError as exc:
        raise ControlError(format_problems(exc.problems)) from None


class Controller:
    """Subscribes to the command topics, validates and applies commands, echoes state, reports errors."""

    max_queued_commands = 64
    max_error_replies_per_s = 10
    log_lines_per_window = 10
    log_window_s = 10.0

    def __init__(
        self,
        target: ControlTarget,
        publisher: MqttClient,
        on_labels_changed: Callable[[Config], None] | None = None,  # e.g. announce to Home Assistant again
        workers: Workers | None = None,
        ownership: NodeOwnership | None = None,  # with several nodes on the prefix: who holds which camera
    ):
        self._target = target
        self._publisher = publisher
        self._on_labels_changed = on_labels_changed
        self._ownership = ownership
        prefix = publisher.prefix
        camera_of = _camera_of_topic(prefix)
        self._enabled_states = OwnedRetainedTopics(publisher, f"{prefix}/+/enabled/state", camera_of, ownership)
        self._threshold_states = OwnedRetainedTopics(publisher, f"{prefix}/+/+/threshold/state", camera_of, ownership)
        # A command that does not fit is refused, not an older one dropped: its sender gets an error reply.
        self._queue: BoundedQueue[ControlMessage] = BoundedQueue(
            self.max_queued_commands, OverflowPolicy.REJECT_NEWEST, logger=log)
        self._thread = (workers if workers is not None else Workers()).thread(self._run, "control")
        self.applied = 0
        self.rejected = 0
        self._counts_lock = threading.Lock()
        self._log = LogThrottle(log, self.log_lines_per_window, self.log_window_s)
        self._replies = RateLimit(self.max_error_replies_per_s, 1.0)
        self.replies_suppressed = 0  # error replies not sent because of the rate limit, since start
        self._unreported_suppressed = 0  # of those, not yet counted in a sent reply

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Publish the current state, subscribe to the command topics, start the command thread.

        Call before the publisher connects, so the subscriptions are made on the first connect.
        """
        self._enabled_states.start()
        self._threshold_states.start()
        if self._ownership is not None:
            self._ownership.on_change(self._on_ownership_change)
        self._publish_state(self._target.cfg)
        t = self._publisher.topic
        filters = [t("+", "enabled", "set"), t("+", "+", "threshold", "set"), t("labels", "set"),
                   self._publisher.node_topic("labels", "set")]
        for topic_filter in dict.fromkeys(filters):  # the last is the one before it without a node id
            self._publisher.subscribe(topic_filter, self._on_message)
        self._thread.start()

    def _on_ownership_change(self) -> None:
        # The claims are known: what the broker held before can be judged. (Echoes of cameras this node
        # now holds go out through the publisher, which kept them while they were withheld.)
        self._enabled_states.flush_pending()
        self._threshold_states.flush_pending()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Finish the command being applied (up to ``timeout_s`` seconds); queued ones are dropped."""
        self._queue.clear()
        self._queue.put_front(_STOP)  # ahead of any command that arrives from now on
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    # -- receiving (paho's network thread: never blocks) ---------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self._queue.put(ControlMessage(topic, bytes(payload))) is not None:
            self._reject(topic, payload, f"too many control commands waiting (more than {self.max_queued_commands})")

    def _run(self) -> None:
        while True:
            msg = self._queue.get(timeout_s=1.0)
            if msg is None:
                self._log.flush()  # idle: sum up what a flood had held back
                continue
            if msg is _STOP:
                return
            self.apply(msg.topic, msg.payload)

    # -- applying -----------------------------------------------------------------

    def apply(self, topic: str, payload: bytes) -> bool:
        """Validate and apply one command; True if applied. Never raises."""
        try:
            self._dispatch(topic, payload)
        except _NotOurs:
            log.debug("control: %s is for a camera another node holds; ignored", topic)
            return False
        except ControlError as exc:
            self._reject(topic, payload, str(exc))
            return False
        except Exception as exc:  # a bug must not take the daemon down, nor leave the sender without an answer
            log.exception("control: applying %s failed", topic)
            self._reject(topic, payload, f"internal error: {type(exc).__name__}: {exc}")
            return False
        self.applied += 1
        return True

    def _dispatch(self, topic: str, payload: bytes) -> None:
        parts = topic[len(self._publisher.prefix) + 1 :].split("/")
        if topic in (self._publisher.topic("labels", "set"), self._publisher.node_topic("labels", "set")):
            self._set_labels(payload)
        elif len(parts) == 3 and parts[1:] == ["enabled", "set"]:
            self._set_enabled(parts[0], payload)
        elif len(parts) == 4 and parts[2:] == ["threshold", "set"]:
            self._set_threshold(parts[0], parts[1], payload)
        else:
            raise ControlError("not a command topic")

    def _camera(self, camera: str) -> None:
        if self._ownership is not None and self._ownership.claimed_elsewhere(camera):
            raise _NotOurs
        cameras = self._target.cfg.cameras
        if camera not in cameras:
            raise ControlError(f"unknown camera {camera!r}; cameras: {sorted(cameras)}")

    def _set_enabled(self, camera: str, payload: bytes) -> None:
        self._camera(camera)
        try:
            value = _on_off.validate_python(_text(payload).upper())
        except ValidationError:
            raise ControlError("expected ON or OFF") from None
        enabled = value == "ON"
        if enabled and not self._target.cfg.cameras[camera].enabled:
            raise ControlError(
                f"camera {camera!r} has enabled: false in the config file and was not opened; "
                "only running cameras can be switched at runtime"
            )
        self._target.set_camera_enabled(camera, enabled)
        self._log.log("control: applied commands", logging.INFO, "control: camera %s %s", camera,
                      "enabled" if enabled else "disabled")
        self._enabled_states.set(self._publisher.topic(camera, "enabled", "state"), value)

    def _set_threshold(self, camera: str, label: str, payload: bytes) -> None:
        self._camera(camera)
        cfg = self._target.cfg
        if label not in cfg.labels_for(camera):
            raise ControlError(f"camera {camera!r} has no label {label!r}; its labels: {cfg.labels_for(camera)}")
        if cfg.labels[label].background:
            raise ControlError(f"label {label!r} is a background label: it is never published, so it has no threshold")
        try:
            value = _threshold.validate_python(_text(payload))
        except ValidationError:
            raise ControlError("expected a number from 0 to 1") from None
        self._target.set_threshold(camera, label, value)
        self._log.log("control: applied commands", logging.INFO, "control: camera %s label %s threshold %s",
                      camera, label, value)
        self._threshold_states.set(self._publisher.topic(camera, label, "threshold", "state"), repr(value))

    def _set_labels(self, payload: bytes) -> None:
        new_cfg = config_with_labels(self._target.cfg, payload)
        new_cfg = self._target.replace_labels(new_cfg.labels)
        log.info("control: labels replaced: %s", ", ".join(new_cfg.labels))
        self._publish_state(new_cfg)
        if self._on_labels_changed is not None:
            self._on_labels_changed(new_cfg)

    # -- echoes and errors --------------------------------------------------------

    def publish_state(self, cfg: Config) -> None:
        """Echo the enabled/threshold/labels state of ``cfg`` (after a config reload), deleting what is gone."""
        self._publish_state(cfg)

    def _publish_state(self, cfg: Config) -> None:
        t = self._publisher.topic
        self._enabled_states.replace({
            t(camera, "enabled", "state"): "ON" if self._target.camera_enabled(camera) else "OFF"
            for camera in cfg.cameras
        })
        self._threshold_states.replace({
            t(camera, label, "threshold", "state"): repr(self._target.threshold(camera, label))
            for camera in cfg.cameras
            for label in cfg.labels_for(camera)
            if not cfg.labels[label].background
        })
        self._publisher.set_retained(
            self._publisher.node_topic("labels", "state"), {name: lc.model_dump() for name, lc in cfg.labels.items()}
        )

    def _reject(self, topic: str, payload: bytes, error: str) -> None:
        # Called from the command thread and (queue full) paho's network thread: counters under a lock.
        with self._counts_lock:
            self.rejected += 1
            send = self._replies.allow("error")
            suppressed = 0
            if send:
                suppressed, self._unreported_suppressed = self._unreported_suppressed, 0
            else:
                self.replies_suppressed += 1
                self._unreported_suppressed += 1
        excerpt = bytes(payload[:PAYLOAD_EXCERPT_CHARS]).decode("utf-8", errors="replace")
        self._log.log("control: rejected commands", logging.WARNING, "control: rejected %s: %s (payload %r)",
                      topic, error, excerpt)
        if send:
            reply = {"topic": topic, "error": error, "payload": excerpt, "timestamp": round(time.time(), 3)}
            if suppressed:
                reply["replies_suppressed"] = suppressed  # errors before this one that got no reply
            self._publisher.publish(self._publisher.topic("error"), reply, qos=1)
