"""Orchestration: cameras -> batcher -> classifier -> decisions -> MQTT.

Data flows one way. Each camera has its own capture thread (``camera_set.py``); one inference
thread takes batches from the shared batcher and classifies them (``batch_classifier.py``) with
the state ``state.py`` owns; the publisher has its own sender thread and paho's network
thread. The main thread only supervises: it waits for a stop request (a signal handler sets
an Event, nothing more) or for every file camera to end, then shuts the stages down in order,
each with a bounded wait, so exit never hangs on a stuck camera or model call.

``Pipeline`` wires the stages, runs and stops them, and is the one door in from outside:
runtime control (``ControlTarget``), SIGHUP reload (``apply``), observers (``attach``) and
a frozen ``status()``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Mapping, Sequence

from streamclf.alerts import AlertPublisher
from streamclf.backend import Classifier, InferenceUnavailable
from streamclf.batch_classifier import BatchClassifier
from streamclf.batching import Batcher
from streamclf.camera_set import CameraSet
from streamclf.config import Config, LabelConfig, example_problems
from streamclf.control import Controller
from streamclf.decisions import Decider
from streamclf.drop_log import DropLog
from streamclf.gating import ChangeGate
from streamclf.homeassistant import HomeAssistantDiscovery
from streamclf.mqtt_client import MqttClient
from streamclf.nodes import NodeOwnership
from streamclf.observer import ObserverGroup, PipelineObserver
from streamclf.scoring import LabelSet
from streamclf.sinks import DecisionSink, TopLabelSink
from streamclf.snapshots import SnapshotWriter
from streamclf.state import BatchState, PipelineState, SwapTimeout
from streamclf.status import InferenceStatus, MqttStatus, PipelineStatus, camera_figures
from streamclf.workers import Workers
from streamclf.zones import ZoneCropper

log = logging.getLogger(__name__)

EXIT_WORKER_FAILED = 3  # the process exit code when a worker thread died


def label_set_for(classifier: Classifier, cfg: Config, base_dir: str | None) -> LabelSet:
    """The label embeddings every batch of ``cfg`` scores against: prompts, and example images under
    ``base_dir`` (the config file's directory). ``streamclf evaluate`` uses it too, so the two never
    drift apart. Raises ValueError naming an example image that cannot be read."""
    return classifier.encode_labels(cfg.label_prompts(), cfg.label_examples(base_dir or "."))


class Pipeline:
    """The running daemon. ``run()`` returns the process exit code."""

    shutdown_budget_s = 4.0  # everything after a stop request must fit in this (systemd waits 5 s)
    swap_timeout_s = 10.0  # a config or label change waits at most this long for the batch in flight
    tick_s = 0.2  # the supervising loop's period, seconds

    def __init__(self, cfg: Config, classifier: Classifier, base_dir: str | None = None):
        self.stop_event = threading.Event()  # set it (e.g. from a signal handler) to stop ``run``
        self.classifier = classifier
        self.batcher = Batcher(
            cfg.model.batch_size, cfg.model.max_batch_wait_ms / 1000.0,
            max_frame_age_by_camera={n: c.effective_max_frame_age_s for n, c in cfg.cameras.items()},
            max_pending_bytes=cfg.model.max_queued_frames_mib * 1024 * 1024,
        )
        # Every long-lived thread runs guarded: one that dies is logged and makes the process unhealthy.
        self.workers = Workers()
        self.publisher = MqttClient(cfg.mqtt, self.workers)
        # With a node id, other daemons share the prefix: this decides which cameras we publish for.
        self._ownership = (NodeOwnership(self.publisher, cfg.mqtt.node_id, cfg.cameras)
                           if cfg.mqtt.node_id else None)
        self._base_dir = base_dir
        self._decider = Decider(cfg, use_frame_time=True)  # deterministic for files; capture time for live
        self._observers = ObserverGroup()
        self._alerts = AlertPublisher(self.publisher, cfg, self._snapshot_writer(cfg), self._observers.on_decisions)
        # The inference thread alone runs torch with every core; the rest use one (streamclf/model/torch_threads.py).
        classifier.reserve_model_thread()
        # Change gating (off by default): unchanged frames (or zones) reuse their last scores.
        gate = ChangeGate(cfg.change_gate) if cfg.change_gate.enabled else None
        initial = BatchState(cfg, self._initial_labels(cfg), ZoneCropper(cfg.cameras))
        self._state = PipelineState(initial, self._decider, self._alerts, gate)
        self._batches = BatchClassifier(classifier, self._state, self.batcher, gate,
                                        [DecisionSink(self._decider, self._alerts), TopLabelSink(self.publisher)],
                                        self._observers)
        self._cameras = CameraSet(self.publisher, self.batcher, classifier.prepare_image, base_dir, self.stop_event,
                                  self._observers.on_camera_status)
        self._drop_log = DropLog(self.batcher, self.publisher, lambda: self.cfg.mqtt.max_queued_messages)
        hardware = f"{classifier.device}, {classifier.precision}"
        self._discovery = HomeAssistantDiscovery(cfg, self.publisher, hardware=hardware, ownership=self._ownership)
        self._control = Controller(self, self.publisher, on_labels_changed=self._discovery.announce,
                                   workers=self.workers, ownership=self._ownership)
        self._inference = self.workers.thread(self._inference_loop, "inference")

    def _encode_labels(self, cfg: Config) -> LabelSet:
        return label_set_for(self.classifier, cfg, self._base_dir)

    def _initial_labels(self, cfg: Config) -> LabelSet | None:
        """The labels at start; None when a remote model is away (``fill_labels`` encodes them once it answers)."""
        try:
            return self._encode_labels(cfg)
        except InferenceUnavailable as exc:
            log.warning("labels not encoded yet (%s): frames are dropped until the model's server answers", exc)
            return None

    def fill_labels(self) -> None:
        """Encode the labels a start without the model's server could not; on the inference thread, between batches."""
        state = self._state.current
        if state.label_set is not None:
            return
        try:
            label_set = self._encode_labels(state.cfg)
        except InferenceUnavailable:
            return  # the batch drops its frames; the client keeps the backoff and logs the cause
        except ValueError as exc:  # an example image that has become unreadable
            log.error("labels not encoded: %s", exc)
            return
        if self._state.fill_labels(state.cfg, label_set):
            log.info("labels encoded: %d label(s); classifying", len(label_set.names))

    def _snapshot_writer(self, cfg: Config) -> SnapshotWriter:
        # The qos is read when a snapshot is sent, so a reload that changes it applies.
        return SnapshotWriter(
            cfg.events.snapshots,
            lambda topic, jpeg: self.publisher.set_retained(topic, jpeg, qos=self.cfg.mqtt.qos),
            self._base_dir,
            workers=self.workers,
        )

    # -- the outside: observers, status, config ------------------------------------------

    def attach(self, observer: PipelineObserver) -> None:
        """Tell ``observer`` about starts, ticks, batches, classifications, decisions, camera states and
        the stop (see ``streamclf/observer.py``); may be called while running."""
        self._observers.attach(observer)

    @property
    def cfg(self) -> Config:
        """The config in force (changed by ``apply`` and runtime ``labels/set``)."""
        return self._state.current.cfg

    def status(self) -> PipelineStatus:
        """Every figure at this moment, frozen. Each stage's counts are read under that stage's own
        lock; this never waits for a model call, so health checks answer during a hung one."""
        counts = self._batches.counters()
        cfg = self.cfg
        inference = InferenceStatus(self._inference.is_alive(), counts.batch_started, counts.last_progress,
                                    len(self.batcher), counts.batches, counts.frames_classified,
                                    counts.skipped_unchanged)
        cameras = camera_figures(cfg, self._cameras.running(), self.batcher.drop_counts(),
                                 counts.frames_classified_by_camera, self._cameras.reconnect_counts())
        pub = self.publisher
        mqtt = MqttStatus(pub.connected, pub.queued, pub.dropped_overflow, pub.published, pub.connects, pub.last_error,
                          pub.invalid_messages, pub.connect_failures)
        conflicts = self._ownership.holdings.conflicts if self._ownership is not None else ()
        return PipelineStatus(cfg, inference, cameras, self._alerts.published_counts(), mqtt, self.workers.failures(),
                              cfg.mqtt.node_id, conflicts, self.classifier.backend_status())

    def drop_counts(self) -> dict[str, dict[str, int]]:
        """Frames dropped so far: camera -> ``DropReason`` value -> frames. MQTT messages lost to a
        full outage queue are ``status().mqtt.dropped_messages``."""
        return self.batcher.drop_counts()

    def apply(self, new: Config, restart_cameras: Sequence[str] = (), swap_timeout_s: float | None = None) -> Config:
        """Switch to ``new`` while running; returns it. SIGHUP reload and runtime ``labels/set`` both come here.

        Labels are re-encoded (when their prompts or examples changed, and always when they have
        examples: the pictures may have changed on disk) and a new snapshot writer made before
        the swap, while batches go on with the old state; the swap itself happens between two
        batches (``PipelineState.apply``). Then cameras removed from the config stop, cameras new to
        it start, and ``restart_cameras`` (whose capture settings changed) restart. Raises
        SwapTimeout, with nothing changed, when the batch in flight runs longer than
        ``swap_timeout_s`` seconds (default ``Pipeline.swap_timeout_s``), and ValueError, with
        nothing changed, when an example image cannot be read.
        """
        old = self.cfg
        reencode = (list(new.label_prompts().items()) != list(old.label_prompts().items())
                    or any(lc.examples for lc in new.labels.values())
                    or any(lc.examples for lc in old.labels.values()))
        # Labels still missing (a remote model away since the start) are filled by the inference thread.
        reencode = reencode and self._state.current.label_set is not None
        label_set = self._encode_labels(new) if reencode else None
        snapshots = self._snapshot_writer(new) if new.events.snapshots != old.events.snapshots else None
        timeout_s = self.swap_timeout_s if swap_timeout_s is None else swap_timeout_s
        replaced = self._state.apply(new, label_set, snapshots, timeout_s)
        if replaced is not None:
            replaced.stop(timeout_s=1.0)
        if self._ownership is not None:
            self._ownership.claim(new.cameras)  # before the cameras follow: a removed one's last status is judged by it
        self._cameras.follow(old.cameras, new.cameras, restart_cameras)
        return new

    def announce(self, cfg: Config) -> None:
        """Publish the control state topics and the Home Assistant discovery for ``cfg`` again."""
        self._control.publish_state(cfg)
        self._discovery.announce(cfg)

    # -- runtime control (streamclf/control.py's ControlTarget) ----------------------------

    def camera_enabled(self, camera: str) -> bool:
        """True if ``camera`` is enabled in the config and not paused at runtime."""
        return self.cfg.cameras[camera].enabled and camera not in self._state.current.paused

    def set_camera_enabled(self, camera: str, enabled: bool) -> None:
        """Pause or resume classification of ``camera``.

        A paused camera keeps capturing, so its status stays meaningful and resuming is immediate; its
        frames are dropped before the model and counted as ``camera_disabled`` drops.
        """
        if camera not in self.cfg.cameras:
            raise KeyError(camera)
        self._state.set_paused(camera, not enabled)

    def threshold(self, camera: str, label: str) -> float:
        """The threshold (0..1) in force for ``label`` on ``camera``."""
        return self._state.threshold(camera, label)

    def set_threshold(self, camera: str, label: str, threshold: float) -> None:
        """Set ``label``'s threshold (0..1) on ``camera``, from the next batch on."""
        self._state.set_threshold(camera, label, threshold)

    def replace_labels(self, labels: Mapping[str, LabelConfig]) -> Config:
        """Switch to a new label set between two batches, without dropping frames; returns the new config.

        Raises ValueError when a camera's label list would become invalid, an example image is
        missing, matches nothing or does not decode (relative paths are under the config file's
        directory), or when the batch in flight outlasts ``swap_timeout_s``; nothing changes then.
        """
        new_cfg = self.cfg.model_copy(update={"labels": dict(labels)})
        problems = new_cfg.cross_check_problems() + example_problems(new_cfg.labels, self._base_dir or ".")
        if problems:
            raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        try:
            return self.apply(new_cfg)
        except (SwapTimeout, InferenceUnavailable) as exc:
            raise ValueError(f"{exc}; labels not changed") from None

    # -- running --------------------------------------------------------------------------

    def _inference_loop(self) -> None:
        self.classifier.become_model_thread()
        while not self.stop_event.is_set():
            batch = self.batcher.next_batch(timeout=0.5)
            if batch:
                self.fill_labels()
                self._batches.classify(batch)
            elif self._all_files_done():
                return

    def _all_files_done(self) -> bool:
        return self._cameras.all_files_done() and len(self.batcher) == 0

    def start(self) -> None:
        """Start every stage: subscriptions and retained state first, so they are in place on the first connect."""
        if self._ownership is not None:
            self._ownership.start()  # the claims' subscription and our claim ahead of everything else
        self._discovery.start()
        self._control.start()
        self.publisher.start()
        if self._alerts.snapshots is not None:
            self._alerts.snapshots.start()
        # Known OFF before the first frame: a retained ON from an earlier run would be stale.
        self._alerts.publish_states(self._decider.initial_states())
        self._cameras.start(self.cfg.cameras)
        self._inference.start()
        self._observers.on_started()

    def run(self) -> int:
        """Start, wait for a stop request, for every file camera to end or for the inference thread to
        die; shut down; exit code (``EXIT_WORKER_FAILED`` when a worker thread died)."""
        self.start()
        while not self.stop_event.wait(self.tick_s):
            if not self._inference.is_alive():
                break
            if self._all_files_done():
                self.batcher.close()
            self._drop_log.tick()
            if self._ownership is not None:
                self._ownership.tick()
            self._end_silent_events()
            self._observers.on_tick()
        ended_by_files = not self.stop_event.is_set()
        failed = self.workers.failures()
        if failed:
            log.error("stopping: thread %s has died (%s)", failed[0].name, failed[0].error)
        self._observers.on_stopping()
        self.shutdown()
        counts = self._batches.counters()
        log.info(
            "%s: %d frames classified (%d reused unchanged scores), %d detections",
            "every camera has ended" if ended_by_files else "stopped", counts.frames_classified,
            counts.skipped_unchanged, self._alerts.detections_published,
        )
        # Not 0 after a dead thread, so that systemd's Restart=on-failure starts the daemon again.
        return EXIT_WORKER_FAILED if failed else 0

    def _end_silent_events(self) -> None:
        # A camera without frames must not leave its events open: a long outage would read as a long detection.
        for name, silent_for_s in self._cameras.offline_silences().items():
            self._state.end_silent(name, silent_for_s, "camera_offline")

    def shutdown(self) -> None:
        """Stop every stage within ``shutdown_budget_s`` seconds; a stuck camera or model call is abandoned."""
        deadline = time.monotonic() + self.shutdown_budget_s
        self.stop_event.set()
        self._control.stop(timeout_s=0.5)
        self._cameras.stop()
        self.batcher.close()
        # The batch in flight may finish; anything still waiting is abandoned.
        self._inference.join(max(0.0, min(1.5, deadline - time.monotonic())))
        abandoned = self.batcher.discard_pending()
        if abandoned:
            log.info("abandoned %d pending frame(s) at shutdown", abandoned)
        # Every start gets its end: open events end now and their labels turn OFF.
        self._alerts.publish(self._decider.finish())
        if self._alerts.snapshots is not None:
            self._alerts.snapshots.stop(timeout_s=max(0.0, min(0.5, deadline - time.monotonic() - 1.0)))
        self._cameras.publish_stopped(list(self.cfg.cameras))
        self._drop_log.log(force=True)
        self.publisher.stop(flush_timeout_s=max(0.5, deadline - time.monotonic() - 0.5))
        self._cameras.join(0.05)
