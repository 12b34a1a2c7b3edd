"""One batch, start to end, on the inference thread: frames in, classifications out.

The steps, in order: drop frames of paused or removed cameras (counted as drops), cut zoned
frames into one image per zone, ask the change gate which images must run the model, embed
those in one model call, score them against the label set in force, hand each classification
to the sinks (decisions and MQTT), and report the batch to the observer (metrics).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from streamclf.backend import Classifier, InferenceUnavailable
from streamclf.batching import Batcher, DropReason
from streamclf.entities import BatchReport, Classification, Frame
from streamclf.gating import ChangeGate, GatePlan, Scores
from streamclf.observer import PipelineObserver
from streamclf.state import BatchState, PipelineState
from streamclf.zones import ZonedImage

log = logging.getLogger(__name__)

ClassificationSink = Callable[[Classification], None]


@dataclass(frozen=True)
class BatchCounters:
    """What the batch classifier has done so far; times are monotonic seconds."""

    batches: int  # model calls started (batches taken from the batcher)
    frames_classified: int
    frames_classified_by_camera: dict[str, int]
    skipped_unchanged: int  # images that reused their last scores (change gate)
    batch_started: float | None  # start of the batch in flight; None between batches
    last_progress: float  # end of the last batch (or start, before the first)


class BatchClassifier:
    """Classifies batches with the state ``PipelineState`` holds; ``classify`` is called by one thread only."""

    def __init__(self, classifier: Classifier, state: PipelineState, batcher: Batcher, gate: ChangeGate | None,
                 sinks: Sequence[ClassificationSink], observer: PipelineObserver):
        self._classifier = classifier
        self._state = state
        self._batcher = batcher
        self._gate = gate
        self._sinks = tuple(sinks)
        self._observer = observer
        self._counts_lock = threading.Lock()  # counters are read by status() from other threads
        self._batches = 0
        self._classified: Counter[str] = Counter()
        self._skipped = 0
        self._batch_started: float | None = None
        self._last_progress = time.monotonic()

    def counters(self) -> BatchCounters:
        """A consistent copy of the counters, safe from any thread."""
        with self._counts_lock:
            return BatchCounters(self._batches, sum(self._classified.values()), dict(self._classified),
                                 self._skipped, self._batch_started, self._last_progress)

    def classify(self, batch: list[Frame]) -> None:
        """Classify ``batch`` and publish the results; the state cannot change until it is done."""
        with self._state.batch() as state:
            started = time.monotonic()
            with self._counts_lock:
                self._batches += 1
                self._batch_started = started
            try:
                self._classify(batch, state, started)
            finally:
                with self._counts_lock:
                    self._batch_started = None
                    self._last_progress = time.monotonic()

    def _classify(self, batch: list[Frame], state: BatchState, started: float) -> None:
        batch = self._drop_unclassified(batch, state)
        items = state.zones.expand(batch)  # one image per zone (or per frame), all in one model call
        try:
            if state.label_set is None:  # a remote model away since the start (Pipeline.fill_labels)
                raise InferenceUnavailable("the labels are not encoded yet")
            report = self._run_model(items, batch, started) if items else None
        except InferenceUnavailable:
            # The server is away: these frames are lost, counted, and the next batch tries again
            # (the client logs the cause once and keeps its own backoff).
            for frame in batch:
                self._batcher.count_drop(frame.camera, DropReason.INFERENCE_UNAVAILABLE)
            return
        # Counted once their results are handed on, so a status never shows frames as classified
        # whose detections are still to come.
        with self._counts_lock:
            self._classified.update(f.camera for f in batch)
        if report is not None:
            self._observer.on_batch(report)

    def _run_model(self, items: list[ZonedImage], batch: list[Frame], started: float) -> BatchReport:
        """Gate, embed, score and hand each result to the sinks; the report of the model call."""
        plan = self._gate_plan(items)
        to_run = plan.to_run if plan else list(range(len(items)))
        with self._counts_lock:
            self._skipped += len(items) - len(to_run)
        embeddings = self._embed(items, to_run)
        with self._state.deciding() as state:  # a camera may have been paused while the batch was embedded
            results = self._score(items, to_run, embeddings, plan, state)
            done = time.monotonic()
            self._dispatch(items, results, state.paused)
        return BatchReport(len(batch), done - started, tuple(done - f.captured_monotonic for f in batch))

    def _drop_unclassified(self, batch: list[Frame], state: BatchState) -> list[Frame]:
        """Frames of cameras paused at runtime (counted as drops) or removed by a reload are not classified."""
        kept = []
        for frame in batch:
            if frame.camera in state.paused:
                self._batcher.count_drop(frame.camera, DropReason.CAMERA_DISABLED)
            elif frame.camera in state.cfg.cameras:
                kept.append(frame)
        return kept

    def _gate_plan(self, items: list[ZonedImage]) -> GatePlan | None:
        if self._gate is None:
            return None
        return self._gate.plan([_gate_frame(item) for item in items], keys=[(i.frame.camera, i.zone) for i in items])

    def _embed(self, items: list[ZonedImage], to_run: list[int]):
        if not to_run:
            return None
        # Whole frames may come prepared by their capture thread; zone crops are prepared here.
        prepared: list[Any] = [items[i].frame.model_input if items[i].zone is None else None for i in to_run]
        return self._classifier.embed_images([items[i].image for i in to_run], bgr=True, prepared=prepared)

    def _score(self, items: list[ZonedImage], to_run: list[int], embeddings, plan: GatePlan | None,
               state: BatchState) -> list[Scores]:
        results: list[Scores | None] = [None] * len(items)
        if to_run:
            subsets = [state.cfg.labels_for(items[i].frame.camera) for i in to_run]
            assert state.label_set is not None, "checked when the batch started; only apply() swaps, between batches"
            for i, scores in zip(to_run, self._classifier.score(embeddings, state.label_set, subsets), strict=True):
                results[i] = scores
        if plan is not None and self._gate is not None:
            return self._gate.resolve(plan, results)
        return results  # type: ignore[return-value]  # every entry was scored

    def _dispatch(self, items: list[ZonedImage], results: list[Scores], paused: frozenset[str]) -> None:
        by_frame: dict[int, tuple[Frame, list[Classification]]] = {}  # a frame's zones, in order, for observers
        for item, scores in zip(items, results, strict=True):
            frame = item.frame
            if frame.camera in paused:
                continue
            c = Classification(frame.camera, frame.frame_index, frame.frame_time, frame.captured_monotonic,
                               scores, zone=item.zone, image=item.image)
            for sink in self._sinks:
                try:
                    sink(c)
                except Exception:  # a failing sink is logged; the pipeline goes on
                    log.exception("camera %s: handling a classification failed", c.camera)
            by_frame.setdefault(id(frame), (frame, []))[1].append(c)
        for frame, classifications in by_frame.values():
            self._observer.on_classified(frame, classifications)


def _gate_frame(item: ZonedImage) -> Frame:
    """The change gate compares what the model would see: the zone's crop, or the whole frame."""
    f = item.frame
    if item.zone is None:
        return f
    return Frame(f.camera, item.image, f.frame_index, f.frame_time, f.captured_monotonic)
