"""``streamclf run`` as a user runs it: a subprocess, real videos, real RTSP, a real broker."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from tests.conftest import TEST_DEVICE, base_config, needs_rtsp
from tests.servers import RtspServer, make_video, read_retained

pytestmark = pytest.mark.slow


def _colour_video(path, frames: int, bgr: tuple[int, int, int], fps: int = 10):
    def colour(i: int) -> np.ndarray:
        img = np.zeros((240, 320, 3), np.uint8)
        img[:] = bgr
        img[:, (i * 7) % 320 :] //= 2  # keep frames distinct
        return img

    return make_video(path, frames, fps=fps, size=(320, 240), color_fn=colour)


def _detections(collector, camera: str) -> list[dict]:
    return [m for m in collector.json_messages(f"+/{camera}/detection")]


@needs_rtsp
def test_two_files_and_rtsp_publish_detections_then_will_on_kill(tmp_path, broker, prefix, collector, tiny_clip_dir,
                                                                  start_daemon):
    red = _colour_video(tmp_path / "red.mp4", 20, (0, 0, 255))
    blue = _colour_video(tmp_path / "blue.avi", 20, (255, 0, 0))
    with RtspServer() as rtsp:
        cameras = {
            "red_cam": {"source": str(red), "fps": 5, "realtime": False},
            "blue_cam": {"source": str(blue), "fps": 5, "realtime": False, "labels": ["blue_thing", "nothing"]},
            # Credentials in the URL (the test server ignores them) must never reach a log line or message.
            "rtsp_cam": {"source": rtsp.url.replace("rtsp://", "rtsp://viewer:s3cret@"), "fps": 2},
        }
        daemon = start_daemon(base_config(tiny_clip_dir, broker, prefix, cameras))
        collector.wait_for(
            lambda m: len(_detections(collector, "red_cam")) >= 20 and len(_detections(collector, "blue_cam")) >= 10
            and len(_detections(collector, "rtsp_cam")) >= 4,
            timeout=60,
        )
        assert daemon.proc.poll() is None, daemon.output

        # Files are sampled by position: 10 fps video at 5 fps -> every second frame, all 20 frames read.
        red_dets = _detections(collector, "red_cam")
        assert sorted({d["frame_index"] for d in red_dets}) == list(range(0, 20, 2))
        assert {d["label"] for d in red_dets} == {"red_thing", "blue_thing"}  # threshold 0, background never
        for d in red_dets:
            assert set(d) == {"camera", "label", "score", "scores", "frame_index", "frame_time", "timestamp"}
            assert d["camera"] == "red_cam" and d["frame_time"] == pytest.approx(d["frame_index"] / 10, abs=1e-3)
            assert set(d["scores"]) == {"red_thing", "blue_thing", "nothing"}
            assert sum(d["scores"].values()) == pytest.approx(1.0, abs=1e-4)
            assert d["score"] == pytest.approx(d["scores"][d["label"]])
        blue_dets = _detections(collector, "blue_cam")
        assert {d["label"] for d in blue_dets} == {"blue_thing"}
        assert all(set(d["scores"]) == {"blue_thing", "nothing"} for d in blue_dets)
        rtsp_dets = _detections(collector, "rtsp_cam")
        assert all(d["frame_time"] > 1e9 for d in rtsp_dets)  # live: capture wall-clock time

        assert read_retained(broker.host, broker.port, f"{prefix}/available") == b"online"
        assert read_retained(broker.host, broker.port, f"{prefix}/rtsp_cam/status") == b"online"

        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        collector.wait_for(lambda m: any(t == f"{prefix}/available" and p == b"offline" for t, p, _ in m), timeout=10)
        assert read_retained(broker.host, broker.port, f"{prefix}/available") == b"offline"
        assert "s3cret" not in daemon.output
        assert not [t for t, p, _ in collector.all if b"s3cret" in p]


def test_file_only_run_ends_by_itself_and_marks_everything_offline(tmp_path, broker, prefix, collector,
                                                                    tiny_clip_dir, start_daemon):
    video = _colour_video(tmp_path / "v.mp4", 30, (0, 0, 255))
    cameras = {"a": {"source": str(video), "fps": 10, "realtime": False},
               "b": {"source": str(video), "fps": 2, "realtime": True}}
    daemon = start_daemon(base_config(tiny_clip_dir, broker, prefix, cameras))
    assert daemon.wait(60) == 0, daemon.output
    assert f"loaded on {TEST_DEVICE}," in daemon.output  # scripts/gpu_check.sh runs this on CUDA too
    assert ("CUDA graphs: captured" in daemon.output) == TEST_DEVICE.startswith("cuda")
    # Every sampled frame of the non-realtime camera arrives: nothing dropped, all flushed before exit.
    collector.wait_for(lambda m: len(collector.json_messages(f"{prefix}/a/detection")) >= 60, timeout=10)
    assert sorted({d["frame_index"] for d in collector.json_messages(f"{prefix}/a/detection")}) == list(range(30))
    indices = {d["frame_index"] for d in collector.json_messages(f"{prefix}/b/detection")}
    assert sorted(indices) == [0, 5, 10, 15, 20, 25]
    for topic in ("available", "a/status", "b/status"):
        assert read_retained(broker.host, broker.port, f"{prefix}/{topic}") == b"offline"
