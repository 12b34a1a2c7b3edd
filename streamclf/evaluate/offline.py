"""Scoring footage offline through the daemon's own stages, with a recording sink instead of MQTT.

Each video runs as its camera would in the daemon with ``realtime: false``: a ``FileCamera`` samples
it at the camera's fps into a ``Batcher`` (WAIT policy, nothing dropped), and a ``BatchClassifier``
with the config's zones, change gate and label set scores each batch. Where the daemon's sinks
decide and publish, a ``ScoreRecorder`` keeps each classification (its scores and times; the picture
is dropped, or ten minutes of footage would fill the memory). Decisions are then made from those
records by the daemon's ``Decider`` (``replay_decisions``), once per threshold, as cheaply as often.
Videos run one after the other: two videos of the same camera cannot run at once in one
``Config``, and one file at a time already keeps the model busy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence, TextIO

import cv2

from streamclf.backend import Classifier
from streamclf.batch_classifier import BatchClassifier
from streamclf.batching import Batcher
from streamclf.capture import CameraState, CameraStatus, make_camera
from streamclf.config import Config
from streamclf.decisions import Decider
from streamclf.entities import BatchReport, Classification, Frame
from streamclf.evaluate.truth import LabelledImage
from streamclf.gating import ChangeGate
from streamclf.observer import PipelineObserver
from streamclf.pipeline import label_set_for
from streamclf.scoring import LabelSet
from streamclf.state import BatchState, PipelineState
from streamclf.zones import ZoneCropper


class ScoreRecorder:
    """A classification sink that keeps every classification, in the order the daemon decides them."""

    def __init__(self) -> None:
        self.records: list[Classification] = []

    def __call__(self, c: Classification) -> None:
        self.records.append(replace(c, image=None))


class Progress(PipelineObserver):
    """A one-line progress bar on ``stream`` (stderr), redrawn at most every ``interval_s`` seconds."""

    def __init__(self, what: str, expected_frames: int, stream: TextIO = sys.stderr, interval_s: float = 0.2):
        self._what = what
        self._expected = max(1, expected_frames)
        self._stream = stream
        self._interval_s = interval_s
        self._done = 0
        self._shown_at = 0.0
        self._started = time.monotonic()

    def on_batch(self, report: BatchReport) -> None:
        self._done += report.size
        if time.monotonic() - self._shown_at >= self._interval_s:
            self._draw()

    def close(self) -> None:
        self._draw()
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self) -> None:
        self._shown_at = time.monotonic()
        part = min(1.0, self._done / self._expected)
        rate = self._done / max(1e-9, self._shown_at - self._started)
        bar = "#" * int(part * 30)
        self._stream.write(f"\r{self._what:<24.24} [{bar:<30}] {self._done:>6d} frames {rate:6.1f}/s")
        self._stream.flush()


class FootageError(Exception):
    """A video could not be read to its end."""


@dataclass(frozen=True)
class ScoredVideo:
    """A video's classifications in decision order, and how long scoring it took (seconds)."""

    cfg: Config  # the config the video ran under: its camera only, reading the video without pacing
    records: tuple[Classification, ...]
    wall_s: float


