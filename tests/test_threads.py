"""The thread budget: torch, OpenCV and FFmpeg decoder threads, and the decoders' CPU priority, come from the config."""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np
import pytest
import torch

from streamclf.batching import Batcher
from streamclf.capture import FileCamera, LiveCamera, open_capture
from streamclf.config import CameraConfig, ModelConfig
from streamclf.model import ClipClassifier
from streamclf.model.torch_threads import DEFAULT_THREADS
from tests.conftest import wait_until
from tests.servers import make_video
from tests.test_capture import CountingCapture


def _on_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def test_model_config_sets_the_model_threads_torch_threads_and_opencv_threads(tiny_clip_dir):
    before = cv2.getNumThreads()
    try:
        clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32", threads=1,
                                         opencv_threads=1))
        assert cv2.getNumThreads() == 1
        assert clf.threads == 1
        assert _on_thread(lambda: (clf.become_model_thread(), torch.get_num_threads())[1]) == 1
    finally:
        cv2.setNumThreads(before)
    assert ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu")).threads == DEFAULT_THREADS


def test_only_the_model_thread_runs_torch_with_more_than_one_thread(tiny_clip_dir):
    clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32", threads=2))
    clf.reserve_model_thread()  # what the pipeline does before it encodes its labels
    assert (clf.encode_labels({"a": ["a cat"]}), torch.get_num_threads())[1] == 1  # the main thread: one
    ready, finish, model_threads = threading.Event(), threading.Event(), []

    def model_thread():  # stays alive meanwhile, as the inference thread does
        clf.become_model_thread()
        clf.embed_images([np.zeros((32, 32, 3), np.uint8)])
        model_threads.append(torch.get_num_threads())
        ready.set()
        finish.wait(5)

    t = threading.Thread(target=model_thread)
    t.start()
    try:
        assert ready.wait(5) and model_threads == [2]
        # Label prompts from another thread (the control thread) and a capture thread's resize: one thread.
        assert _on_thread(lambda: (clf.encode_labels({"a": ["a cat"]}), torch.get_num_threads())[1]) == 1
        frame = np.zeros((720, 1280, 3), np.uint8)
        assert _on_thread(lambda: (clf.prepare_image(frame), torch.get_num_threads())[1]) == 1
    finally:
        finish.set()
        t.join()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or DEFAULT_THREADS < 2, reason="counts Linux threads")
def test_a_capture_threads_resize_starts_no_torch_worker_pool(tiny_clip_dir):
    # Why it matters (streamclf/model/torch_threads.py): a second pool makes libgomp sleep at every barrier.
    # Counted as the OS threads that appear while the thread runs (threads left by earlier tests may end meanwhile).
    clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32", threads=2))
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)

    def new_threads(pin_first: bool) -> set[int]:
        ran, done, own = threading.Event(), threading.Event(), []

        def capture_like():
            own.append(threading.get_native_id())
            if pin_first:
                clf.prepare_image(frame)
            else:  # as a thread that nothing pinned runs it
                torch.set_num_threads(2)
                torch.nn.functional.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None].float(),
                                                size=(224, 398), mode="bilinear")
            ran.set()
            done.wait(5)

        before = set(map(int, os.listdir("/proc/self/task")))
        t = threading.Thread(target=capture_like)
        t.start()
        try:
            assert ran.wait(5)
            return set(map(int, os.listdir("/proc/self/task"))) - before - set(own)
        finally:
            done.set()
            t.join()

    assert new_threads(pin_first=False)  # the check can see a pool: its worker appears
    assert new_threads(pin_first=True) == set()  # the capture thread alone


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


def test_decode_priority_auto_is_idle_only_for_files_read_as_fast_as_possible():
    assert CameraConfig(source="x.mp4", realtime=False).idle_decoding
    assert not CameraConfig(source="x.mp4").idle_decoding  # realtime files keep their pace: normal
    assert not CameraConfig(source="rtsp://cam/stream").idle_decoding
    assert not CameraConfig(source="x.mp4", realtime=False, decode_priority="normal").idle_decoding
    assert CameraConfig(source="rtsp://cam/stream", decode_priority="idle").idle_decoding


_IDLE = getattr(os, "SCHED_IDLE", None)


