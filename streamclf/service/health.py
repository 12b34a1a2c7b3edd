"""Is the pipeline making progress? One answer for the systemd watchdog, ``/healthz`` and stats.

Progress means either frames are being classified, or there is honestly nothing to classify
(cameras idle, offline or ended, nothing waiting in the batcher). What is *not* progress is
the failure systemd's watchdog exists for: a model call that has run for longer than
``stall_timeout_s``, frames waiting that nobody has classified for that long, an
inference thread that has died, or any worker thread (``streamclf/workers.py``) that
ended by an exception: a stage that has stopped for good is a hung daemon too. Capture
threads report their own states; a camera that cannot connect is not a hung daemon, so it does not stop the watchdog.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from streamclf.status import InferenceStatus
from streamclf.workers import WorkerFailure


@dataclass(frozen=True)
class Progress:
    """The verdict: ``ok`` and a short reason a person can read (``classifying``, ``idle: ...``, the fault)."""

    ok: bool
    reason: str


def evaluate_progress(inference: InferenceStatus, stall_timeout_s: float, now: float,
                      waiting_since: float | None, failed_workers: Sequence[WorkerFailure] = ()) -> Progress:
    """Judge the pipeline at ``now`` (monotonic seconds); see the module docstring for the rules.

    ``waiting_since`` is when frames were first seen waiting in the batcher without a break
    (None: none waiting), so that the first frame after a long idle spell is not a stall.
    ``failed_workers``: threads that died (``Workers.failures()``).
    """
    if failed_workers:
        dead = failed_workers[0]
        more = f" (and {len(failed_workers) - 1} more)" if len(failed_workers) > 1 else ""
        return Progress(False, f"thread {dead.name} has died: {dead.error}{more}")
    if not inference.alive:
        return Progress(False, "the inference thread has stopped")
    started = inference.batch_started
    if started is not None and now - started > stall_timeout_s:
        return Progress(
            False, f"a model call has been running for {now - started:.0f} s (stall_timeout_s {stall_timeout_s:g})")
    last = inference.last_progress
    pending = inference.queue_depth
    if pending and waiting_since is not None and now - max(last, waiting_since) > stall_timeout_s:
        idle_s = now - max(last, waiting_since)
        return Progress(False, f"{pending} frame(s) waiting and none classified for {idle_s:.0f} s")
    if now - last <= stall_timeout_s:
        return Progress(True, "classifying")
    return Progress(True, "frames arrived after an idle spell" if pending else "idle: no frames to classify")


class ProgressMonitor:
    """``evaluate_progress`` with the memory it needs: since when frames have been waiting.

    Called every tick by the supervising thread and on each ``/healthz`` request; thread-safe.
    """

    def __init__(self) -> None:
        self._waiting_since: float | None = None
        self._lock = threading.Lock()

    def check(self, inference: InferenceStatus, stall_timeout_s: float, now: float | None = None,
              failed_workers: Sequence[WorkerFailure] = ()) -> Progress:
        """Judge ``inference`` (a status snapshot) and ``failed_workers`` at ``now`` (monotonic seconds;
        default: the clock)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if inference.queue_depth == 0:
                self._waiting_since = None
            elif self._waiting_since is None:
                self._waiting_since = now
            return evaluate_progress(inference, stall_timeout_s, now, self._waiting_since, failed_workers)


class RateMeter:
    """Events per second over a sliding window, from a monotonically increasing count."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, count: int, now: float | None = None) -> float:
        """Record ``count`` at ``now`` (monotonic seconds); returns the rate per second over the window."""
        now = time.monotonic() if now is None else now
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        return self.rate

    @property
    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
