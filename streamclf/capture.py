"""Capture: one thread per camera turning a video source into sampled frames.

Files are sampled by position (frame index and media time), so a non-realtime run is
deterministic and drops nothing; realtime files are paced to the wall clock like a
camera. Live sources (RTSP/HTTP URLs, webcam indexes) decode continuously and hand the
batcher only their newest frame, so a slow model never classifies stale video. Each
camera owns its thread and its VideoCapture: no lock or blocking call is shared
across cameras, so one camera's fault never delays the others.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import cv2
import numpy as np

from streamclf.batching import Batcher, DropPolicy, DropReason
from streamclf.config import CameraConfig
from streamclf.entities import Frame
from streamclf.logs import redact

log = logging.getLogger(__name__)

# RTSP over TCP survives lossy links and NAT better than UDP; a user's own setting wins.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


class CameraState(str, Enum):
    STARTING = "starting"
    ONLINE = "online"
    OFFLINE = "offline"
    ENDED = "ended"  # a file that reached its end and does not loop


@dataclass(frozen=True)
class CameraStatus:
    """A camera's state change, as reported to the publisher. ``last_error`` is redacted."""

    camera: str
    state: CameraState
    reason: str = ""
    reconnect_attempts: int = 0
    last_error: str = ""


StatusCallback = Callable[[CameraStatus], None]


def open_capture(
    source: int | str, open_timeout_s: float, read_timeout_s: float, decode_threads: int = 0
) -> cv2.VideoCapture:
    """Open a source with the FFmpeg backend for files and URLs, where the timeouts apply.

    ``decode_threads`` caps FFmpeg's decoder threads (0: FFmpeg's default, one per core). Each
    camera already decodes on its own thread, so one decoder thread per camera by default keeps
    decoding from fighting the model's threads for the cores.
    """
    if isinstance(source, int):
        return cv2.VideoCapture(source)
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000),
    ]
    if decode_threads and hasattr(cv2, "CAP_PROP_N_THREADS"):  # OpenCV >= 4.7
        params += [cv2.CAP_PROP_N_THREADS, decode_threads]
    return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)


class Camera:
    """Base: a named source, a thread, a stop event and status reporting."""

    def __init__(self, name: str, cfg: CameraConfig, batcher: Batcher, on_status: StatusCallback, source: int | str):
        self.name = name
        self.cfg = cfg
        self.source = source
        self.batcher = batcher
        self._on_status = on_status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run_guarded, name=f"camera-{name}", daemon=True)
        self.state = CameraState.STARTING
        self.frames_read = 0
        self.frames_sampled = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def finished(self) -> bool:
        """True once the camera will produce no more frames (file ended, or stopped)."""
        return self.state is CameraState.ENDED or not self._thread.is_alive() and self._thread.ident is not None

    def _set_state(self, state: CameraState, reason: str = "", attempts: int = 0, error: str = "") -> None:
        if state is self.state and state is not CameraState.OFFLINE:
            return
        self.state = state
        status = CameraStatus(self.name, state, reason, attempts, redact(error))
        try:
            self._on_status(status)
        except Exception:  # a failing listener must not kill capture
            log.exception("camera %s: status listener failed", self.name)

    def _run_guarded(self) -> None:
        try:
            self._run()
        except Exception as exc:
            log.exception("camera %s: capture thread failed", self.name)
            self._set_state(CameraState.OFFLINE, "capture thread failed", error=str(exc))

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _frame(self, bgr: np.ndarray, index: int, media_time: float) -> Frame:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return Frame(self.name, rgb, index, media_time, time.monotonic())


