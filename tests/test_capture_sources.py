"""Capture sources: device paths are live cameras, file stops are not faults, VFR files keep their own times."""

from __future__ import annotations

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


def vfr_video(path, times: list[float]):
    """A real variable-frame-rate file (GStreamer, by the system python); skipped where that is missing."""
    import subprocess

    from tests.servers import HERE, SYSTEM_PYTHON

    try:
        subprocess.run([SYSTEM_PYTHON, str(HERE / "vfr_video.py"), str(path), *map(str, times)],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot write a VFR file with GStreamer: {exc}")
    return path


def test_frame_time_of_a_variable_frame_rate_file_is_each_frame_s_own_time(tmp_path):
    # 10 frames/s for 0.3 s, then one frame a second: the average rate says nothing about any frame.
    times = [0.0, 0.1, 0.2, 0.3, 1.3, 2.3, 3.3, 3.4]
    video = vfr_video(tmp_path / "vfr.mkv", times)
    batcher = Batcher(100, 0.01, max_pending=100, live_reserve=0)
    cfg = CameraConfig(source=str(video), fps=100, realtime=False)  # sample every frame
    cam = FileCamera("vfr", cfg, batcher, lambda s: None, str(video))
    cam.start()
    cam.join(20)
    frames = batcher.next_batch(timeout=1)
    assert [f.frame_index for f in frames] == list(range(len(times)))
    assert [f.frame_time for f in frames] == pytest.approx(times, abs=0.01)
    assert [int(f.image[0, 0, 0]) for f in frames] == pytest.approx([i * 10 for i in range(len(times))], abs=3)


def test_a_looping_vfr_file_keeps_its_time_increasing(tmp_path):
    times = [0.0, 0.5, 2.0]
    video = vfr_video(tmp_path / "vfr.mkv", times)
    batcher = Batcher(100, 0.01, max_pending=100, live_reserve=0)
    cfg = CameraConfig(source=str(video), fps=100, realtime=False, loop=True)
    cam = FileCamera("vfr", cfg, batcher, lambda s: None, str(video))
    cam.start()
    wait_until(lambda: len(batcher) >= 6, 20, "two passes")
    cam.stop()
    cam.join(5)
    got = [f.frame_time for f in batcher.next_batch(timeout=1)][:6]
    assert got[:3] == pytest.approx(times, abs=0.01)
    offset = got[3]  # the second pass starts after the first one's last frame, and keeps its own times
    assert offset > 2.0
    assert got[3:] == pytest.approx([offset + t for t in times], abs=0.01)
