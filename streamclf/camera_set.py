"""The running cameras: open, start, add and remove them (reload), stop them, and publish their status.

Each camera runs its own capture thread and reports state changes through a callback; this
module turns those into the retained ``<prefix>/<camera>/status`` (``online``/``offline``)
and ``status/detail`` (JSON) topics, and counts reconnects for cameras that are gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from streamclf.batching import Batcher
from streamclf.capture import Camera, CameraState, CameraStatus, FileCamera, make_camera
from streamclf.config import CameraConfig
from streamclf.mqtt_client import MqttClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningCamera:
    """A running camera's figures at one moment; counts since it started."""

    state: CameraState
    frames_read: int  # frames read from the source (decoded or grabbed)
    frames_sampled: int  # frames sampled at the camera's fps for classification
    reconnects: int  # failed attempts and stalls


class CameraSet:
    """The registry of running cameras; add/remove are called from the main thread only."""

    def __init__(self, publisher: MqttClient, batcher: Batcher, prepare_image: Callable | None,
                 base_dir: str | None, stopping: threading.Event,
                 on_status: Callable[[CameraStatus], None] | None = None):
        self._publisher = publisher
        self._on_status = on_status  # told of every status published (the pipeline's observers)
        self._batcher = batcher
        self._prepare_image = prepare_image
        self._base_dir = base_dir
        self._stopping = stopping
        # Replaced whole, never changed: other threads (status) read it without a lock.
        self._cameras: dict[str, Camera] = {}
        self._reconnects_lock = threading.Lock()
        self._reconnects: Counter[str] = Counter()  # from status reports: outlives a removed camera

    # -- starting and stopping ----------------------------------------------------------

    def start(self, cameras: Mapping[str, CameraConfig]) -> None:
        """Open every configured camera, then start them all; disabled ones only get their status."""
        opened = {}
        for name, cam_cfg in cameras.items():
            cam = self._open(name, cam_cfg)
            if cam is not None:
                opened[name] = cam
        self._cameras = opened
        for cam in opened.values():
            cam.start()
        log.info("started %d camera(s): %s", len(opened), ", ".join(opened) or "none")

    def add(self, name: str, cam_cfg: CameraConfig) -> None:
        """Open and start camera ``name`` while running (a reload added or changed it)."""
        cam = self._open(name, cam_cfg)
        if cam is None:
            return
        self._cameras = {**self._cameras, name: cam}
        cam.start()
        log.info("camera %s: started", name, extra={"camera": name})

    def remove(self, name: str, join_timeout_s: float = 2.0) -> None:
        """Stop camera ``name`` (waiting up to ``join_timeout_s`` seconds) and mark it stopped."""
        cam = self._cameras.get(name)
        if cam is not None:
            self._cameras = {k: v for k, v in self._cameras.items() if k != name}
            cam.stop()
            cam.join(join_timeout_s)
            log.info("camera %s: stopped", name, extra={"camera": name})
        self._publish_status(CameraStatus(name, CameraState.STOPPED, "removed or restarted by a reload"))

    def follow(self, old: Mapping[str, CameraConfig], new: Mapping[str, CameraConfig], restart: Sequence[str]) -> None:
        """After a config change: stop cameras gone from ``new``, restart ``restart`` (their capture
        settings changed), start cameras new in it."""
        removed = [n for n in old if n not in new]
        added = [n for n in new if n not in old]
        for name in removed + list(restart):
            self.remove(name)
        for name in list(restart) + added:
            self.add(name, new[name])

    def stop(self) -> None:
        """Ask every capture thread to stop; does not wait (see ``join``)."""
        for cam in self._cameras.values():
            cam.stop()

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for each capture thread; a stuck one is abandoned."""
        for cam in self._cameras.values():
            cam.join(timeout_s)

    def publish_stopped(self, names: list[str]) -> None:
        """The final status of cameras ``names`` at shutdown, keeping each one's reconnect figures."""
        for name in names:
            cam = self._cameras.get(name)
            last = cam.last_status if cam else None
            self._publish_status(CameraStatus(
                name, CameraState.STOPPED, "streamclf stopped",
                last.reconnect_attempts if last else 0, last.last_error if last else "", cam.reconnects if cam else 0,
            ))

    # -- reading ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the running cameras, in start order."""
        return list(self._cameras)

    def all_files_done(self) -> bool:
        """True when every running camera is a file camera that has ended (and at least one ran)."""
        cams = list(self._cameras.values())
        return bool(cams) and all(isinstance(c, FileCamera) and c.finished for c in cams)

    def running(self) -> dict[str, RunningCamera]:
        """Figures of each running camera, in start order."""
        return {name: RunningCamera(cam.state, cam.frames_read, cam.frames_sampled, cam.reconnects)
                for name, cam in self._cameras.items()}

    def offline_silences(self) -> dict[str, float]:
        """Offline cameras that have had frames, none of them still waiting for the model: name -> seconds
        since their newest frame.

        Files are left out: their frames run ahead of the model, so the time since the last one was
        read says nothing about what is still to be classified.
        """
        now = time.monotonic()
        waiting = self._batcher.pending_cameras()
        return {name: now - cam.last_frame_monotonic for name, cam in self._cameras.items()
                if cam.state is CameraState.OFFLINE and cam.last_frame_monotonic is not None
                and name not in waiting}

    def reconnect_counts(self) -> dict[str, int]:
        """Reconnects seen in status reports, per camera, removed cameras included."""
        with self._reconnects_lock:
            return dict(self._reconnects)

    # -- internals ----------------------------------------------------------------------

    def _open(self, name: str, cam_cfg: CameraConfig) -> Camera | None:
        """Publish the camera's starting (or disabled) status and make it; None when disabled."""
        state = CameraState.STARTING if cam_cfg.enabled else CameraState.DISABLED
        self._publish_status(CameraStatus(name, state, state.value))
        if not cam_cfg.enabled:
            log.info("camera %s: disabled in the config", name, extra={"camera": name})
            return None
        holder: list[Camera] = []

        def on_status(status: CameraStatus) -> None:
            # A camera replaced by a reload may still report while it winds down; only the current one counts.
            if holder and self._cameras.get(name) is holder[0]:
                self._publish_status(status)

        self._batcher.set_max_frame_age(name, cam_cfg.effective_max_frame_age_s)
        # A zoned camera's frames are cut into zones before the model; only whole frames are prepared ahead.
        # Decided when the camera starts: a reload that changes only zones keeps the camera running, and
        # its frames are still scored right (model_input is used for whole frames only), at worst resized
        # once more on the inference thread or once for nothing on the idle capture thread.
        prepare = None if cam_cfg.zones else self._prepare_image
        cam = make_camera(name, cam_cfg, self._batcher, on_status, self._base_dir, prepare)
        holder.append(cam)
        return cam

    def _publish_status(self, status: CameraStatus) -> None:
        if self._stopping.is_set() and status.state is not CameraState.STOPPED:
            return  # a camera thread winding down must not overwrite the final "stopped"
        if status.state is CameraState.OFFLINE:
            with self._reconnects_lock:
                self._reconnects[status.camera] += 1  # every OFFLINE report precedes a reconnect attempt
        if self._on_status is not None:
            self._on_status(status)
        online = status.state is CameraState.ONLINE
        self._publisher.set_retained(self._publisher.topic(status.camera, "status"), "online" if online else "offline")
        self._publisher.set_retained(self._publisher.topic(status.camera, "status", "detail"), status.detail())