class FileCamera(Camera):
    """A video file, sampled at ``fps`` by media time; ends at end of file unless ``loop``."""

    def _run(self) -> None:
        pass_offset_s = 0.0  # media time added per loop pass, so frame_time keeps increasing
        index_offset = 0
        while not self._stop.is_set():
            cap = open_capture(self.source, 10.0, 10.0, self.cfg.decode_threads)
            if not cap.isOpened():
                log.error("camera %s: cannot open video file %s", self.name, redact(str(self.source)))
                self._set_state(CameraState.ENDED, "cannot open file", error=f"cannot open {self.source}")
                return
            src_fps = cap.get(cv2.CAP_PROP_FPS)
            if not src_fps or src_fps != src_fps or src_fps > 1000:
                src_fps = 25.0
                log.warning("camera %s: file reports no frame rate; assuming %.0f fps", self.name, src_fps)
            n, duration = self._read_pass(cap, src_fps, pass_offset_s, index_offset)
            cap.release()
            if n == 0:
                log.error("camera %s: %s has no decodable frames", self.name, redact(str(self.source)))
                self._set_state(CameraState.ENDED, "no decodable frames", error="no decodable frames")
                return
            if not self.cfg.loop or self._stop.is_set():
                break
            pass_offset_s += duration
            index_offset += n
        if not self._stop.is_set():
            log.info("camera %s: end of file after %d frames (%d sampled)", self.name, self.frames_read, self.frames_sampled)
        self._set_state(CameraState.ENDED, "end of file")

    def _read_pass(self, cap: cv2.VideoCapture, src_fps: float, time_offset: float, index_offset: int) -> tuple[int, float]:
        """Read the file once; returns (frames read, media duration in seconds)."""
        period = 1.0 / self.cfg.fps
        next_due = 0.0
        wall_start = time.monotonic()
        policy = DropPolicy.LATEST_PER_CAMERA if self.cfg.realtime else DropPolicy.WAIT
        i = 0
        while not self._stop.is_set():
            # grab() without retrieve() skips the colour conversion of frames we do not sample.
            if not cap.grab():
                break
            media_t = i / src_fps
            i += 1
            self.frames_read += 1
            if media_t + 1e-6 < next_due:
                continue
            while next_due <= media_t + 1e-6:
                next_due += period
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                self.batcher.count_drop(self.name, DropReason.DECODE_ERROR)
                continue
            if self.cfg.realtime:
                delay = wall_start + media_t - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            self._set_state(CameraState.ONLINE, "reading file")
            frame = self._frame(bgr, index_offset + i - 1, time_offset + media_t)
            self.frames_sampled += 1
            while not self.batcher.put(frame, policy, timeout=0.5):
                if self._stop.is_set() or policy is not DropPolicy.WAIT:
                    break
        return i, i / src_fps


class LiveCamera(Camera):
    """An RTSP/HTTP stream or a webcam: reconnects with exponential backoff, newest frame wins."""

    open_timeout_s = 10.0
    read_timeout_s = 10.0
    backoff_initial_s = 1.0
    backoff_max_s = 30.0

    def _run(self) -> None:
        attempts = 0
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            cap = open_capture(self.source, self.open_timeout_s, self.read_timeout_s, self.cfg.decode_threads)
            if not cap.isOpened():
                attempts += 1
                err = f"cannot open {redact(str(self.source))}"
                log.warning("camera %s: %s (attempt %d); retrying in %.0f s", self.name, err, attempts, backoff)
                self._set_state(CameraState.OFFLINE, "cannot open stream", attempts, err)
            else:
                got_frames = self._read_until_failure(cap, attempts)
                cap.release()
                if self._stop.is_set():
                    break
                if got_frames:
                    attempts, backoff = 0, self.backoff_initial_s
                attempts += 1
                err = "stream ended or stopped delivering frames"
                log.warning("camera %s: %s; reconnecting in %.0f s", self.name, err, backoff)
                self._set_state(CameraState.OFFLINE, err, attempts, err)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.backoff_max_s)

    def _read_until_failure(self, cap: cv2.VideoCapture, attempts: int) -> bool:
        period = 1.0 / self.cfg.fps
        next_due = time.time()
        got_any = False
        while not self._stop.is_set():
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return got_any
            now = time.time()
            self.frames_read += 1
            if not got_any:
                got_any = True
                log.info("camera %s: receiving frames (%dx%d)", self.name, bgr.shape[1], bgr.shape[0])
                self._set_state(CameraState.ONLINE, "receiving frames", attempts)
            if now + 1e-6 < next_due:
                continue
            next_due = max(next_due + period, now)
            self.frames_sampled += 1
            self.batcher.put(self._frame(bgr, self.frames_sampled - 1, now), DropPolicy.LATEST_PER_CAMERA)
        return got_any


def make_camera(
    name: str, cfg: CameraConfig, batcher: Batcher, on_status: StatusCallback, base_dir: str | None = None
) -> Camera:
    """The right Camera for ``cfg.source``; relative file paths resolve against ``base_dir``."""
    if cfg.is_file:
        path = os.path.expanduser(str(cfg.source))
        if base_dir and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        return FileCamera(name, cfg, batcher, on_status, path)
    source = cfg.source
    if isinstance(source, str) and source.isdigit():
        source = int(source)
    return LiveCamera(name, cfg, batcher, on_status, source)
