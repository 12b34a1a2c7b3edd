"""Live sources (RTSP/HTTP streams, webcams): a supervisor per camera, reconnects, newest frame wins.

Live sources fail in ways OpenCV does not handle on its own, so each live camera runs a
small supervisor:

- every open-and-read attempt runs in its own reader thread. ``VideoCapture.grab()`` can
  block with no timeout after a disconnect on some builds, so the supervisor never waits
  on it: a watchdog marks the camera offline when no frame arrives for
  ``stall_timeout_s`` and starts a fresh reader; the stuck one is abandoned and releases
  its capture itself if FFmpeg ever returns (releasing it from another thread while it is
  inside ``grab()`` could crash the process).
- network sources are probed first (``probe``), so a silent server never holds OpenCV's
  process-wide open mutex (``ffmpeg``) that every other camera's reconnect waits on.
- failed attempts are retried with exponential backoff up to a cap; the attempt count
  resets once frames flow again.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import Enum
from typing import Callable

import cv2

from streamclf.batching import Batcher, DropPolicy, DropReason
from streamclf.capture.camera import Camera, CameraState, PrepareFrame, StatusCallback
from streamclf.capture.ffmpeg import open_capture
from streamclf.capture.probe import probe_stream
from streamclf.config import CameraConfig
from streamclf.logs import redact

log = logging.getLogger(__name__)


class AttemptPhase(str, Enum):
    """Where an open-and-read attempt is; the watchdog's limit depends on it."""

    PROBING = "probing"  # checking the server with a plain socket
    QUEUED = "queued"  # waiting behind other cameras' opens (OpenCV's one-open-at-a-time rule)
    OPENING = "opening"  # inside OpenCV's open()
    READING = "reading"  # opened; frames are expected every stall_timeout_s at least


OpenSource = Callable[..., cv2.VideoCapture]  # open_capture's signature
ProbeSource = Callable[[str, float], "str | None"]


class _Attempt:
    """One open-and-read attempt of a live source, run by its own reader thread.

    The reader writes the progress fields; the camera's supervisor reads them to decide
    whether the attempt is stuck. ``abandoned`` tells a reader that the supervisor has
    given up on it: it must not deliver frames or report state any more.
    """

    def __init__(self) -> None:
        self.phase = AttemptPhase.PROBING
        self.phase_since = time.monotonic()
        self.last_frame: float | None = None  # time.monotonic() of the newest frame
        self.frames = 0
        self.reason = ""
        self.error = ""
        self.done = threading.Event()
        self.abandoned = threading.Event()

    def enter(self, phase: AttemptPhase) -> None:
        self.phase, self.phase_since = phase, time.monotonic()

    def fail(self, reason: str, error: str) -> None:
        self.reason, self.error = reason, error


