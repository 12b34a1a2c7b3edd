"""Capture sources: device paths are live cameras, file stops are not faults, VFR files keep their own times."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamclf.batching import Batcher
from streamclf.capture import CameraState, FileCamera, LiveCamera, make_camera
from streamclf.config import CameraConfig
from tests.conftest import wait_until
from tests.servers import make_video


def recorder():
    seen = []
    return seen, seen.append


@pytest.mark.parametrize("source", ["/dev/video77", "/dev/v4l/by-id/usb-Some_Camera-video-index0",
                                    "/dev/v4l/by-path/pci-0000:00:14.0-usb-0:1:1.0-video-index0"])
def test_device_paths_are_live_cameras_that_retry(source):
    cfg = CameraConfig(source=source, reconnect_backoff_initial_s=0.05, reconnect_backoff_max_s=0.1)
    assert not cfg.is_file
    statuses, on_status = recorder()
    cam = make_camera("dev", cfg, Batcher(2, 0.01), on_status)
    assert isinstance(cam, LiveCamera)
    cam.start()
    try:  # a missing device may be plugged in later: it is retried, never ended
        wait_until(lambda: cam.reconnects >= 2, 15, "two reconnect attempts")
    finally:
        cam.stop()
        cam.join(5)
    assert CameraState.ENDED not in {s.state for s in statuses}
    assert statuses[-1].state is CameraState.OFFLINE


def test_a_file_camera_stopped_while_opening_does_not_call_the_file_bad(tmp_path, caplog, monkeypatch):
    import streamclf.capture.file_camera as file_camera

    video = make_video(tmp_path / "v.mp4", 10, fps=10, size=(320, 240))
    statuses, on_status = recorder()
    cam = FileCamera("f", CameraConfig(source=str(video), fps=10), Batcher(2, 0.01), on_status, str(video))
    real_open = file_camera.open_capture

    def open_then_shut_down(*args, **kwargs):  # the daemon stops while this camera opens its file
        cap = real_open(*args, **kwargs)
        cam.stop()
        return cap

    monkeypatch.setattr(file_camera, "open_capture", open_then_shut_down)
    with caplog.at_level("INFO"):
        cam.start()
        cam.join(5)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    assert CameraState.ENDED not in {s.state for s in statuses}


def test_a_file_camera_stopped_while_reading_does_not_call_the_file_bad(tmp_path, caplog):
    video = make_video(tmp_path / "v.mp4", 40, fps=10, size=(320, 240))
    statuses, on_status = recorder()
    cfg = CameraConfig(source=str(video), fps=10, realtime=False)
    batcher = Batcher(1, 0.01, max_pending=2, live_reserve=0)  # nobody takes batches: the reader blocks in put()
    cam = FileCamera("f", cfg, batcher, on_status, str(video))
    with caplog.at_level("INFO"):
        cam.start()
        wait_until(lambda: cam.frames_sampled >= 2, 10, "two frames read")
        cam.stop()
        cam.join(5)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    assert CameraState.ENDED not in {s.state for s in statuses}
