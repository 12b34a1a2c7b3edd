"""Bad ground truth stops ``streamclf evaluate`` before anything runs, with the file and line."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from streamclf.cli import main
from tests.servers import make_video

CONFIG = {
    "mqtt": {"host": "127.0.0.1"},
    "model": {"name": "unused-model-dir"},
    "labels": {"car": {}, "person": {}, "nothing": {"background": True}},
    "cameras": {"driveway": {"source": "driveway.mp4", "fps": 2},
                "porch": {"source": "porch.mp4", "fps": 2, "labels": ["person", "nothing"]}},
}


def _never(model_cfg):
    raise AssertionError("the model must not load when the ground truth is wrong")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("errors")
    make_video(d / "driveway.mp4", 40, fps=10, color_fn=lambda i: np.full((240, 320, 3), 30, np.uint8))  # 4 s
    (d / "broken.mp4").write_bytes(b"not a video at all")
    (d / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return d


@pytest.mark.parametrize("truth, line, message", [
    ("videos:\n  driveway.mp4:\n    camera: driveway\n    ghost: [[0, 1]]\n", 4, "label 'ghost' is not in the config"),
    ("videos:\n  driveway.mp4:\n    camera: garden\n", 3, "camera 'garden' is not in the config"),
    ("videos:\n  driveway.mp4:\n    camera: porch\n    car: [[0, 1]]\n", 4,
     "label 'car' is not a label of camera 'porch'"),
    ("videos:\n  driveway.mp4:\n    nothing: [[0, 1]]\n", 3, "'nothing' is a background label"),
    ("videos:\n  missing.mp4:\n    camera: driveway\n", 2, "missing.mp4 does not exist"),
    ("videos:\n  broken.mp4:\n    camera: driveway\n", 2, "is not a video OpenCV/FFmpeg can read"),
    ("videos:\n  driveway.mp4:\n    car: [[0, 2], [1.5, 3]]\n", 3, "interval [1.5, 3] overlaps [0, 2]"),
    ("videos:\n  driveway.mp4:\n    car:\n      - [0, 1]\n      - [3, 2]\n", 5, "interval [3, 2] is reversed"),
    ("videos:\n  driveway.mp4:\n    car: [[1, 9]]\n", 3, "interval [1, 9] lies past the video's end (4.000 s)"),
    ("videos:\n  driveway.mp4:\n    car: [[1, x]]\n", 3, "an interval is [start_s, end_s]"),
    ("videos:\n  driveway.mp4:\n    car: [1, 2]\n", 3, "an interval is [start_s, end_s]"),
    ("videos:\n  broken.mp4:\n    car: [[0, 1]]\n", 2, "is not a video"),
    ("videos:\n  driveway.mp4:\n    camera: porch\nimages:\n  dir: stills/\n", 5, "'images' needs 'camera:'"),
    ("vidoes:\n  driveway.mp4: {}\n", 1, "unknown key 'vidoes'"),
], ids=["unknown label", "unknown camera", "label not of camera", "background label", "missing video",
        "unreadable video", "overlap", "reversed", "past the end", "not a number", "not a pair",
        "unreadable, no camera", "images without camera", "typo at the top"])
def test_bad_ground_truth_names_file_and_line_and_nothing_runs(workdir, capsys, truth, line, message):
    path = workdir / "truth.yaml"
    path.write_text(truth)
    rc = main(["evaluate", "-c", str(workdir / "config.yaml"), str(path), "--quiet"], make_classifier=_never)
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{path}:{line}: " in err and message in err, err


def test_a_video_no_camera_reads_needs_camera(workdir, capsys, tmp_path):
    other = make_video(tmp_path / "elsewhere.mp4", 10, fps=10)
    path = tmp_path / "truth.yaml"
    path.write_text(f"videos:\n  {other}:\n    car: [[0, 0.5]]\n")
    rc = main(["evaluate", "-c", str(workdir / "config.yaml"), str(path)], make_classifier=_never)
    assert rc == 1
    assert f"{path}:2: " in capsys.readouterr().err
