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
import threading
import time
from typing import Callable

from streamclf.batching import Batcher
from streamclf.capture import Camera, CameraState, CameraStatus, FileCamera, make_camera
from streamclf.classifier import ClipClassifier, LabelSet
from streamclf.config import Config
from streamclf.decisions import ThresholdDecider
from streamclf.entities import Classification, Frame
from streamclf.gating import ChangeGate
from streamclf.publisher import MqttPublisher

log = logging.getLogger(__name__)


class Pipeline:
    """The running daemon. ``run()`` returns the process exit code."""

    shutdown_budget_s = 4.0  # everything after a stop request must fit in this (systemd waits 5 s)

    def __init__(self, cfg: Config, classifier: ClipClassifier, base_dir: str | None = None):
        self.cfg = cfg
        self.classifier = classifier
        self.base_dir = base_dir
        self.stop_event = threading.Event()
        self.batcher = Batcher(cfg.model.batch_size, cfg.model.max_batch_wait_ms / 1000.0)
        self.publisher = MqttPublisher(cfg.mqtt)
        self.decider = ThresholdDecider(cfg.labels)
        self.label_set: LabelSet = self._encode_labels(cfg)
        self.cameras: dict[str, Camera] = {}
        self.classified = 0
        # Change gating (off by default): unchanged frames reuse their camera's last scores.
        self.gate: ChangeGate | None = ChangeGate(cfg.change_gate) if cfg.change_gate.enabled else None
        self.detections_published = 0
        self.last_progress = time.monotonic()
        self._inference = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self._classification_listeners: list[Callable[[Classification], None]] = [self._publish_detections]

    def _encode_labels(self, cfg: Config) -> LabelSet:
        return self.classifier.encode_labels({n: lc.prompts_for(n) for n, lc in cfg.labels.items()})

    # -- stages -----------------------------------------------------------------

    def _on_camera_status(self, status: CameraStatus) -> None:
        online = status.state is CameraState.ONLINE
        self.publisher.set_retained(self.publisher.topic(status.camera, "status"), "online" if online else "offline")

    def _inference_loop(self) -> None:
        while not self.stop_event.is_set():
            batch = self.batcher.next_batch(timeout=0.5)
            if not batch:
                if self._all_files_done():
                    return
                continue
            self._classify(batch)

    def _classify(self, batch: list[Frame]) -> None:
        plan = self.gate.plan(batch) if self.gate else None
        to_run = plan.to_run if plan else list(range(len(batch)))
        results: list = [None] * len(batch)
        if to_run:
            embeddings = self.classifier.embed_images([batch[i].image for i in to_run])
            label_set = self.label_set  # one consistent label set per batch, even if it is swapped meanwhile
            subsets = [self.cfg.labels_for(batch[i].camera) for i in to_run]
            for i, scores in zip(to_run, self.classifier.score(embeddings, label_set, subsets)):
                results[i] = scores
        if plan:
            results = self.gate.resolve(plan, results)
        for frame, scores in zip(batch, results):
            c = Classification(frame.camera, frame.frame_index, frame.frame_time, frame.captured_monotonic, scores)
            self.classified += 1
            for listener in self._classification_listeners:
                try:
                    listener(c)
                except Exception:  # a failing sink is logged; the pipeline goes on
                    log.exception("camera %s: handling a classification failed", c.camera)
        self.last_progress = time.monotonic()

    def _publish_detections(self, c: Classification) -> None:
        now = time.time()
        for d in self.decider.detections(c):
            self.publisher.publish(self.publisher.topic(d.camera, "detection"), d.payload(now), qos=self.cfg.mqtt.qos)
            self.detections_published += 1

    @property
    def skipped_unchanged(self) -> int:
        """Frames that skipped the model because they matched their camera's last classified frame."""
        return self.gate.total_skipped if self.gate else 0

    def _all_files_done(self) -> bool:
        cams = list(self.cameras.values())
        return bool(cams) and all(isinstance(c, FileCamera) and c.finished for c in cams) and len(self.batcher) == 0

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self.publisher.start()
        for name, cam_cfg in self.cfg.cameras.items():
            self.publisher.set_retained(self.publisher.topic(name, "status"), "offline")
            if not cam_cfg.enabled:
                log.info("camera %s: disabled in the config", name)
                continue
            self.cameras[name] = make_camera(name, cam_cfg, self.batcher, self._on_camera_status, self.base_dir)
        for cam in self.cameras.values():
            cam.start()
        self._inference.start()
        log.info("started %d camera(s): %s", len(self.cameras), ", ".join(self.cameras) or "none")

    def run(self) -> int:
        """Start, wait for a stop request or for every file camera to end, shut down; exit code."""
        self.start()
        while not self.stop_event.wait(0.2):
            if not self._inference.is_alive():
                break
            if self._all_files_done():
                self.batcher.close()
        ended_by_files = not self.stop_event.is_set()
        self.shutdown()
        if ended_by_files:
            log.info(
                "every camera has ended: %d frames classified (%d reused unchanged scores), %d detections",
                self.classified, self.skipped_unchanged, self.detections_published,
            )
        return 0

    def shutdown(self) -> None:
        deadline = time.monotonic() + self.shutdown_budget_s
        self.stop_event.set()
        for cam in self.cameras.values():
            cam.stop()
        self.batcher.close()
        # The batch in flight may finish; anything still waiting is abandoned.
        self._inference.join(max(0.0, min(1.5, deadline - time.monotonic())))
        abandoned = self.batcher.discard_pending()
        if abandoned:
            log.info("abandoned %d pending frame(s) at shutdown", abandoned)
        for name in self.cfg.cameras:
            self.publisher.set_retained(self.publisher.topic(name, "status"), "offline")
        self.publisher.stop(flush_timeout_s=max(0.5, deadline - time.monotonic() - 0.5))
        for cam in self.cameras.values():
            cam.join(0.05)
