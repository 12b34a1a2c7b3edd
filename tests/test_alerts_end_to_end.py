"""Alerts as a user sees them: ``streamclf run`` on made-up videos, through a real broker.

The tiny test CLIP has random weights, but its scores still depend on the picture, so each
test first scores its own scenes in-process and puts the threshold between them.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamclf.config import ModelConfig
from streamclf.model import ClipClassifier
from tests.conftest import base_config
from tests.servers import make_video, read_frames, read_retained

pytestmark = pytest.mark.slow

LABELS = {"red_thing": ["a red object"], "blue_thing": ["a blue object"], "nothing": ["an empty scene"]}
DARK_BGR, RED_BGR, BLUE_BGR = (20, 20, 20), (40, 40, 230), (230, 60, 30)


def _scene(bgr: tuple[int, int, int], i: int) -> np.ndarray:
    img = np.zeros((240, 320, 3), np.uint8)
    img[:] = bgr
    img[(i * 5) % 240 :, : 8] = 255 - np.array(bgr, np.uint8)  # a small moving mark keeps frames distinct
    return img


def _decoded_scores(video, model_dir, labels=LABELS) -> list[dict[str, float]]:
    """The tiny model's scores for every frame of ``video`` as the daemon will decode it."""
    classifier = ClipClassifier(ModelConfig(name=str(model_dir), device="cpu", precision="fp32"))
    label_set = classifier.encode_labels(labels)
    frames = read_frames(video)
    return classifier.score(classifier.embed_images(frames, bgr=True), label_set, [list(labels)] * len(frames))


def _states(collector, topic: str) -> list[bytes]:
    return [p for _, p, _ in collector.messages(topic)]


def test_a_scene_change_turns_a_label_on_then_off_with_one_start_and_one_end(
        tmp_path, broker, prefix, collector, tiny_clip_dir, start_daemon):
    # 10 fps: dark for 1 s, red for 2 s, dark again for 1 s.
    video = make_video(tmp_path / "scene.avi", 40, fps=10,
                       color_fn=lambda i: _scene(RED_BGR if 10 <= i < 30 else DARK_BGR, i))
    scores = _decoded_scores(video, tiny_clip_dir)
    # The label the red scene raises most clearly above every dark frame.
    gaps = {label: min(s[label] for s in scores[10:30]) - max(s[label] for s in scores[:10] + scores[30:])
            for label in ("red_thing", "blue_thing")}
    label = max(gaps, key=gaps.get)
    assert gaps[label] > 0.01, f"the tiny model does not tell the scenes apart: {gaps}"
    other = "blue_thing" if label == "red_thing" else "red_thing"
    threshold = max(s[label] for s in scores[:10] + scores[30:]) + gaps[label] / 2
    labels = {
        label: {"prompts": LABELS[label], "threshold": threshold, "min_consecutive": 2, "off_delay_s": 0},
        other: {"prompts": LABELS[other], "threshold": 1.0},
        "nothing": {"prompts": LABELS["nothing"], "background": True},
    }
    cfg = base_config(tiny_clip_dir, broker, prefix, {"cam": {"source": str(video), "fps": 10, "realtime": False}},
                      labels=labels, events={"event_update_interval_s": 0, "snapshots": {"enabled": False}})
    daemon = start_daemon(cfg)
    assert daemon.wait(60) == 0, daemon.output
    collector.wait_for(lambda m: any(e["type"] == "end" for e in collector.json_messages(f"{prefix}/cam/event")), 10)

    # Retained state, on change only: OFF at start, ON, OFF.
    assert _states(collector, f"{prefix}/cam/{label}") == [b"OFF", b"ON", b"OFF"]
    assert _states(collector, f"{prefix}/cam/{other}") == [b"OFF"]
    assert read_retained(broker.host, broker.port, f"{prefix}/cam/{label}") == b"OFF"
    assert not collector.messages(f"{prefix}/cam/nothing")

    events = collector.json_messages(f"{prefix}/cam/event")
    types = [e["type"] for e in events]
    # min_consecutive 2: ON at frame 11; an update on each later red frame (interval 0); OFF at frame 30.
    assert types == ["start"] + ["update"] * 18 + ["end"], types
    assert {e["id"] for e in events} == {events[0]["id"]} and {e["label"] for e in events} == {label}
    assert all(e["zone"] is None and e["camera"] == "cam" for e in events)
    start, end = events[0], events[-1]
    assert start["score"] == pytest.approx(scores[11][label], abs=1e-4)
    assert end["score"] == pytest.approx(scores[30][label], abs=1e-4)
    assert end["top_score"] == pytest.approx(max(s[label] for s in scores[11:30]), abs=1e-4)
    assert start["end_time"] is None and end["start_time"] == start["start_time"] <= end["end_time"]
    # Times are the frames' media time (10 fps file): deterministic however fast the file was classified.
    assert (start["start_time"], end["end_time"]) == (pytest.approx(1.1), pytest.approx(3.0))

    # The per-frame topic is still there: one message per red frame at or above the threshold.
    dets = collector.json_messages(f"{prefix}/cam/detection")
    assert sorted(d["frame_index"] for d in dets) == list(range(10, 30))
    assert all("zone" not in d for d in dets)


