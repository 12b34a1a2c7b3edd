"""Live cameras sample by wall-clock time, and pay the colour conversion only for sampled frames."""

from __future__ import annotations

import threading
import time

import numpy as np

from streamclf.batching import Batcher
from streamclf.capture import CameraState, CameraStatus, LiveCamera
from streamclf.config import CameraConfig
from tests.conftest import wait_until


class CountingCapture:
    """A 100 fps source: grab() decodes a frame every 10 ms; retrieve() (the BGR conversion) is counted."""

    def __init__(self) -> None:
        self.grabs = 0
        self.retrieves = 0
        self.lock = threading.Lock()

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 16.0

    def grab(self) -> bool:
        time.sleep(0.01)
        with self.lock:
            self.grabs += 1
        return True

    def retrieve(self):
        with self.lock:
            self.retrieves += 1
        return True, np.full((16, 16, 3), self.grabs % 256, np.uint8)

    def release(self) -> None:
        pass


def test_a_live_camera_converts_only_the_frames_it_samples():
    capture = CountingCapture()
    seen: list[CameraStatus] = []

    def open_source(source, open_timeout_s, read_timeout_s, transport, started, decode_threads=0):
        started()
        return capture

    cfg = CameraConfig(source="rtsp://cam/x", fps=5)
    batcher = Batcher(batch_size=64, max_batch_wait_s=10, max_pending=64)
    cam = LiveCamera("cam", cfg, batcher, seen.append, "rtsp://cam/x", open_source=open_source, probe=lambda u, t: None)
    cam.start()
    try:
        wait_until(lambda: any(s.state is CameraState.ONLINE for s in seen), 5, "online")
        wait_until(lambda: capture.grabs >= 100, 5, "100 frames decoded")
    finally:
        cam.stop()
        cam.join(2)
    time.sleep(0.1)  # the reader thread sees the stop after its grab() in flight
    with capture.lock:
        grabs, retrieves = capture.grabs, capture.retrieves
    # 5 samples a second from a 100 fps source: about one frame in 20 is converted and queued.
    assert grabs - 1 <= cam.frames_read <= grabs
    assert retrieves == cam.frames_sampled
    assert 3 <= retrieves <= grabs / 10, (grabs, retrieves)
    # The newest sampled frame waits (LATEST_PER_CAMERA); the earlier ones were superseded, not lost unseen.
    assert len(batcher) == 1
    assert batcher.drop_counts()["cam"]["superseded"] == retrieves - 1
