"""The shared batcher: frames from every camera wait here for the next model call.

A batch runs when ``batch_size`` frames wait or the oldest has waited
``max_batch_wait_s`` (``wait_only_batch_wait_s``, 1 s by default, when every waiting frame
comes from a WAIT producer: see ``Batcher``). The queue is bounded; what happens to a frame that does not fit
is a named policy chosen by its producer, and every drop is counted per camera and
reason so it shows up in logs and metrics instead of vanishing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from enum import Enum
from typing import Callable, Mapping

from streamclf.entities import Frame


class DropPolicy(str, Enum):
    """What ``Batcher.put`` does with a frame when the queue is full, or a newer frame exists."""

    WAIT = "wait"  # block the producer: files read without realtime pacing lose nothing; such frames
    # fill at most max_pending - live_reserve slots, so a file job never locks live cameras out
    LATEST_PER_CAMERA = "latest_per_camera"  # live video: a newer frame replaces its camera's pending one;
    # on a full queue it makes room like DROP_OLDEST
    DROP_OLDEST = "drop_oldest"  # make room by dropping the oldest droppable frame (never a WAIT one)


class DropReason(str, Enum):
    STALE = "stale"  # older than max_frame_age_s when its batch ran
    QUEUE_FULL = "queue_full"  # no room in the batcher
    SUPERSEDED = "superseded"  # replaced by a newer frame of the same live camera
    DECODE_ERROR = "decode_error"  # the source returned a frame that could not be decoded
    CAMERA_DISABLED = "camera_disabled"  # its camera was switched off at runtime (<prefix>/<camera>/enabled/set)
    INFERENCE_UNAVAILABLE = "inference_unavailable"  # the model's server could not be reached or was too slow


class Batcher:
    """Bounded multi-producer, single-consumer frame queue that hands out batches.

    Times are ``clock()`` seconds (monotonic). ``max_frame_age_s`` of None keeps every frame;
    ``max_frame_age_by_camera`` (camera -> seconds or None) overrides it per camera, because a
    quiet camera and a batch job tolerate different ages.

    ``live_reserve`` slots (default: one batch, at most half the queue) are kept from WAIT
    frames. A file read without pacing produces frames far faster than the model takes them;
    without the reserve it keeps the queue full and every live frame arriving meanwhile would
    be dropped for want of room, blinding the live cameras for the whole file job.

    ``max_pending_bytes`` (None: no limit) bounds the memory of the waiting frames too, since one
    8K frame holds as much as a hundred small ones: a droppable frame makes room as on a full queue,
    and WAIT frames get the same share of the bytes as of the slots. A frame is always accepted into
    an empty queue, however large.

    When only WAIT frames wait, a partial batch waits up to ``wait_only_batch_wait_s`` for the
    rest instead of ``max_batch_wait_s``: those frames are a batch job's, where latency is worth
    nothing and a partial batch costs the model nearly a full one. Their capture threads decode at
    idle priority, so frames arrive in a burst after each batch rather than during it, and the live
    cameras' short limit would cut the next batch off before the burst is in. A live frame in the
    queue brings back its limit.
    """

    def __init__(
        self,
        batch_size: int,
        max_batch_wait_s: float,
        max_pending: int | None = None,
        max_frame_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_frame_age_by_camera: Mapping[str, float | None] | None = None,
        live_reserve: int | None = None,
        wait_only_batch_wait_s: float = 1.0,
        max_pending_bytes: int | None = None,
    ):
        self.batch_size = batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.wait_only_batch_wait_s = max(max_batch_wait_s, wait_only_batch_wait_s)
        self.max_pending = max_pending or max(4 * batch_size, 16)
        if live_reserve is None:
            live_reserve = min(batch_size, self.max_pending // 2)
        if not 0 <= live_reserve < self.max_pending:
            raise ValueError(f"live_reserve must be in [0, {self.max_pending}), got {live_reserve}")
        self.max_wait_pending = self.max_pending - live_reserve
        # The same bound in bytes, with the same share kept from WAIT frames: a frame's size is set
        # by its source, and a few large frames can take more memory than dozens of small ones.
        self.max_pending_bytes = max_pending_bytes
        self.max_wait_pending_bytes = (
            None if max_pending_bytes is None else max_pending_bytes * self.max_wait_pending // self.max_pending
        )
        self.max_frame_age_s = max_frame_age_s
        self.max_frame_age_by_camera = dict(max_frame_age_by_camera or {})
        self._clock = clock
        # (queued at, frame, may be dropped): frames of WAIT producers are never dropped for room.
        self._pending: deque[tuple[float, Frame, bool]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.drops: Counter[tuple[str, str]] = Counter()
        self.accepted = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def _drop(self, camera: str, reason: DropReason) -> None:
        self.drops[(camera, reason.value)] += 1

    def drop_counts(self) -> dict[str, dict[str, int]]:
        """A snapshot of every drop so far: camera -> reason -> frames."""
        with self._cond:
            out: dict[str, dict[str, int]] = {}
            for (camera, reason), n in self.drops.items():
                out.setdefault(camera, {})[reason] = n
            return out

    def count_drop(self, camera: str, reason: DropReason) -> None:
        """Record a drop that happened before the frame reached the batcher (e.g. a decode error)."""
        with self._cond:
            self._drop(camera, reason)

    def put(self, frame: Frame, policy: DropPolicy, timeout: float | None = None) -> bool:
        """Queue ``frame``; True if it was queued. WAIT blocks up to ``timeout`` seconds (None: forever)
        and returns False when the time is up, leaving the frame to the producer."""
        with self._cond:
            if self._closed:
                return False
            if policy is DropPolicy.LATEST_PER_CAMERA:
                for i, (_, old, _) in enumerate(self._pending):
                    if old.camera == frame.camera:
                        del self._pending[i]
                        self._drop(old.camera, DropReason.SUPERSEDED)
                        break
            if policy is DropPolicy.WAIT:
                size = frame_bytes(frame)
                if not self._wait_has_room(size):
                    ok = self._cond.wait_for(lambda: self._closed or self._wait_has_room(size), timeout)
                    if not ok or self._closed:
                        # Not counted as a drop: a WAIT producer still holds the frame and retries it
                        # (or is shutting down), so nothing was lost yet.
                        return False
            elif not self._make_room(frame):
                self._drop(frame.camera, DropReason.QUEUE_FULL)
                return False
            self._pending.append((self._clock(), frame, policy is not DropPolicy.WAIT))
            self.accepted += 1
            self._cond.notify_all()
            return True

    def _make_room(self, frame: Frame) -> bool:
        """Drop the oldest droppable frames until ``frame`` fits in count and bytes; False if it cannot.

        Room is made at the expense of droppable frames only: a WAIT producer (a file read without
        pacing) was promised that its frames are never lost.
        """
        size = frame_bytes(frame)
        while self._pending and (len(self._pending) >= self.max_pending
                                 or not _fits(self._pending_bytes(), size, self.max_pending_bytes)):
            victim = next((i for i, (_, _, droppable) in enumerate(self._pending) if droppable), None)
            if victim is None:  # only WAIT frames wait: with live_reserve=0, or when they fill the bytes
                return False
            _, oldest, _ = self._pending[victim]
            del self._pending[victim]
            self._drop(oldest.camera, DropReason.QUEUE_FULL)
        return True

    def _pending_bytes(self, wait_only: bool = False) -> int:
        # Summed on demand, like the counts: a few dozen entries, and no running total can drift.
        return sum(frame_bytes(f) for _, f, droppable in self._pending if not (wait_only and droppable))

    def _any_droppable(self) -> bool:
        return any(droppable for _, _, droppable in self._pending)

    def _wait_has_room(self, size: int) -> bool:
        # Counted on demand: the queue holds a few dozen entries, and no counter can drift.
        waiting = sum(1 for _, _, droppable in self._pending if not droppable)
        if len(self._pending) >= self.max_pending or waiting >= self.max_wait_pending:
            return False
        if not self._pending:
            return True  # one frame always fits, however large
        return (_fits(self._pending_bytes(wait_only=True), size, self.max_wait_pending_bytes)
                and _fits(self._pending_bytes(), size, self.max_pending_bytes))

    def next_batch(self, timeout: float | None = None) -> list[Frame]:
        """Block until a batch is due (full, or its oldest frame waited long enough), the
        timeout passes (returns what is due, possibly []), or the batcher is closed and empty."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                now = self._clock()
                self._drop_stale(now)
                if self._pending:
                    oldest_wait = now - self._pending[0][0]
                    limit = self.max_batch_wait_s if self._any_droppable() else self.wait_only_batch_wait_s
                    if len(self._pending) >= self.batch_size or oldest_wait >= limit or self._closed:
                        break
                    wait = limit - oldest_wait
                elif self._closed:
                    return []
                else:
                    wait = None
                if deadline is not None:
                    remaining = deadline - now
                    if remaining <= 0:
                        return []
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)
            n = min(self.batch_size, len(self._pending))
            batch = [self._pending.popleft()[1] for _ in range(n)]
            self._cond.notify_all()  # producers blocked on WAIT
            return batch

    def pending_cameras(self) -> set[str]:
        """Cameras with a frame waiting for its batch."""
        with self._cond:
            return {frame.camera for _, frame, _ in self._pending}

    def set_max_frame_age(self, camera: str, max_age_s: float | None) -> None:
        """Set (or change, on a reload) ``camera``'s stale limit in seconds; None keeps all its frames."""
        with self._cond:
            self.max_frame_age_by_camera[camera] = max_age_s

    def _max_age(self, camera: str) -> float | None:
        return self.max_frame_age_by_camera.get(camera, self.max_frame_age_s)

    def _drop_stale(self, now: float) -> None:
        if self.max_frame_age_s is None and not any(v is not None for v in self.max_frame_age_by_camera.values()):
            return
        kept: deque[tuple[float, Frame, bool]] = deque()
        for entry in self._pending:
            frame = entry[1]
            max_age = self._max_age(frame.camera)
            if max_age is not None and now - frame.captured_monotonic > max_age:
                self._drop(frame.camera, DropReason.STALE)
            else:
                kept.append(entry)
        if len(kept) != len(self._pending):
            self._pending = kept
            self._cond.notify_all()

    def close(self) -> None:
        """Stop accepting frames and wake everyone; pending frames can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard_pending(self) -> int:
        """Drop every pending frame (shutdown); returns how many."""
        with self._cond:
            n = len(self._pending)
            self._pending.clear()
            self._cond.notify_all()
            return n


def frame_bytes(frame: Frame) -> int:
    """Memory a queued frame holds, bytes: its picture, and its model input when that is already prepared."""
    size = frame.image.nbytes
    prepared = frame.model_input
    if prepared is not None:
        # numpy arrays and torch tensors (since torch 2.1) both say their size as ``nbytes``.
        size += int(getattr(prepared, "nbytes", 0) or 0)
    return size


def _fits(used: int, size: int, limit: int | None) -> bool:
    return limit is None or used + size <= limit
