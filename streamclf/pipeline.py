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

from streamclf.alerts import AlertPublisher
from streamclf.batching import Batcher
from streamclf.capture import Camera, CameraState, CameraStatus, FileCamera, make_camera
from streamclf.classifier import ClipClassifier, LabelSet
from streamclf.config import Config
from streamclf.decisions import AlertDecider
from streamclf.entities import Classification, Frame
from streamclf.publisher import MqttPublisher
from streamclf.snapshots import SnapshotWriter
from streamclf.zones import ZoneCropper

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
        self.decider = AlertDecider(cfg)
        self.zones = ZoneCropper(cfg.cameras)
        self.snapshots = SnapshotWriter(
            cfg.events.snapshots, lambda topic, jpeg: self.publisher.set_retained(topic, jpeg, qos=cfg.mqtt.qos), base_dir
        )
        self.alerts = AlertPublisher(self.publisher, cfg, self.snapshots)
        self.label_set: LabelSet = self._encode_labels(cfg)
        self.cameras: dict[str, Camera] = {}
        self.classified = 0
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
        items = self.zones.expand(batch)  # one image per zone (or per frame), all in one model call
        self.classified += len(batch)
        if not items:
            self.last_progress = time.monotonic()
            return
        embeddings = self.classifier.embed_images([item.image for item in items])
        label_set = self.label_set  # one consistent label set per batch, even if it is swapped meanwhile
        subsets = [self.cfg.labels_for(item.frame.camera) for item in items]
        for item, scores in zip(items, self.classifier.score(embeddings, label_set, subsets)):
            frame = item.frame
            c = Classification(frame.camera, frame.frame_index, frame.frame_time, frame.captured_monotonic, scores,
                               zone=item.zone, image=item.image)
            for listener in self._classification_listeners:
                try:
                    listener(c)
                except Exception:  # a failing sink is logged; the pipeline goes on
                    log.exception("camera %s: handling a classification failed", c.camera)
        self.last_progress = time.monotonic()

    def _publish_detections(self, c: Classification) -> None:
        """Decide (thresholds, hysteresis, events) and publish detections, states, events, snapshots."""
        self.alerts.publish(self.decider.observe(c))

    @property
    def detections_published(self) -> int:
        return self.alerts.detections_published

    def _all_files_done(self) -> bool:
        cams = list(self.cameras.values())
        return bool(cams) and all(isinstance(c, FileCamera) and c.finished for c in cams) and len(self.batcher) == 0

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self.publisher.start()
        self.snapshots.start()
        # Known OFF before the first frame: a retained ON from an earlier run would be stale.
        self.alerts.publish_states(self.decider.initial_states())
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
            log.info("every camera has ended: %d frames classified, %d detections", self.classified, self.detections_published)
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
        # Every start gets its end: open events end now and their labels turn OFF.
        self.alerts.publish(self.decider.finish())
        self.snapshots.stop(timeout_s=max(0.0, min(0.5, deadline - time.monotonic() - 1.0)))
        for name in self.cfg.cameras:
            self.publisher.set_retained(self.publisher.topic(name, "status"), "offline")
        self.publisher.stop(flush_timeout_s=max(0.5, deadline - time.monotonic() - 0.5))
        for cam in self.cameras.values():
            cam.join(0.05)
