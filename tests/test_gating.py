"""Change gating: a static scene skips the model and reuses scores; a change is classified."""

from __future__ import annotations

import re

import numpy as np
import pytest

from streamclf.config import ChangeGateConfig
from streamclf.entities import Frame
from streamclf.gating import ChangeGate
from tests.conftest import base_config
from tests.servers import make_video


def _scene(seed: int = 0, h: int = 480, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _frame(image: np.ndarray, t: float, camera: str = "cam") -> Frame:
    return Frame(camera, image, int(t * 10), t, 0.0)


def _noisy(image: np.ndarray, seed: int, amplitude: int = 6) -> np.ndarray:
    """Sensor-like noise of +-amplitude levels on every pixel."""
    noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _with_object(image: np.ndarray) -> np.ndarray:
    """A person-sized dark block (about 3% of the frame) walks in."""
    out = image.copy()
    out[200:340, 300:360] = 10
    return out


def _run(gate: ChangeGate, frames: list[Frame]) -> list:
    """Plan, 'run the model' (scores name the frame that produced them), resolve."""
    plan = gate.plan(frames)
    model_scores = [{"frame": float(f.frame_index)} if d is None else None
                    for f, d in zip(frames, plan.decisions, strict=True)]
    return gate.resolve(plan, model_scores)


def test_static_scene_with_noise_reuses_the_first_frames_scores():
    gate = ChangeGate(ChangeGateConfig(enabled=True))
    scene = _scene()
    frames = [_frame(_noisy(scene, i), 0.1 * i) for i in range(8)]
    out = _run(gate, frames[:4]) + _run(gate, frames[4:])  # across batches too
    assert [s["frame"] for s in out] == [0.0] * 8
    assert gate.skipped["cam"] == 7


def test_a_change_is_classified_and_becomes_the_new_reference():
    gate = ChangeGate(ChangeGateConfig(enabled=True))
    scene = _scene()
    person = _with_object(scene)
    frames = [_frame(scene, 0.0), _frame(scene, 0.1), _frame(person, 0.2), _frame(person, 0.3), _frame(scene, 0.4)]
    out = _run(gate, frames)
    assert [s["frame"] for s in out] == [0.0, 0.0, 2.0, 2.0, 4.0]
    assert gate.total_skipped == 2


def test_cameras_are_gated_independently():
    gate = ChangeGate(ChangeGateConfig(enabled=True))
    a, b = _scene(1), _scene(2)
    out = _run(gate, [_frame(a, 0.0, "a"), _frame(b, 0.0, "b"), _frame(a, 0.1, "a"), _frame(b, 0.1, "b")])
    assert [s["frame"] for s in out] == [0.0, 0.0, 0.0, 0.0]
    assert gate.skipped == {"a": 1, "b": 1}
    assert gate.plan([_frame(b, 0.2, "a")]).decisions == (None,)  # b's picture is a change for camera a


@pytest.mark.parametrize(
    "later_time, expected_run",
    [(5.0, False), (10.5, True), (-1.0, True)],  # within max_reuse_s; too old; time went backwards
)
def test_scores_are_reused_only_within_max_reuse_s(later_time, expected_run):
    gate = ChangeGate(ChangeGateConfig(enabled=True, max_reuse_s=10.0))
    scene = _scene()
    _run(gate, [_frame(scene, 0.0)])
    assert (gate.plan([_frame(scene, later_time)]).decisions == (None,)) is expected_run


def test_forget_drops_the_reference():
    gate = ChangeGate(ChangeGateConfig(enabled=True))
    scene = _scene()
    _run(gate, [_frame(scene, 0.0)])
    gate.forget()
    assert gate.plan([_frame(scene, 0.1)]).decisions == (None,)


@pytest.mark.slow
def test_daemon_skips_a_static_scene_and_classifies_a_change(tmp_path, broker, prefix, collector, tiny_clip_dir,
                                                             start_daemon):
    # 10 frames of one scene, then 10 of another; MJPG encodes identical frames identically.
    static_a = np.zeros((240, 320, 3), np.uint8)
    static_a[:] = (0, 0, 200)
    static_b = static_a.copy()
    static_b[60:180, 100:220] = (200, 0, 0)  # a blue object appears (BGR)
    video = make_video(tmp_path / "static.avi", 20, fps=10, size=(320, 240),
                       color_fn=lambda i: static_a if i < 10 else static_b)
    cameras = {"cam": {"source": str(video), "fps": 10, "realtime": False}}
    cfg = base_config(tiny_clip_dir, broker, prefix, cameras, change_gate={"enabled": True})
    daemon = start_daemon(cfg)
    assert daemon.wait(60) == 0, daemon.output
    collector.wait_for(lambda m: len({d["frame_index"] for d in collector.json_messages(f"{prefix}/cam/detection")})
                       >= 20, timeout=10)
    scores = {d["frame_index"]: d["scores"] for d in collector.json_messages(f"{prefix}/cam/detection")}
    assert sorted(scores) == list(range(20))  # every frame is still published
    assert all(scores[i] == scores[0] for i in range(10))  # reused, bit for bit
    assert all(scores[i] == scores[10] for i in range(10, 20))
    assert scores[10] != scores[0]  # the change was classified
    m = re.search(r"(\d+) frames classified \((\d+) reused unchanged scores\)", daemon.output)
    assert m and (int(m.group(1)), int(m.group(2))) == (20, 18), daemon.output[-2000:]


def test_gating_is_off_by_default():
    assert ChangeGateConfig().enabled is False


def test_zones_are_gated_by_their_own_crop_and_forgotten_with_their_camera():
    """The pipeline keys the gate by (camera, zone): a change in one zone reclassifies that zone only."""
    gate = ChangeGate(ChangeGateConfig(enabled=True))
    porch, drive = _scene(1, 100, 100), _scene(2, 100, 100)
    keys = [("cam", "porch"), ("cam", "drive")]

    def run(frames):
        plan = gate.plan(frames, keys=keys)
        scores = [{"frame": float(f.frame_index)} if d is None else None
                  for f, d in zip(frames, plan.decisions, strict=True)]
        return plan, gate.resolve(plan, scores)

    run([_frame(porch, 0.0), _frame(drive, 0.0)])
    someone_on_the_porch = porch.copy()
    someone_on_the_porch[20:60, 20:60] = 10
    plan, out = run([_frame(someone_on_the_porch, 0.1), _frame(_noisy(drive, 3), 0.1)])
    assert plan.decisions[1] is not None and plan.decisions[0] is None  # porch changed, drive did not
    assert out[1] == {"frame": 0.0} and gate.skipped["cam"] == 1
    gate.forget("cam")
    assert gate.plan([_frame(drive, 0.2)], keys=[("cam", "drive")]).decisions == (None,)