@pytest.mark.skipif(_IDLE is None, reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize("settings, idle", [
    ({"realtime": False}, True),
    ({"realtime": True}, False),
    ({"realtime": False, "decode_priority": "normal"}, False),
    ({"realtime": True, "decode_priority": "idle"}, True),
])
def test_a_file_camera_decodes_in_the_scheduling_class_its_config_asks_for(tmp_path, settings, idle):
    """A real file, decoded by FFmpeg on the camera's thread; its class is read from the kernel
    while the camera waits on a full queue (or on its realtime pace)."""
    video = make_video(tmp_path / "v.mp4", 40)
    cfg = CameraConfig(source=str(video), fps=10, **settings)
    batcher = Batcher(batch_size=2, max_batch_wait_s=10, max_pending=4, live_reserve=0)
    cam = FileCamera("cam", cfg, batcher, lambda status: None, str(video))
    cam.start()
    try:
        wait_until(lambda: batcher.accepted >= 2, 10, "the camera has queued frames")
        policy = os.sched_getscheduler(cam.thread_native_id)
    finally:
        cam.stop()
        batcher.close()
        cam.join(5)
    assert (policy == _IDLE) is idle, policy


@pytest.mark.skipif(_IDLE is None, reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize("priority, idle", [("auto", False), ("idle", True)])
def test_a_live_cameras_reader_thread_inherits_its_decoding_class(priority, idle):
    """Live streams are read on a reader thread per attempt: the class must reach the thread that calls grab()."""
    policies: list[int] = []

    class Source(CountingCapture):
        def grab(self):
            policies.append(os.sched_getscheduler(0))
            return super().grab()

    def open_source(source, open_timeout_s, read_timeout_s, transport, started, decode_threads=0):
        started()
        return Source()

    cfg = CameraConfig(source="rtsp://cam/x", fps=5, decode_priority=priority)
    batcher = Batcher(batch_size=64, max_batch_wait_s=10, max_pending=64)
    cam = LiveCamera("cam", cfg, batcher, lambda s: None, "rtsp://cam/x", open_source=open_source,
                     probe=lambda u, t: None)
    cam.start()
    try:
        wait_until(lambda: len(policies) >= 5, 5, "frames grabbed")
    finally:
        cam.stop()
        cam.join(5)
    assert {p == _IDLE for p in policies} == {idle}


def _first_frames(cfg: CameraConfig, video, prepare, n: int = 2) -> list:
    batcher = Batcher(batch_size=n, max_batch_wait_s=10, max_pending=4, live_reserve=0)
    cam = FileCamera("cam", cfg, batcher, lambda status: None, str(video), prepare)
    cam.start()
    try:
        return batcher.next_batch(timeout=10)
    finally:
        cam.stop()
        batcher.close()
        cam.join(5)


@pytest.mark.skipif(_IDLE is None, reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize("realtime, prepared", [(False, True), (True, False)])
def test_an_idle_priority_camera_prepares_its_frames_for_the_model(tmp_path, tiny_clip_dir, realtime, prepared):
    """The resize and crop move to the capture thread only where it decodes at idle priority, and the
    embeddings of prepared frames are exactly those computed from the frames themselves."""
    classifier = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32"))
    video = make_video(tmp_path / "v.mp4", 6, size=(320, 240))
    # A realtime file's newer frame replaces its pending one, so it is read one frame at a time.
    n = 1 if realtime else 2
    frames = _first_frames(CameraConfig(source=str(video), fps=10, realtime=realtime), video,
                           classifier.prepare_image, n=n)
    assert len(frames) == n
    assert all((f.model_input is not None) is prepared for f in frames)
    images = [f.image for f in frames]
    torch.testing.assert_close(classifier.embed_images(images, bgr=True, prepared=[f.model_input for f in frames]),
                               classifier.embed_images(images, bgr=True), rtol=0, atol=0)


def test_a_failing_prepare_is_logged_once_and_the_frames_still_flow(tmp_path, caplog):
    calls = []

    def broken(image):
        calls.append(1)
        raise RuntimeError("no room")

    video = make_video(tmp_path / "v.mp4", 6)
    frames = _first_frames(CameraConfig(source=str(video), fps=10, realtime=False), video, broken, n=4)
    assert len(frames) == 4 and all(f.model_input is None for f in frames)
    if _IDLE is not None:
        assert len(calls) == 1
        assert sum("preparing frames for the model failed" in r.getMessage() for r in caplog.records) == 1
