"""Orchestration: cameras -> batcher -> classifier -> decisions -> MQTT.

Data flows one way. Each camera has its own capture thread; one inference thread
takes batches from the shared batcher; the publisher has its own sender thread and
paho's network thread. The main thread only supervises: it waits for a stop request
(a signal handler sets an Event, nothing more) or for every file camera to end, then
shuts the stages down in order, each with a bounded wait, so exit never hangs on a
stuck camera or model call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Callable, Mapping

from streamclf.alerts import AlertPublisher
from streamclf.batching import Batcher, DropReason
from streamclf.capture import Camera, CameraState, CameraStatus, FileCamera, make_camera
from streamclf.classifier import ClipClassifier, LabelSet
from streamclf.config import CameraConfig, Config, LabelConfig
from streamclf.control import Controller
from streamclf.decisions import AlertDecider
from streamclf.entities import BatchReport, Classification, Frame
from streamclf.homeassistant import HomeAssistantDiscovery
from streamclf.gating import ChangeGate
from streamclf.publisher import MqttPublisher
from streamclf.snapshots import SnapshotWriter
from streamclf.zones import ZoneCropper

log = logging.getLogger(__name__)


class Pipeline:
    """The running daemon. ``run()`` returns the process exit code."""

    shutdown_budget_s = 4.0  # everything after a stop request must fit in this (systemd waits 5 s)
    label_swap_timeout_s = 10.0  # a runtime label change waits at most this long for the batch in flight
    drop_log_interval_s = 60.0  # drop counts are logged this often, when they changed

    def __init__(self, cfg: Config, classifier: ClipClassifier, base_dir: str | None = None):
        self.cfg = cfg
        self.classifier = classifier
        self.base_dir = base_dir
        self.stop_event = threading.Event()
        self.batcher = Batcher(
            cfg.model.batch_size, cfg.model.max_batch_wait_ms / 1000.0,
            max_frame_age_by_camera={n: c.effective_max_frame_age_s for n, c in cfg.cameras.items()},
        )
        self.publisher = MqttPublisher(cfg.mqtt)
        self.decider = AlertDecider(cfg, use_frame_time=True)  # deterministic for files; capture time for live
        self.zones = ZoneCropper(cfg.cameras)
        self.snapshots = SnapshotWriter(
            cfg.events.snapshots, lambda topic, jpeg: self.publisher.set_retained(topic, jpeg, qos=cfg.mqtt.qos), base_dir
        )
        self.alerts = AlertPublisher(self.publisher, cfg, self.snapshots)
        # The inference thread alone runs torch with every core; the rest use one (streamclf/torch_threads.py).
        classifier.reserve_model_thread()
        self.label_set: LabelSet = self._encode_labels(cfg)
        self.cameras: dict[str, Camera] = {}
        self.classified = 0
        # Change gating (off by default): unchanged frames (or zones) reuse their last scores.
        self.gate: ChangeGate | None = ChangeGate(cfg.change_gate) if cfg.change_gate.enabled else None
        self.last_progress = time.monotonic()
        self._drops_logged: tuple[dict, int] = ({}, 0)
        self._drops_logged_at = time.monotonic()
        self._inference = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self._classification_listeners: list[Callable[[Classification], None]] = [
            self._publish_detections, self._publish_top_label
        ]
        # Held while a batch is scored and decided: labels and thresholds change only between two batches.
        self._labels_lock = threading.Lock()
        self._paused_cameras: set[str] = set()
        self._top_labels: dict[str, str] = {}
        self.discovery = HomeAssistantDiscovery(cfg, self.publisher, hardware=f"{classifier.device}, {classifier.precision}")
        self.control = Controller(self, self.publisher, on_labels_changed=self.discovery.announce)
        # Service glue (streamclf/service) reads these counters and hooks in here; the pipeline
        # itself never imports it.
        self.classified_by_camera: Counter[str] = Counter()
        self.camera_reconnects: Counter[str] = Counter()
        self.batches = 0
        self.batch_started: float | None = None  # monotonic start of the model call in flight
        self.batch_listeners: list[Callable[[BatchReport], None]] = []
        self.started_hooks: list[Callable[[], None]] = []
        self.tick_hooks: list[Callable[[], None]] = []  # main thread, every 0.2 s
        self.stopping_hooks: list[Callable[[], None]] = []
        # Held for a whole batch, model call included: a config reload (streamclf/service/reload.py)
        # swaps cameras, zones and labels between batches, never in the middle of one. It takes
        # _labels_lock too, after this one, since runtime control changes labels under that alone.
        self.swap_lock = threading.Lock()
        self._stall_after_batches = _test_stall_after_batches()

    def _encode_labels(self, cfg: Config) -> LabelSet:
        return self.classifier.encode_labels({n: lc.prompts_for(n) for n, lc in cfg.labels.items()})

    # -- stages -----------------------------------------------------------------

    def _on_camera_status(self, status: CameraStatus) -> None:
        if self.stop_event.is_set() and status.state is not CameraState.STOPPED:
            return  # a camera thread winding down must not overwrite the final "stopped"
        if status.state is CameraState.OFFLINE:
            self.camera_reconnects[status.camera] += 1  # every OFFLINE report precedes a reconnect attempt
        online = status.state is CameraState.ONLINE
        self.publisher.set_retained(self.publisher.topic(status.camera, "status"), "online" if online else "offline")
        self.publisher.set_retained(self.publisher.topic(status.camera, "status", "detail"), status.detail())

    def drop_counts(self) -> dict[str, dict[str, int]]:
        """Frames dropped so far: camera -> reason -> count.

        Reasons are ``DropReason`` values: stale, queue_full, superseded, decode_error, camera_disabled.

        MQTT messages dropped because the outage queue overflowed are ``publisher.dropped_overflow``.
        """
        return self.batcher.drop_counts()

    def log_drops(self, force: bool = False) -> None:
        """Log the drop counts if they changed since the last time (always with ``force`` when any)."""
        now = (self.drop_counts(), self.publisher.dropped_overflow)
        if now == self._drops_logged and not (force and (now[0] or now[1])):
            return
        self._drops_logged, self._drops_logged_at = now, time.monotonic()
        for camera, reasons in sorted(now[0].items()):
            counts = ", ".join(f"{reason}={n}" for reason, n in sorted(reasons.items()))
            log.info("camera %s: frames dropped since start: %s", camera, counts)
        if now[1]:
            by_topic = ", ".join(f"{t}={n}" for t, n in self.publisher.dropped_by_topic.most_common(10))
            log.warning("MQTT: %d message(s) dropped since start because the outage queue was full "
                        "(mqtt.max_queued_messages=%d): %s", now[1], self.cfg.mqtt.max_queued_messages, by_topic)

    def _inference_loop(self) -> None:
        self.classifier.become_model_thread()
        while not self.stop_event.is_set():
            batch = self.batcher.next_batch(timeout=0.5)
            if not batch:
                if self._all_files_done():
                    return
                continue
            self._classify(batch)

    def _classify(self, batch: list[Frame]) -> None:
        with self.swap_lock:
            self.batch_started = started = time.monotonic()
            try:
                self._classify_batch(batch, started)
            finally:
                self.batch_started = None

    def _classify_batch(self, batch: list[Frame], started: float) -> None:
        if self._stall_after_batches is not None and self.batches >= self._stall_after_batches:
            log.warning("STREAMCLF_TEST_STALL_AFTER_BATCHES: the inference thread stalls now (test-only fault)")
            self.stop_event.wait()
            return
        self.batches += 1
        # Frames of a camera paused at runtime (counted as drops) or removed by a reload are not classified.
        batch = [batch[i] for i in self._unpaused(batch) if batch[i].camera in self.cfg.cameras]
        self.classified += len(batch)
        self.classified_by_camera.update(f.camera for f in batch)
        items = self.zones.expand(batch)  # one image per zone (or per frame), all in one model call
        if not items:
            self.last_progress = time.monotonic()
            return
        # The gate is consulted under swap_lock, which label changes also take: reused scores always
        # belong to the label set in force.
        plan = self.gate.plan([_gate_frame(item) for item in items], keys=[(i.frame.camera, i.zone) for i in items]) \
            if self.gate else None
        to_run = plan.to_run if plan else list(range(len(items)))
        embeddings = self.classifier.embed_images(
            [items[i].image for i in to_run], bgr=True,
            prepared=[items[i].frame.model_input if items[i].zone is None else None for i in to_run],
        ) if to_run else None
        with self._labels_lock:  # one consistent label set, label lists and thresholds per batch
            results: list = [None] * len(items)
            if to_run:
                subsets = [self.cfg.labels_for(items[i].frame.camera) for i in to_run]
                for i, scores in zip(to_run, self.classifier.score(embeddings, self.label_set, subsets)):
                    results[i] = scores
            if plan:
                results = self.gate.resolve(plan, results)
            done = time.monotonic()
            paused = self._paused_cameras  # a camera may have been paused while the batch was embedded
            for item, scores in zip(items, results):
                frame = item.frame
                if frame.camera in paused:
                    continue
                c = Classification(frame.camera, frame.frame_index, frame.frame_time, frame.captured_monotonic,
                                   scores, zone=item.zone, image=item.image)
                for listener in self._classification_listeners:
                    try:
                        listener(c)
                    except Exception:  # a failing sink is logged; the pipeline goes on
                        log.exception("camera %s: handling a classification failed", c.camera)
        report = BatchReport(len(batch), done - started, tuple(done - f.captured_monotonic for f in batch))
        for listener in self.batch_listeners:
            try:
                listener(report)
            except Exception:
                log.exception("batch listener failed")
        self.last_progress = time.monotonic()

    def _unpaused(self, batch: list[Frame]) -> list[int]:
        """Indexes of the frames whose camera is not paused; the others are counted as dropped."""
        paused = self._paused_cameras
        keep = []
        for i, f in enumerate(batch):
            if f.camera in paused:
                self.batcher.count_drop(f.camera, DropReason.CAMERA_DISABLED)
            else:
                keep.append(i)
        return keep

    def _publish_detections(self, c: Classification) -> None:
        """Decide (thresholds, hysteresis, events) and publish detections, states, events, snapshots."""
        self.alerts.publish(self.decider.observe(c))
        self.alerts.publish_scores(c)

    @property
    def detections_published(self) -> int:
        return self.alerts.detections_published

    def _publish_top_label(self, c: Classification) -> None:
        top = c.top_label
        if c.zone is None and top is not None and self._top_labels.get(c.camera) != top:  # on change only
            self._top_labels[c.camera] = top
            self.publisher.set_retained(self.publisher.topic(c.camera, "top_label"), top)

    # -- runtime control (streamclf/control.py calls these; see ControlTarget) ----

    def camera_enabled(self, camera: str) -> bool:
        """True if ``camera`` is enabled in the config and not paused at runtime."""
        return self.cfg.cameras[camera].enabled and camera not in self._paused_cameras

    def set_camera_enabled(self, camera: str, enabled: bool) -> None:
        """Pause or resume classification of ``camera``.

        A paused camera keeps capturing, so its status stays meaningful and resuming is immediate; its
        frames are dropped before the model and counted as ``camera_disabled`` drops.
        """
        if camera not in self.cfg.cameras:
            raise KeyError(camera)
        with self._labels_lock:  # so that no frame of a batch scored after this returns is published
            paused = set(self._paused_cameras)
            (paused.discard if enabled else paused.add)(camera)
            self._paused_cameras = paused  # swapped whole: read without the lock before embedding
            # Disabling ends the camera's open events (end message, state OFF).
            self.alerts.publish(self.decider.set_camera_enabled(camera, enabled))

    def threshold(self, camera: str, label: str) -> float:
        """The threshold (0..1) in force for ``label`` on ``camera``."""
        return self.decider.threshold(camera, label)

    def set_threshold(self, camera: str, label: str, threshold: float) -> None:
        """Set ``label``'s threshold (0..1) on ``camera``, from the next batch on."""
        with self._labels_lock:
            self.decider.set_threshold(camera, label, threshold)

    def replace_labels(self, labels: Mapping[str, LabelConfig]) -> Config:
        """Switch to a new label set between two batches, without dropping frames; returns the new config.

        Raises ValueError when a camera's label list would become invalid. The text embeddings are
        computed before the switch, while batches go on with the old labels.
        """
        new_cfg = self.cfg.model_copy(update={"labels": dict(labels)})
        problems = new_cfg.cross_check_problems()
        if problems:
            raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        label_set = self._encode_labels(new_cfg)
        # swap_lock too: no batch is between its change-gate plan and its scoring while labels change.
        if not self.swap_lock.acquire(timeout=self.label_swap_timeout_s):
            raise ValueError(f"a batch has been running for more than {self.label_swap_timeout_s:g} s; labels not changed")
        try:
            with self._labels_lock:
                self.cfg = new_cfg
                self.label_set = label_set
                if self.gate:
                    self.gate.forget()  # remembered scores are over the old labels
                # Removed labels end their events and turn OFF; new ones start OFF.
                self.alerts.publish(self.decider.update_labels(new_cfg.labels))
        finally:
            self.swap_lock.release()
        return new_cfg

    @property
    def published_by(self) -> Counter[tuple[str, str, str]]:
        """Messages published so far by (kind: detection | event, camera, label)."""
        return self.alerts.published_by

    @property
    def skipped_unchanged(self) -> int:
        """Frames that skipped the model because they matched their camera's last classified frame."""
        return self.gate.total_skipped if self.gate else 0

    def _all_files_done(self) -> bool:
        cams = list(self.cameras.values())
        return bool(cams) and all(isinstance(c, FileCamera) and c.finished for c in cams) and len(self.batcher) == 0

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        # Subscriptions and retained state first, so that they are all in place on the first connect.
        self.discovery.start()
        self.control.start()
        self.publisher.start()
        self.snapshots.start()
        # Known OFF before the first frame: a retained ON from an earlier run would be stale.
        self.alerts.publish_states(self.decider.initial_states())
        for name, cam_cfg in self.cfg.cameras.items():
            state = CameraState.STARTING if cam_cfg.enabled else CameraState.DISABLED
            self._on_camera_status(CameraStatus(name, state, state.value))
            if not cam_cfg.enabled:
                log.info("camera %s: disabled in the config", name)
                continue
            self.cameras[name] = self._make_camera(name, cam_cfg)
        for cam in self.cameras.values():
            cam.start()
        self._inference.start()
        log.info("started %d camera(s): %s", len(self.cameras), ", ".join(self.cameras) or "none")
        _call_hooks(self.started_hooks)

    def _make_camera(self, name: str, cam_cfg: CameraConfig) -> Camera:
        holder: list[Camera] = []

        def on_status(status: CameraStatus) -> None:
            # A camera replaced by a reload may still report while it winds down; only the current one counts.
            if holder and self.cameras.get(name) is holder[0]:
                self._on_camera_status(status)

        self.batcher.set_max_frame_age(name, cam_cfg.effective_max_frame_age_s)
        # A zoned camera's frames are cut into zones before the model; only whole frames are prepared ahead.
        # Decided when the camera starts: a reload that changes only zones keeps the camera running, and
        # its frames are still scored right (model_input is used for whole frames only), at worst resized
        # once more on the inference thread or once for nothing on the idle capture thread.
        prepare = None if cam_cfg.zones else self.classifier.prepare_image
        cam = make_camera(name, cam_cfg, self.batcher, on_status, self.base_dir, prepare)
        holder.append(cam)
        return cam

    def add_camera(self, name: str, cam_cfg: CameraConfig) -> None:
        """Open and start camera ``name`` while running (a reload added or changed it)."""
        state = CameraState.STARTING if cam_cfg.enabled else CameraState.DISABLED
        self._on_camera_status(CameraStatus(name, state, state.value))
        if not cam_cfg.enabled:
            log.info("camera %s: disabled in the config", name, extra={"camera": name})
            return
        cam = self._make_camera(name, cam_cfg)
        # Replace, never mutate: other threads (metrics, health) iterate over the dict.
        self.cameras = {**self.cameras, name: cam}
        cam.start()
        log.info("camera %s: started", name, extra={"camera": name})

    def remove_camera(self, name: str, join_timeout_s: float = 2.0) -> None:
        """Stop camera ``name`` (waiting up to ``join_timeout_s`` seconds) and mark it offline."""
        cam = self.cameras.get(name)
        if cam is not None:
            self.cameras = {k: v for k, v in self.cameras.items() if k != name}
            cam.stop()
            cam.join(join_timeout_s)
            log.info("camera %s: stopped", name, extra={"camera": name})
        self._on_camera_status(CameraStatus(name, CameraState.STOPPED, "removed or restarted by a reload"))

    def run(self) -> int:
        """Start, wait for a stop request or for every file camera to end, shut down; exit code."""
        self.start()
        while not self.stop_event.wait(0.2):
            if not self._inference.is_alive():
                break
            if self._all_files_done():
                self.batcher.close()
            if time.monotonic() - self._drops_logged_at >= self.drop_log_interval_s:
                self.log_drops()
                self._drops_logged_at = time.monotonic()
            _call_hooks(self.tick_hooks)
        ended_by_files = not self.stop_event.is_set()
        _call_hooks(self.stopping_hooks)
        self.shutdown()
        log.info(
            "%s: %d frames classified (%d reused unchanged scores), %d detections",
            "every camera has ended" if ended_by_files else "stopped", self.classified, self.skipped_unchanged,
            self.detections_published,
        )
        return 0

    @property
    def inference_alive(self) -> bool:
        return self._inference.is_alive()

    def shutdown(self) -> None:
        deadline = time.monotonic() + self.shutdown_budget_s
        self.stop_event.set()
        self.control.stop(timeout_s=0.5)
        for cam in self.cameras.values():
            cam.stop()
        self.batcher.close()
        # The batch in flight may finish; anything still waiting is abandoned.
        self._inference.join(max(0.0, min(1.5, deadline - time.monotonic())))
        abandoned = self.batcher.discard_pending()
        if abandoned:
            log.info("abandoned %d pending frame(s) at shutdown", abandoned)
        # Every start gets its end: open events end now and their labels turn OFF.
        self.alerts.publish(self.decider.finish())
        self.snapshots.stop(timeout_s=max(0.0, min(0.5, deadline - time.monotonic() - 1.0)))
        for name in self.cfg.cameras:
            cam = self.cameras.get(name)
            last = cam.last_status if cam else None
            self._on_camera_status(CameraStatus(
                name, CameraState.STOPPED, "streamclf stopped",
                last.reconnect_attempts if last else 0, last.last_error if last else "", cam.reconnects if cam else 0,
            ))
        self.log_drops(force=True)
        self.publisher.stop(flush_timeout_s=max(0.5, deadline - time.monotonic() - 0.5))
        for cam in self.cameras.values():
            cam.join(0.05)


def _call_hooks(hooks: list[Callable[[], None]]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception:  # service glue must never take the pipeline down
            log.exception("pipeline hook %s failed", getattr(hook, "__qualname__", hook))


def _test_stall_after_batches() -> int | None:
    """TEST-ONLY fault: ``STREAMCLF_TEST_STALL_AFTER_BATCHES=N`` blocks the inference thread after N
    batches, as a hung model call would, so tests can see the watchdog pings stop. Never set it in production."""
    value = os.environ.get("STREAMCLF_TEST_STALL_AFTER_BATCHES")
    return int(value) if value else None


def _gate_frame(item) -> Frame:
    """The change gate compares what the model would see: the zone's crop, or the whole frame."""
    f = item.frame
    if item.zone is None:
        return f
    return Frame(f.camera, item.image, f.frame_index, f.frame_time, f.captured_monotonic)