class LiveCamera(Camera):
    """An RTSP/HTTP stream or a webcam: watchdog, reconnects with exponential backoff, newest frame wins.

    ``open_source`` and ``probe`` are injectable so tests can pass a capture that hangs.
    """

    watch_interval_s = 0.1

    def __init__(
        self, name: str, cfg: CameraConfig, batcher: Batcher, on_status: StatusCallback, source: int | str,
        open_source: OpenSource = open_capture, probe: ProbeSource = probe_stream, prepare: PrepareFrame | None = None,
    ):
        super().__init__(name, cfg, batcher, on_status, source, prepare)
        self._open_source = open_source
        self._probe = probe
        self._current: _Attempt | None = None
        self._abandoned_readers: list[threading.Thread] = []

    def _run(self) -> None:
        attempts = 0  # failed attempts since frames last flowed
        backoff = self.cfg.reconnect_backoff_initial_s
        last_problem = None
        while not self._stop.is_set():
            attempt = _Attempt()
            reader = threading.Thread(
                target=self._read_attempt, args=(attempt, attempts), name=f"camera-{self.name}-reader", daemon=True
            )
            with self._state_lock:
                self._current = attempt
            reader.start()
            stuck = self._watch(attempt)
            if stuck:
                self._abandon(attempt, reader)
            if self._stop.is_set():
                attempt.abandoned.set()
                reader.join(0.2)  # a reader blocked in OpenCV is left behind; it is a daemon thread
                break
            if attempt.frames:  # it worked for a while: start counting (and backing off) afresh
                attempts, backoff, last_problem = 0, self.cfg.reconnect_backoff_initial_s, None
            attempts += 1
            self.reconnects += 1
            problem = (attempt.reason, attempt.error)
            # Logged once per distinct problem, so a camera that stays down does not flood the log.
            level = logging.WARNING if problem != last_problem else logging.DEBUG
            log.log(level, "camera %s: %s: %s (attempt %d); retrying in %.1f s",
                    self.name, attempt.reason, redact(attempt.error), attempts, backoff)
            last_problem = problem
            with self._state_lock:
                self._current = None
                self._set_state(CameraState.OFFLINE, attempt.reason, attempts, attempt.error)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.cfg.reconnect_backoff_max_s)

    def _watch(self, attempt: _Attempt) -> bool:
        """Wait for the attempt to end; True if the watchdog gave up on it (stalled or hung opening)."""
        stall_s = self.cfg.stall_timeout_s
        # FFmpeg's own timeout should end an open long before this; it is the backstop for builds where it does not.
        open_limit_s = self.cfg.open_timeout_s + stall_s
        while not attempt.done.wait(self.watch_interval_s):
            if self._stop.is_set():
                return False
            now = time.monotonic()
            if attempt.phase is AttemptPhase.READING:
                quiet = now - (attempt.last_frame or attempt.phase_since)
                if quiet > stall_s:
                    attempt.fail("stalled", f"no frame for {quiet:.1f} s (stall_timeout_s {stall_s:g})")
                    return True
            elif attempt.phase is not AttemptPhase.QUEUED and now - attempt.phase_since > open_limit_s:
                # Not while queued: that wait is OpenCV's one-open-at-a-time rule, and ends when the
                # open ahead of us ends or is itself given up by FFmpeg.
                attempt.fail("open hung", f"{attempt.phase.value} did not return within {open_limit_s:g} s")
                return True
        return False

    def _abandon(self, attempt: _Attempt, reader: threading.Thread) -> None:
        attempt.abandoned.set()
        self._abandoned_readers = [t for t in self._abandoned_readers if t.is_alive()]
        if reader.is_alive():
            self._abandoned_readers.append(reader)
        if len(self._abandoned_readers) > 1:
            log.warning("camera %s: %d abandoned capture(s) still blocked inside OpenCV",
                        self.name, len(self._abandoned_readers))

    def _read_attempt(self, attempt: _Attempt, attempts: int) -> None:
        cap = None
        try:
            source = self.source
            if isinstance(source, str):
                problem = self._probe(source, self.cfg.open_timeout_s)
                if problem:
                    attempt.fail("cannot connect", problem)
                    return
            attempt.enter(AttemptPhase.QUEUED)
            cap = self._open_source(source, self.cfg.open_timeout_s, self.cfg.read_timeout_s, self.cfg.rtsp_transport,
                                    started=lambda: attempt.enter(AttemptPhase.OPENING),
                                    decode_threads=self.cfg.decode_threads)
            if attempt.abandoned.is_set():
                return
            if not cap.isOpened():
                attempt.fail("cannot open stream", f"OpenCV/FFmpeg could not open {redact(str(source))}")
                return
            attempt.enter(AttemptPhase.READING)
            self._read_frames(cap, attempt, attempts)
        except Exception as exc:  # one camera's failure must never escape its thread
            attempt.fail("capture failed", f"{type(exc).__name__}: {exc}")
        finally:
            if cap is not None:
                cap.release()
            attempt.done.set()

    def _read_frames(self, cap: cv2.VideoCapture, attempt: _Attempt, attempts: int) -> None:
        period = 1.0 / self.cfg.fps
        next_due = time.time()
        while not self._stop.is_set() and not attempt.abandoned.is_set():
            ok = cap.grab()  # decodes; the colour conversion waits for retrieve(), for sampled frames only
            if self._stop.is_set() or attempt.abandoned.is_set():
                return
            if not ok:
                if attempt.frames:
                    attempt.fail("stream lost", "read failed: the stream ended, timed out or sent undecodable data")
                else:
                    attempt.fail("no frames", "opened, but no frame could be read or decoded")
                return
            now = time.time()
            attempt.last_frame = time.monotonic()
            attempt.frames += 1
            self.frames_read += 1
            if attempt.frames == 1:
                with self._state_lock:
                    if attempt.abandoned.is_set() or attempt is not self._current:
                        return
                    log.info("camera %s: receiving frames (%dx%d)", self.name,
                             cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                    if attempts:
                        log.info("camera %s: back online after %d failed attempt(s)", self.name, attempts)
                    # The previous error stays in the detail for context; the attempt count starts afresh.
                    self._set_state(CameraState.ONLINE, "receiving frames", 0, self.last_status.last_error)
            if now + 1e-6 < next_due:
                continue
            next_due = max(next_due + period, now)
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                self.batcher.count_drop(self.name, DropReason.DECODE_ERROR)
                continue
            self.frames_sampled += 1
            self.batcher.put(self._frame(bgr, self.frames_sampled - 1, now), DropPolicy.LATEST_PER_CAMERA)
