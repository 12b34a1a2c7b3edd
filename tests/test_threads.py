"""The thread budget: torch, OpenCV and FFmpeg decoder threads come from the config."""

from __future__ import annotations

import cv2
import pytest
import torch

from streamclf.capture import open_capture
from streamclf.classifier import ClipClassifier
from streamclf.config import CameraConfig, ModelConfig
from tests.servers import make_video


def test_model_config_sets_torch_and_opencv_threads(tiny_clip_dir):
    before = (torch.get_num_threads(), cv2.getNumThreads())
    try:
        ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32", threads=1,
                                   opencv_threads=1))
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_decoder_threads_default_to_one_per_camera():
    assert CameraConfig(source="x.mp4").decode_threads == 1


@pytest.mark.skipif(not hasattr(cv2, "CAP_PROP_N_THREADS"), reason="OpenCV < 4.7 cannot cap decoder threads")
@pytest.mark.parametrize("threads", [1, 2])
def test_open_capture_caps_ffmpeg_decoder_threads(tmp_path, threads):
    video = make_video(tmp_path / "v.mp4", 3)
    cap = open_capture(str(video), 5.0, 5.0, decode_threads=threads)
    try:
        assert cap.isOpened() and cap.get(cv2.CAP_PROP_N_THREADS) == threads
    finally:
        cap.release()
