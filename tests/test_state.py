"""The pipeline's shared state and its batch classifier: what a batch sees, when changes land, and
which frames reach the sinks. Fakes stand in for the model and the broker; the decider is real."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streamclf.alerts import AlertPublisher
from streamclf.batch_classifier import BatchClassifier
from streamclf.batching import Batcher
from streamclf.config import Config, parse_config
from streamclf.decisions import Decider
from streamclf.entities import BatchReport, Classification, Frame
from streamclf.observer import ObserverGroup, PipelineObserver
from streamclf.state import BatchState, PipelineState, SwapTimeout
from streamclf.zones import ZoneCropper

CONFIG = """
mqtt: {host: 127.0.0.1, topic_prefix: t}
labels:
  person: {threshold: 0.5}
  car: {threshold: 0.5}
  empty: {background: true}
cameras:
  front: {source: front.mp4}
  back: {source: back.mp4}
events: {snapshots: {enabled: false}}
"""


class RecordingPublisher:
    """The parts of MqttClient that alerts use."""

    def __init__(self) -> None:
        self.retained: dict[str, object] = {}

    def topic(self, *parts: str) -> str:
        return "/".join(("t", *parts))

    def publish(self, topic, payload, qos=0, retain=False) -> None:
        if retain:
            self.retained[topic] = payload

    def set_retained(self, topic, payload, qos=1) -> None:
        self.publish(topic, payload, qos, retain=True)


class FakeModel:
    """Scores every image 0.9 for its subset's first label; ``during_embed`` runs inside the model call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.during_embed = lambda: None

    def embed_images(self, images, bgr=False, prepared=None):
        self.calls.append(len(images))
        self.during_embed()
        return list(images)

    def score(self, embeddings, labels, subsets):
        return [{name: (0.9 if i == 0 else 0.1 / (len(subset) - 1)) for i, name in enumerate(subset)}
                for subset in subsets]


class Reports(PipelineObserver):
    def __init__(self) -> None:
        self.batches: list[BatchReport] = []

    def on_batch(self, report: BatchReport) -> None:
        self.batches.append(report)


def _frame(camera: str, index: int = 0) -> Frame:
    return Frame(camera, np.zeros((8, 8, 3), np.uint8), index, index * 0.1, 0.0)


@pytest.fixture
def cfg() -> Config:
    return parse_config(CONFIG)


@pytest.fixture
def state(cfg) -> PipelineState:
    alerts = AlertPublisher(RecordingPublisher(), cfg)  # type: ignore[arg-type]
    return PipelineState(BatchState(cfg, "labels-v1", ZoneCropper(cfg.cameras)), Decider(cfg), alerts, None)


def _classifier(state: PipelineState, model: FakeModel, seen: list[Classification], batcher: Batcher,
                reports: PipelineObserver | None = None) -> BatchClassifier:
    return BatchClassifier(model, state, batcher, None, [seen.append], reports or PipelineObserver())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the swap rule

def test_apply_swaps_the_config_and_keeps_what_did_not_change(state, cfg):
    state.set_paused("back", True)
    before = state.current
    stricter_car = cfg.labels["car"].model_copy(update={"threshold": 0.8})
    new = cfg.model_copy(update={"labels": {**cfg.labels, "car": stricter_car}})
    assert state.apply(new, None, None, timeout_s=1.0) is None  # no snapshot writer replaced
    after = state.current
    assert after.cfg is new
    assert after.label_set == "labels-v1"  # prompts unchanged: no new embeddings were given
    assert after.zones is before.zones  # same cameras, same zones
    assert after.paused == {"back"}  # runtime pauses outlive a config change
    assert state.threshold("front", "car") == 0.8


def test_apply_with_new_labels_and_cameras(state, cfg):
    new = parse_config(CONFIG.replace("  back: {source: back.mp4}", "  side: {source: side.mp4}"))
    state.apply(new, "labels-v2", None, timeout_s=1.0)
    assert state.current.label_set == "labels-v2"
    assert set(state.current.zones.zones) == {"front", "side"}
    assert state.current.classifies("side") and not state.current.classifies("back")


def test_apply_waits_for_the_batch_in_flight_and_gives_up_with_nothing_changed(state, cfg):
    new = cfg.model_copy(update={"labels": {n: lc for n, lc in cfg.labels.items() if n != "person"} | {
        "dog": cfg.labels["person"]}})
    with state.batch():
        with pytest.raises(SwapTimeout, match="more than 0.05 s"):
            state.apply(new, "labels-v2", None, timeout_s=0.05)
    assert state.current.cfg is cfg and state.current.label_set == "labels-v1"


def test_pausing_and_thresholds_do_not_wait_for_a_model_call(state):
    in_batch, release = threading.Event(), threading.Event()

    def batch():
        with state.batch():
            in_batch.set()
            release.wait(5)

    t = threading.Thread(target=batch)
    t.start()
    try:
        assert in_batch.wait(5)
        state.set_paused("front", True)
        state.set_threshold("back", "car", 0.3)
        assert state.current.paused == {"front"} and state.threshold("back", "car") == 0.3
    finally:
        release.set()
        t.join(5)
    state.set_paused("front", False)
    assert state.current.paused == frozenset()


# --------------------------------------------------------------------------- a batch

def test_a_batch_skips_paused_and_removed_cameras_and_counts_paused_frames_as_drops(state):
    model, seen, batcher, reports = FakeModel(), [], Batcher(8, 0.05), Reports()
    batches = _classifier(state, model, seen, batcher, reports)
    state.set_paused("back", True)
    batches.classify([_frame("front", 0), _frame("back", 1), _frame("gone", 2), _frame("front", 3)])

    assert model.calls == [2]  # one model call, for front's two frames only
    assert [(c.camera, c.frame_index, c.top_label) for c in seen] == [("front", 0, "person"), ("front", 3, "person")]
    assert batcher.drop_counts() == {"back": {"camera_disabled": 1}}  # a removed camera's frame is no drop
    counts = batches.counters()
    assert (counts.batches, counts.frames_classified, counts.frames_classified_by_camera) == (1, 2, {"front": 2})
    assert counts.batch_started is None
    assert [r.size for r in reports.batches] == [2]


def test_a_camera_paused_while_its_batch_is_embedded_is_not_published(state):
    model, seen = FakeModel(), []
    model.during_embed = lambda: state.set_paused("back", True)
    _classifier(state, model, seen, Batcher(8, 0.05)).classify([_frame("front"), _frame("back")])
    assert model.calls == [2]
    assert [c.camera for c in seen] == ["front"]


def test_a_failing_sink_or_observer_is_logged_and_the_others_go_on(state, caplog):
    class Broken(PipelineObserver):
        def on_batch(self, report):
            raise RuntimeError("observer bug")

    def broken_sink(c):
        raise RuntimeError("sink bug")

    seen: list[Classification] = []
    observers, reports = ObserverGroup(), Reports()
    observers.attach(Broken())
    observers.attach(reports)
    batches = BatchClassifier(FakeModel(), state, Batcher(8, 0.05), None, [broken_sink, seen.append],  # type: ignore[arg-type]
                              observers)
    batches.classify([_frame("front")])
    assert [c.camera for c in seen] == ["front"] and len(reports.batches) == 1
    assert "handling a classification failed" in caplog.text and "pipeline observer" in caplog.text