def test_zones_snapshots_and_no_detection_topic(tmp_path, broker, prefix, collector, tiny_clip_dir, start_daemon):
    def halves(i: int) -> np.ndarray:
        img = np.zeros((240, 320, 3), np.uint8)
        img[:, :160] = RED_BGR
        img[:, 160:] = BLUE_BGR
        return img

    video = make_video(tmp_path / "halves.avi", 12, fps=10, color_fn=halves)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    (snaps / "earlier.jpg").write_bytes(b"from an earlier run")
    labels = {
        "red_thing": {"prompts": LABELS["red_thing"], "threshold": 0.0, "min_consecutive": 1, "off_delay_s": 60},
        "blue_thing": {"prompts": LABELS["blue_thing"], "threshold": 1.0},
        "nothing": {"prompts": LABELS["nothing"], "background": True},
    }
    cameras = {"cam": {"source": str(video), "fps": 10, "realtime": False,
                       "zones": {"left": {"box": [0, 0, 0.5, 1]},
                                 "right": {"box": [160, 0, 320, 240], "coordinates": "pixels"}}}}
    events = {"detections": False, "event_update_interval_s": 0,
              "snapshots": {"on_update": True, "directory": str(snaps), "max_files": 3, "height": 120, "quality": 90}}
    daemon = start_daemon(base_config(tiny_clip_dir, broker, prefix, cameras, labels=labels, events=events))
    assert daemon.wait(60) == 0, daemon.output

    # States per zone: ON with the first frame (threshold 0), OFF when the run ends.
    for zone in ("left", "right"):
        assert _states(collector, f"{prefix}/cam/{zone}/red_thing") == [b"OFF", b"ON", b"OFF"]
        assert _states(collector, f"{prefix}/cam/{zone}/blue_thing") == [b"OFF"]
    assert not collector.messages(f"{prefix}/cam/red_thing")  # zones replace the whole frame
    events_by_zone = {}
    for e in collector.json_messages(f"{prefix}/cam/event"):
        events_by_zone.setdefault(e["zone"], []).append(e["type"])
    assert events_by_zone == {z: ["start"] + ["update"] * 11 + ["end"] for z in ("left", "right")}
    assert not collector.messages(f"{prefix}/cam/detection")

    # Snapshots: the zone's crop, scaled to height 120 keeping its 160x240 aspect.
    for zone, colour in (("left", RED_BGR), ("right", BLUE_BGR)):
        jpeg = read_retained(broker.host, broker.port, f"{prefix}/cam/{zone}/red_thing/snapshot")
        assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (120, 80, 3)
        assert np.abs(image.reshape(-1, 3).mean(0) - colour).max() < 12, (zone, image.reshape(-1, 3).mean(0))
    files = sorted(snaps.iterdir())
    assert len(files) == 3 and all(f.suffix == ".jpg" for f in files), files
    assert not (snaps / "earlier.jpg").exists()  # the oldest file went first
    for f in files:
        assert cv2.imdecode(np.frombuffer(f.read_bytes(), np.uint8), cv2.IMREAD_COLOR).shape == (120, 80, 3)
