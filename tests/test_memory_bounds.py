"""Memory with large frames: queued frames are bounded in bytes and big frames are downscaled at capture."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from streamclf.batching import Batcher, DropPolicy, DropReason
from streamclf.entities import Frame
from tests.conftest import base_config, wait_until
from tests.servers import make_video

MIB = 1024 * 1024


def frame(camera: str, nbytes_side: int = 100, index: int = 0) -> Frame:
    return Frame(camera, np.zeros((nbytes_side, nbytes_side, 3), np.uint8), index, float(index), time.monotonic())


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_live_frames_beyond_the_byte_bound_drop_the_oldest():
    # 30 000 bytes per frame; the bound holds two of them although the queue has 16 slots.
    b = Batcher(batch_size=2, max_batch_wait_s=10, max_pending=16, max_pending_bytes=70_000)
    for i, cam in enumerate(["a", "b", "c", "d"]):
        assert b.put(frame(cam, index=i), DropPolicy.LATEST_PER_CAMERA)
    assert len(b) == 2
    assert b.drop_counts() == {"a": {DropReason.QUEUE_FULL.value: 1}, "b": {DropReason.QUEUE_FULL.value: 1}}
    assert [f.camera for f in b.next_batch(timeout=1)] == ["c", "d"]


def test_one_frame_larger_than_the_bound_is_still_accepted():
    b = Batcher(batch_size=2, max_batch_wait_s=0.01, max_pending=16, max_pending_bytes=1000)
    assert b.put(frame("a"), DropPolicy.LATEST_PER_CAMERA)
    assert b.put(frame("f"), DropPolicy.WAIT, timeout=0.01) is False  # a file waits rather than exceed it
    assert [f.camera for f in b.next_batch(timeout=1)] == ["a"]
    assert b.put(frame("f"), DropPolicy.WAIT, timeout=0.01)


def test_wait_frames_wait_for_bytes_and_leave_the_live_share_free():
    # 16 slots, live_reserve 4: files may take 12/16 of the bytes, 3 frames of 30 000 bytes of 160 000.
    b = Batcher(batch_size=4, max_batch_wait_s=10, max_pending=16, max_pending_bytes=160_000, live_reserve=4)
    accepted = sum(b.put(frame("file", index=i), DropPolicy.WAIT, timeout=0.01) for i in range(6))
    assert accepted == 4  # 4 x 30 000 = 120 000 = 12/16 of the bytes
    assert b.put(frame("live"), DropPolicy.LATEST_PER_CAMERA)  # the live share is still free
    assert b.drop_counts() == {}


@pytest.mark.slow
def test_an_8k_file_keeps_the_daemon_s_peak_memory_bounded(tmp_path, broker, prefix, collector, tiny_clip_dir,
                                                            start_daemon):
    # A few real 8K frames: each decoded frame is 7680 x 4320 x 3 = 95 MiB.
    video = make_video(tmp_path / "8k.mp4", 8, fps=4, size=(7680, 4320),
                       color_fn=lambda i: np.full((4320, 7680, 3), (i * 30) % 255, np.uint8))
    # loop: the daemon keeps running, so its peak can be read after many frames went through.
    cameras = {"big": {"source": str(video), "fps": 4, "realtime": False, "loop": True}}
    snaps = tmp_path / "snaps"
    cfg = base_config(tiny_clip_dir, broker, prefix, cameras,
                      labels={"thing": {"prompts": ["a grey wall"], "threshold": 0.0},
                              "nothing": {"prompts": ["a dog"], "background": True}},
                      events={"snapshots": {"directory": str(snaps)}})
    daemon = start_daemon(cfg)
    wait_until(lambda: len(collector.json_messages(f"{prefix}/big/detection")) >= 24, 180, "24 detections")
    peak = peak_rss_mib(daemon.proc.pid)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0, daemon.output
    assert "Traceback" not in daemon.output
    print(f"peak RSS of the daemon: {peak:.0f} MiB")
    # The same daemon with a 320x240 file peaks near 430 MiB, and 8K decoding itself needs a few hundred
    # MiB (FFmpeg's reference pictures and the decoded BGR frame); before frames were shrunk at capture
    # and bounded in bytes the queues alone added more than that again.
    assert peak < 1100, f"peak RSS {peak:.0f} MiB"
    jpgs = list(snaps.glob("*.jpg"))
    assert jpgs
    import cv2
    h, w = cv2.imread(str(jpgs[0])).shape[:2]
    assert max(h, w) == 1920  # snapshots come from the downscaled frame
