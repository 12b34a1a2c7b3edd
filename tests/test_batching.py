"""The shared batcher: batch size, wait limit, bounded queue and its named drop policies."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamclf.batching import Batcher, DropPolicy
from streamclf.entities import Frame

IMG = np.zeros((4, 4, 3), np.uint8)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def frame(camera: str, index: int, captured: float = 1000.0) -> Frame:
    return Frame(camera, IMG, index, index / 10, captured)


def test_full_batch_is_returned_at_once():
    b = Batcher(batch_size=3, max_batch_wait_s=60)
    for i in range(4):
        b.put(frame("a", i), DropPolicy.WAIT)
    assert [f.frame_index for f in b.next_batch(timeout=0)] == [0, 1, 2]
    assert len(b) == 1


def test_partial_batch_waits_for_oldest_to_reach_max_wait():
    clock = FakeClock()
    b = Batcher(batch_size=8, max_batch_wait_s=0.05, clock=clock)
    b.put(frame("a", 0), DropPolicy.LATEST_PER_CAMERA)
    assert b.next_batch(timeout=0) == []
    clock.t += 0.051
    assert [f.frame_index for f in b.next_batch(timeout=0)] == [0]


def test_a_batch_jobs_partial_batch_waits_longer_for_the_rest():
    # Only WAIT frames (files read without pacing): latency is worth nothing, a full batch is.
    clock = FakeClock()
    b = Batcher(batch_size=8, max_batch_wait_s=0.05, clock=clock, wait_only_batch_wait_s=1.0)
    b.put(frame("file", 0), DropPolicy.WAIT)
    clock.t += 0.5
    assert b.next_batch(timeout=0) == []
    clock.t += 0.51  # but not for ever: the last frames of a file still go after 1 s
    assert [f.frame_index for f in b.next_batch(timeout=0)] == [0]


def test_a_live_frame_brings_back_the_short_wait():
    clock = FakeClock()
    b = Batcher(batch_size=8, max_batch_wait_s=0.05, clock=clock, wait_only_batch_wait_s=1.0)
    b.put(frame("file", 0), DropPolicy.WAIT)
    clock.t += 0.051
    assert b.next_batch(timeout=0) == []
    b.put(frame("live", 0), DropPolicy.LATEST_PER_CAMERA)
    got = [(f.camera, f.frame_index) for f in b.next_batch(timeout=0)]
    assert got == [("file", 0), ("live", 0)]


def test_the_longer_wait_is_never_shorter_than_max_batch_wait():
    clock = FakeClock()
    b = Batcher(batch_size=8, max_batch_wait_s=2.0, clock=clock, wait_only_batch_wait_s=1.0)
    b.put(frame("file", 0), DropPolicy.WAIT)
    clock.t += 1.5
    assert b.next_batch(timeout=0) == []
    clock.t += 0.51
    assert len(b.next_batch(timeout=0)) == 1


def test_latest_per_camera_replaces_only_that_cameras_pending_frame():
    b = Batcher(batch_size=8, max_batch_wait_s=60)
    b.put(frame("live", 0), DropPolicy.LATEST_PER_CAMERA)
    b.put(frame("file", 0), DropPolicy.WAIT)
    b.put(frame("live", 1), DropPolicy.LATEST_PER_CAMERA)
    b.close()
    got = [(f.camera, f.frame_index) for f in b.next_batch(timeout=0)]
    assert got == [("file", 0), ("live", 1)]
    assert b.drops[("live", "superseded")] == 1


def test_drop_oldest_when_full_is_counted():
    b = Batcher(batch_size=2, max_batch_wait_s=60, max_pending=2)
    for i in range(5):
        assert b.put(frame("a", i), DropPolicy.DROP_OLDEST)
    assert [f.frame_index for f in b.next_batch(timeout=0)] == [3, 4]
    assert b.drops[("a", "queue_full")] == 3


@pytest.mark.parametrize("policy", [DropPolicy.LATEST_PER_CAMERA, DropPolicy.DROP_OLDEST])
def test_a_live_frame_never_makes_room_by_dropping_a_file_frame(policy):
    """A full queue of WAIT frames (a file read without pacing) plus a live frame: the live one goes.

    Found by a flaky end-to-end run: a realtime camera's frame arriving at a queue that a
    non-realtime file had filled dropped one of the file's frames, which must never be lost.
    """
    b = Batcher(batch_size=2, max_batch_wait_s=60, max_pending=2, live_reserve=0)
    assert b.put(frame("file", 0), DropPolicy.WAIT) and b.put(frame("file", 1), DropPolicy.WAIT)
    assert not b.put(frame("live", 7), policy)
    assert b.drops == {("live", "queue_full"): 1}
    assert [(f.camera, f.frame_index) for f in b.next_batch(timeout=0)] == [("file", 0), ("file", 1)]


@pytest.mark.parametrize("policy", [DropPolicy.LATEST_PER_CAMERA, DropPolicy.DROP_OLDEST])
def test_a_file_job_leaves_room_for_live_cameras(policy):
    """A file read without pacing fills only its share of the queue; live frames still get in.

    Found by CI: a realtime camera next to a non-realtime file lost its first frame because the
    file had filled the whole queue before the model took its first batch.
    """
    b = Batcher(batch_size=2, max_batch_wait_s=60, max_pending=6)  # reserve: one batch
    assert b.max_wait_pending == 4
    for i in range(4):
        assert b.put(frame("file", i), DropPolicy.WAIT)
    assert not b.put(frame("file", 4), DropPolicy.WAIT, timeout=0.05)  # its share is full: it waits
    assert b.put(frame("live", 0), policy) and b.put(frame("other", 0), policy)
    assert not b.drops
    # The queue is now full; a third live frame makes room from the live ones, never from the file.
    assert b.put(frame("live", 1), policy)
    assert sum(b.drops.values()) == 1 and all(camera != "file" for camera, _ in b.drops)
    batches = [b.next_batch(timeout=0) for _ in range(3)]
    got = [(f.camera, f.frame_index) for batch in batches for f in batch]
    assert [i for c, i in got if c == "file"] == [0, 1, 2, 3]
    assert ("live", 1) in got


def test_live_reserve_must_leave_room_for_wait_frames():
    with pytest.raises(ValueError, match="live_reserve"):
        Batcher(batch_size=2, max_batch_wait_s=60, max_pending=4, live_reserve=4)


def test_room_is_made_from_the_oldest_droppable_frame():
    b = Batcher(batch_size=3, max_batch_wait_s=60, max_pending=3)
    b.put(frame("file", 0), DropPolicy.WAIT)
    b.put(frame("live", 1), DropPolicy.LATEST_PER_CAMERA)
    b.put(frame("file", 2), DropPolicy.WAIT)
    assert b.put(frame("other", 3), DropPolicy.DROP_OLDEST)
    assert b.drops == {("live", "queue_full"): 1}
    assert [(f.camera, f.frame_index) for f in b.next_batch(timeout=0)] == [("file", 0), ("file", 2), ("other", 3)]


def test_wait_policy_blocks_producer_until_room():
    b = Batcher(batch_size=2, max_batch_wait_s=60, max_pending=2, live_reserve=0)
    b.put(frame("a", 0), DropPolicy.WAIT)
    b.put(frame("a", 1), DropPolicy.WAIT)
    done = threading.Event()
    threading.Thread(target=lambda: (b.put(frame("a", 2), DropPolicy.WAIT), done.set()), daemon=True).start()
    assert not done.wait(0.2)  # blocked: the queue is full
    assert len(b.next_batch(timeout=0)) == 2
    assert done.wait(2)
    assert not b.drops
    # A WAIT producer whose time runs out keeps its frame to retry: nothing is counted as dropped.
    b.put(frame("a", 3), DropPolicy.WAIT)
    assert not b.put(frame("a", 4), DropPolicy.WAIT, timeout=0.05)
    assert not b.drops


def test_stale_frames_are_dropped_not_classified():
    clock = FakeClock()
    b = Batcher(batch_size=2, max_batch_wait_s=0, max_frame_age_s=1.0, clock=clock)
    b.put(frame("a", 0, captured=clock.t - 5), DropPolicy.DROP_OLDEST)  # a live camera's: files have no age limit
    b.put(frame("a", 1, captured=clock.t), DropPolicy.DROP_OLDEST)
    assert [f.frame_index for f in b.next_batch(timeout=0)] == [1]
    assert b.drops[("a", "stale")] == 1


def test_closed_batcher_hands_out_the_rest_then_empty():
    b = Batcher(batch_size=8, max_batch_wait_s=60)
    b.put(frame("a", 0), DropPolicy.WAIT)
    b.close()
    assert len(b.next_batch(timeout=1)) == 1
    start = time.monotonic()
    assert b.next_batch(timeout=5) == []
    assert time.monotonic() - start < 1
    assert not b.put(frame("a", 1), DropPolicy.WAIT)


def test_frame_validates_its_image():
    with pytest.raises(ValueError, match="uint8"):
        Frame("a", np.zeros((4, 4, 3), np.float32), 0, 0.0, 0.0)
