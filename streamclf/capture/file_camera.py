"""Video files as cameras: sampled by media time, deterministic, paced to the clock only when ``realtime``."""

from __future__ import annotations

import logging
import os
import time

import cv2

from streamclf.batching import DropPolicy, DropReason
from streamclf.capture.camera import Camera, CameraState
from streamclf.capture.ffmpeg import open_capture
from streamclf.logs import redact

log = logging.getLogger(__name__)

# Above this a file's reported frame rate is a container's placeholder, not a rate.
_MAX_PLAUSIBLE_FPS = 1000
_ASSUMED_FPS = 25.0


class FileCamera(Camera):
    """A video file, sampled at ``fps`` by media time; ends at end of file unless ``loop``.

    A file that cannot be read is not retried (it will not change by itself): the camera is
    marked ended with the reason, and the other cameras go on.
    """

    def _run(self) -> None:
        pass_offset_s = 0.0  # media time added per loop pass, so frame_time keeps increasing
        index_offset = 0
        where = redact(str(self.source))
        while not self._stop.is_set():
            cap = open_capture(self.source, self.cfg.open_timeout_s, self.cfg.read_timeout_s,
                               decode_threads=self.cfg.decode_threads)
            if not cap.isOpened():
                self._end_unreadable(where)
                return
            src_fps = self._frame_rate(cap)
            expected = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            n, duration, variable_rate = self._read_pass(cap, src_fps, pass_offset_s, index_offset)
            cap.release()
            if n == 0 and self._stop.is_set():
                return  # stopped before the first frame: says nothing about the file
            if n == 0:
                self._end_with_error("no decodable frames", f"{where} has no decodable frames")
                return
            # A variable-rate file's frame count is the container's estimate (duration x a nominal rate).
            if not self._stop.is_set() and not variable_rate and expected and expected == expected and n < expected - 1:
                self._end_with_error("file truncated or corrupt",
                                     f"{where} ended after {n} of {int(expected)} frames: truncated or corrupt")
                return
            if not self.cfg.loop or self._stop.is_set():
                break
            pass_offset_s += duration
            index_offset += n
        if self._stop.is_set():
            return  # stopped, not ended: the pipeline reports that
        log.info("camera %s: end of file after %d frames (%d sampled)",
                 self.name, self.frames_read, self.frames_sampled)
        self._set_state(CameraState.ENDED, "end of file")

    def _end_unreadable(self, where: str) -> None:
        if not os.path.exists(str(self.source)):
            self._end_with_error("file not found", f"{where} does not exist")
        else:
            self._end_with_error("cannot decode file",
                                 f"{where} is not a video OpenCV/FFmpeg can read (corrupt or truncated?)")

    def _end_with_error(self, reason: str, error: str) -> None:
        log.error("camera %s: %s", self.name, error)
        self._set_state(CameraState.ENDED, reason, error=error)

    def _frame_rate(self, cap: cv2.VideoCapture) -> float:
        """The file's frame rate in frames per second, or an assumed one where it reports none."""
        src_fps = cap.get(cv2.CAP_PROP_FPS)
        if not src_fps or src_fps != src_fps or src_fps > _MAX_PLAUSIBLE_FPS:  # 0, NaN or a placeholder
            src_fps = _ASSUMED_FPS
            log.warning("camera %s: file reports no frame rate; assuming %.0f fps", self.name, src_fps)
        return src_fps

    def _read_pass(self, cap: cv2.VideoCapture, src_fps: float, time_offset: float,
                   index_offset: int) -> tuple[int, float, bool]:
        """Read the file once; returns (frames read, media duration in seconds, whether the rate varied).

        A frame's media time is its own timestamp: in a variable-frame-rate file (phones, screen
        recordings, cameras that drop frames) index / average rate is off by seconds.
        """
        period = 1.0 / self.cfg.fps
        next_due = 0.0
        wall_start = time.monotonic()
        policy = DropPolicy.LATEST_PER_CAMERA if self.cfg.realtime else DropPolicy.WAIT
        i, media_t, variable_rate = 0, 0.0, False
        while not self._stop.is_set():
            # grab() without retrieve() skips the colour conversion of frames we do not sample.
            if not cap.grab():
                break
            media_t = _media_time(cap, i, media_t, src_fps)
            variable_rate = variable_rate or abs(media_t - i / src_fps) > 1.5 / src_fps
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
            if self.state is not CameraState.ONLINE:  # once per pass, not a lock round-trip per frame
                self._set_state(CameraState.ONLINE, "reading file")
            frame = self._frame(bgr, index_offset + i - 1, time_offset + media_t)
            self.frames_sampled += 1
            while not self.batcher.put(frame, policy, timeout=0.5):
                if self._stop.is_set() or policy is not DropPolicy.WAIT:
                    break
        # The average rate spans the last frame's own duration too; never less than where the pass got to.
        return i, max(i / src_fps, media_t + 1e-3), variable_rate


def _media_time(cap: cv2.VideoCapture, index: int, previous_s: float, src_fps: float) -> float:
    """The grabbed frame's own time in the file, seconds; from the average rate where the file has none."""
    own = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
    if index == 0:
        return own if 0.0 <= own < 1e9 else 0.0
    if previous_s < own < 1e9:  # not NaN, and later than the frame before
        return own
    return previous_s + 1.0 / src_fps
