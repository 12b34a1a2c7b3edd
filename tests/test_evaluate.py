"""``streamclf evaluate`` as a user runs it: labelled footage in, a report and a threshold out, and
the daemon with that threshold giving exactly the labelled events (through a real broker).

The footage is real mp4 written with cv2.VideoWriter: a dark scene, a red scene, the dark scene
again. The tiny test CLIP has random weights but its scores still depend on the picture, so the
test first finds which label the red scene raises (as ``test_alerts_end_to_end`` does).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

from streamclf.cli import main
from streamclf.config import ModelConfig
from streamclf.model import ClipClassifier
from tests.conftest import base_config, write_config
from tests.servers import make_video, read_frames

LABELS = {"red_thing": ["a red object"], "blue_thing": ["a blue object"], "nothing": ["an empty scene"]}
DARK_BGR, RED_BGR = (20, 20, 20), (40, 40, 230)
SOURCE_FPS, CAMERA_FPS = 10, 2
RED_FROM, RED_TO = 40, 80  # source frames of the red scene: 4.0 s to 7.9 s


def _scene(i: int) -> np.ndarray:
    bgr = RED_BGR if RED_FROM <= i < RED_TO else DARK_BGR
    img = np.zeros((240, 320, 3), np.uint8)
    img[:] = bgr
    img[(i * 5) % 240:, :8] = 255 - np.array(bgr, np.uint8)  # a small moving mark keeps frames distinct
    return img


@pytest.fixture(scope="module")
def footage(tmp_path_factory, tiny_clip_dir):
    """The video, the label the red scene raises, and the tiny model's scores of the sampled frames."""
    d = tmp_path_factory.mktemp("footage")
    video = make_video(d / "driveway.mp4", 120, fps=SOURCE_FPS, color_fn=_scene)
    classifier = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32"))
    label_set = classifier.encode_labels(LABELS)
    frames = read_frames(video)
    sampled = frames[:: SOURCE_FPS // CAMERA_FPS]
    scores = classifier.score(classifier.embed_images(sampled, bgr=True), label_set, [list(LABELS)] * len(sampled))
    red = [RED_FROM <= i * (SOURCE_FPS // CAMERA_FPS) < RED_TO for i in range(len(sampled))]
    gaps = {label: min(s[label] for s, r in zip(scores, red, strict=True) if r)
            - max(s[label] for s, r in zip(scores, red, strict=True) if not r)
            for label in ("red_thing", "blue_thing")}
    label = max(gaps, key=gaps.__getitem__)
    assert gaps[label] > 0.005, f"the tiny model does not tell the scenes apart: {gaps}"
    positives = [s[label] for s, r in zip(scores, red, strict=True) if r]
    negatives = [s[label] for s, r in zip(scores, red, strict=True) if not r]
    return video, label, positives, negatives


def _labels(label: str, threshold: float) -> dict:
    other = "blue_thing" if label == "red_thing" else "red_thing"
    return {
        label: {"prompts": LABELS[label], "threshold": threshold, "min_consecutive": 1, "off_delay_s": 0},
        other: {"prompts": LABELS[other], "threshold": 1.0},
        "nothing": {"prompts": LABELS["nothing"], "background": True},
    }


def _config(tmp_path, model_dir, broker, prefix, video, labels) -> dict:
    cameras = {"driveway": {"source": str(video), "fps": CAMERA_FPS, "realtime": False}}
    return base_config(model_dir, broker, prefix, cameras, labels=labels,
                       events={"event_update_interval_s": 0, "snapshots": {"enabled": False}})


def test_evaluate_finds_a_threshold_between_the_scenes_and_the_daemon_then_gives_the_labelled_events(
        tmp_path, broker, prefix, collector, tiny_clip_dir, footage, start_daemon, capsys):
    video, label, positives, negatives = footage
    # Configured far too high: the label never turns ON, and evaluate must say so and suggest better.
    cfg_path = write_config(tmp_path / "config.yaml", _config(tmp_path, tiny_clip_dir, broker, prefix, video,
                                                             _labels(label, 0.999)))
    truth = tmp_path / "truth.yaml"
    truth.write_text(yaml.safe_dump({"videos": {str(video): {"camera": "driveway", label: [[4.0, 7.9]]}}}))
    report, png = tmp_path / "report.json", tmp_path / "report.png"

    rc = main(["evaluate", "-c", str(cfg_path), str(truth), "--json", str(report), "--plot", str(png),
               "--suggest", "--quiet"])

    out = capsys.readouterr().out
    assert rc == 0, out
    r = json.loads(report.read_text())["labels"][label]
    assert r["frames"] == 24 and r["positive_frames"] == 8
    assert r["roc_auc"] == 1.0 and r["average_precision"] == pytest.approx(1.0)
    assert r["at_configured"]["recall"] == 0.0
    suggested = r["suggestion"]["threshold"]
    assert max(negatives) < suggested <= min(positives), (negatives, suggested, positives)
    assert r["at_suggested"] | {"threshold": 0} == {"threshold": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0,
                                                    "true_positives": 8, "false_positives": 0, "false_negatives": 0}
    assert r["events_at_configured"] == {"intervals": 1, "hit": 0, "missed": 1, "false_on": 0, "false_on_per_hour": 0.0}
    assert r["events_at_suggested"] == {"intervals": 1, "hit": 1, "missed": 0, "false_on": 0, "false_on_per_hour": 0.0}
    assert r["videos"][0]["on_at_suggested"] == [[4.0, 8.0]]
    assert f"{label}:\n    threshold: {suggested:g}" in out
    assert label in out and "AUC" in out

    # The picture: produced, opened, the right size, and not blank.
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] == 16 * 80 and image.shape[0] >= 3 * 80
    assert (image < 250).any(axis=2).mean() > 0.05

    # The daemon with the suggested threshold, through the broker: one event, exactly the labelled one.
    daemon = start_daemon(_config(tmp_path, tiny_clip_dir, broker, prefix, video, _labels(label, suggested)))
    # Seconds of work, but on a busy machine loading the model alone has taken 15 s.
    assert daemon.wait(120) == 0, daemon.output
    topic = f"{prefix}/driveway/event"
    collector.wait_for(lambda m: any(e["type"] == "end" for e in collector.json_messages(topic)), 10)
    events = [e for e in collector.json_messages(f"{prefix}/driveway/event") if e["type"] != "update"]
    assert [(e["type"], e["label"]) for e in events] == [("start", label), ("end", label)]
    # Starts on the first labelled frame, ends on the first frame after the labelled interval (2 fps).
    assert events[0]["start_time"] == pytest.approx(4.0) and events[1]["end_time"] == pytest.approx(8.0)


def test_stills_in_label_folders_count_as_frames_and_background_folders_as_negatives(
        tmp_path, broker, prefix, tiny_clip_dir, footage):
    video, label, _, _ = footage
    stills = tmp_path / "stills"
    for folder, indexes in ((label, range(RED_FROM, RED_FROM + 3)), ("nothing", range(3))):
        (stills / folder).mkdir(parents=True)
        for i in indexes:
            cv2.imwrite(str(stills / folder / f"{i}.png"), _scene(i))
    cfg_path = write_config(tmp_path / "config.yaml", _config(tmp_path, tiny_clip_dir, broker, prefix, video,
                                                             _labels(label, 0.999)))
    truth = tmp_path / "truth.yaml"
    truth.write_text("images:\n  dir: stills\n")  # one camera: it is the stills' camera
    report = tmp_path / "report.json"

    assert main(["evaluate", "-c", str(cfg_path), str(truth), "--json", str(report), "--quiet"]) == 0

    body = json.loads(report.read_text())
    assert (body["videos"], body["images"]) == (0, 6)
    r = body["labels"][label]
    assert (r["frames"], r["positive_frames"], r["roc_auc"]) == (6, 3, 1.0)
    assert r["at_suggested"]["f1"] == 1.0
    assert r["events_at_configured"]["intervals"] == 0  # stills have no time: frame figures only
