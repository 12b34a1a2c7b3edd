"""The pipeline's figures at one moment, as frozen values: all that service glue, metrics, health
and ``<prefix>/stats`` know of a running pipeline.

``Pipeline.status()`` builds a ``PipelineStatus`` from the snapshots of the stages that keep
the counts (batch classifier, cameras, batcher, alerts, publisher), each taken under that
stage's own lock; nothing here counts anything itself. Counts are since start; times are
monotonic seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from streamclf.backend import BackendStatus
from streamclf.camera_set import RunningCamera
from streamclf.config import Config
from streamclf.nodes import CameraConflict
from streamclf.workers import WorkerFailure


@dataclass(frozen=True)
class InferenceStatus:
    """The inference thread and the batcher: what ``service/health.py`` judges progress from."""

    alive: bool  # the inference thread is running
    batch_started: float | None  # start of the model call in flight (monotonic s); None between batches
    last_progress: float  # end of the last batch (monotonic s)
    queue_depth: int  # frames waiting in the batcher
    batches: int = 0
    frames_classified: int = 0
    skipped_unchanged: int = 0  # images that reused their last scores (change gate)


@dataclass(frozen=True)
class CameraFigures:
    """One camera, running or not. ``state`` is a ``CameraState`` value, or ``disabled`` / ``removed``."""

    state: str
    running: bool
    frames_captured: int
    frames_sampled: int
    frames_classified: int
    frames_dropped: Mapping[str, int]  # DropReason value -> frames, sorted by reason
    reconnects: int


@dataclass(frozen=True)
class MqttStatus:
    connected: bool
    queued_messages: int
    dropped_messages: int  # oldest messages dropped because the outage queue was full
    published_messages: int
    connects: int
    last_error: str
    invalid_messages: int = 0  # messages paho refused (a topic or payload over MQTT's limits), dropped
    connect_failures: int = 0  # connection attempts that failed before the broker answered


@dataclass(frozen=True)
class PipelineStatus:
    """Everything the service layer reports about a running pipeline."""

    config: Config  # the config in force
    inference: InferenceStatus
    cameras: Mapping[str, CameraFigures]  # configured cameras in config order, then others running or with counts
    published: Mapping[tuple[str, str, str], int]  # (detection | event, camera, label) -> messages
    mqtt: MqttStatus
    failed_workers: tuple[WorkerFailure, ...] = ()  # threads that died: the process is unhealthy
    node: str | None = None  # mqtt.node_id: one of several nodes sharing the prefix
    # Cameras this node claims but another node holds (an older claim): classified, not published.
    conflicts: tuple[CameraConflict, ...] = ()
    backend: BackendStatus = BackendStatus("local", "", True, "")  # where the model runs, and whether it answers

    @property
    def cameras_running(self) -> int:
        return sum(1 for c in self.cameras.values() if c.running)

    @property
    def cameras_online(self) -> int:
        return sum(1 for c in self.cameras.values() if c.running and c.state == "online")


def camera_figures(cfg: Config, running: Mapping[str, RunningCamera], drops: Mapping[str, Mapping[str, int]],
                   classified: Mapping[str, int], reconnects: Mapping[str, int]) -> dict[str, CameraFigures]:
    """Per-camera figures: configured cameras first (config order), then any other camera running or with counts."""
    names = list(cfg.cameras) + sorted((set(drops) | set(classified) | set(running)) - set(cfg.cameras))
    out = {}
    for name in names:
        cam = running.get(name)
        cam_cfg = cfg.cameras.get(name)
        if cam is not None:
            state = cam.state.value
        elif cam_cfg is not None and not cam_cfg.enabled:
            state = "disabled"
        else:
            state = "removed"
        out[name] = CameraFigures(
            state=state,
            running=cam is not None,
            frames_captured=cam.frames_read if cam else 0,
            frames_sampled=cam.frames_sampled if cam else 0,
            frames_classified=classified.get(name, 0),
            frames_dropped=dict(sorted(drops.get(name, {}).items())),
            # A running camera counts its own reconnects (stalls included); for others, the status reports do.
            reconnects=cam.reconnects if cam else reconnects.get(name, 0),
        )
    return out