class OfflineScorer:
    """Runs videos and stills through the daemon's batcher and batch classifier on the calling thread."""

    def __init__(self, cfg: Config, classifier: Classifier, show_progress: bool = True,
                 config_dir: str | None = None):
        self.cfg = cfg
        self.classifier = classifier
        # As in the daemon: one thread (this one) runs the model with every core, capture threads with one.
        classifier.reserve_model_thread()
        classifier.become_model_thread()
        self.label_set: LabelSet = label_set_for(classifier, cfg, config_dir)
        self.show_progress = show_progress

    def video_config(self, camera: str, path: str) -> Config:
        """``cfg`` with one camera: ``camera``'s settings reading ``path`` once, as fast as the model goes."""
        cam = self.cfg.cameras[camera].model_copy(
            update={"source": path, "realtime": False, "loop": False, "enabled": True})
        return self.cfg.model_copy(update={"cameras": {camera: cam}})

    def score_video(self, camera: str, path: str, duration_s: float) -> ScoredVideo:
        """Classify every frame ``camera`` samples from ``path``; raises FootageError if it ends early."""
        cfg = self.video_config(camera, path)
        cam_cfg = cfg.cameras[camera]
        batcher = Batcher(cfg.model.batch_size, cfg.model.max_batch_wait_ms / 1000.0,
                          max_frame_age_by_camera={camera: cam_cfg.effective_max_frame_age_s})
        statuses: list[CameraStatus] = []
        prepare = None if cam_cfg.zones else self.classifier.prepare_image
        cam = make_camera(camera, cam_cfg, batcher, statuses.append, None, prepare)
        progress = Progress(_short(path), int(duration_s * cam_cfg.fps) + 1) if self.show_progress else None
        recorder, batches = self._batch_classifier(cfg, batcher, progress)
        started = time.monotonic()
        cam.start()
        try:
            while True:
                batch = batcher.next_batch(timeout=0.5)
                if batch:
                    batches.classify(batch)
                elif cam.finished and len(batcher) == 0:
                    break
                if cam.finished:
                    batcher.close()  # the last partial batch need not wait for frames that will never come
        finally:
            cam.stop()
            cam.join(2.0)
            if progress is not None:
                progress.close()
        errors = [s.last_error for s in statuses if s.last_error]
        if errors or cam.state is not CameraState.ENDED:
            raise FootageError(f"{path}: {errors[-1] if errors else 'capture stopped: ' + cam.state.value}")
        return ScoredVideo(cfg, tuple(recorder.records), time.monotonic() - started)

    def score_images(self, camera: str, images: Sequence[LabelledImage]) -> list[Classification]:
        """Classify each still as a frame of ``camera`` (its labels and zones); ``frame_index`` is the
        image's position in ``images``."""
        cfg = self.video_config(camera, images[0].path if images else "")
        batcher = Batcher(cfg.model.batch_size, cfg.model.max_batch_wait_ms / 1000.0)
        progress = Progress("images", len(images)) if self.show_progress else None
        recorder, batches = self._batch_classifier(cfg, batcher, progress)
        size = cfg.model.batch_size
        for first in range(0, len(images), size):
            frames = [_still(camera, i, img.path) for i, img in enumerate(images[first:first + size], first)]
            batches.classify(frames)
        if progress is not None:
            progress.close()
        return recorder.records

    def _batch_classifier(self, cfg: Config, batcher: Batcher,
                          progress: Progress | None) -> tuple[ScoreRecorder, BatchClassifier]:
        gate = ChangeGate(cfg.change_gate) if cfg.change_gate.enabled else None
        state = PipelineState(BatchState(cfg, self.label_set, ZoneCropper(cfg.cameras)),
                              Decider(cfg, use_frame_time=True), None, gate)
        recorder = ScoreRecorder()
        observer = progress if progress is not None else PipelineObserver()
        return recorder, BatchClassifier(self.classifier, state, batcher, gate, [recorder], observer)


def _still(camera: str, index: int, path: str) -> Frame:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:  # checked when the TRUTH file was read; gone or changed since
        raise FootageError(f"{path} cannot be read")
    return Frame(camera, image, index, float(index), time.monotonic())


def _short(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class OnPeriod:
    """A label ON from ``start_s`` to ``end_s`` (media seconds); with zones, the union over zones."""

    start_s: float
    end_s: float


def replay_decisions(cfg: Config, records: Iterable[Classification],
                     thresholds: Mapping[str, float] | None = None) -> dict[str, list[OnPeriod]]:
    """ON periods of each label, from the daemon's ``Decider`` over recorded classifications.

    ``thresholds`` (label -> 0..1) replace the configured thresholds on every camera of ``cfg``.
    Periods still open at the end of the records end there, as the daemon ends them at shutdown.
    """
    decider = Decider(cfg, use_frame_time=True)
    for camera in cfg.cameras:
        for label, threshold in (thresholds or {}).items():
            if decider.rules(camera, label) is not None:
                decider.set_threshold(camera, label, threshold)
    opened: dict[tuple[str | None, str], float] = {}
    periods: dict[str, list[OnPeriod]] = {}
    last_time = 0.0
    for c in records:
        last_time = c.frame_time
        for change in decider.observe(c).state_changes:
            _follow(change.zone, change.label, change.on, change.time, opened, periods)
    for change in decider.finish(now=last_time).state_changes:
        _follow(change.zone, change.label, change.on, change.time, opened, periods)
    return {label: _union(p) for label, p in periods.items()}


def _follow(zone: str | None, label: str, on: bool, t: float, opened: dict, periods: dict) -> None:
    if on:
        opened[(zone, label)] = t
    elif (zone, label) in opened:
        periods.setdefault(label, []).append(OnPeriod(opened.pop((zone, label)), t))


def _union(periods: list[OnPeriod]) -> list[OnPeriod]:
    out: list[OnPeriod] = []
    for p in sorted(periods, key=lambda p: p.start_s):
        if out and p.start_s <= out[-1].end_s:
            out[-1] = OnPeriod(out[-1].start_s, max(out[-1].end_s, p.end_s))
        else:
            out.append(p)
    return out
