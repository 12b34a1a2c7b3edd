"""Capture: one thread per camera turning a video source into sampled frames.

Files are sampled by position (frame index and media time), so a non-realtime run is
deterministic and drops nothing; realtime files are paced to the wall clock like a
camera. Live sources (RTSP/HTTP URLs, webcam indexes) decode continuously and hand the
batcher only their newest frame, so a slow model never classifies stale video; frames
between two samples are decoded (``grab()``) but never converted to BGR (``retrieve()``).
Each camera owns its thread and its VideoCapture, so one camera's fault never delays the
others.

Live sources fail in ways OpenCV does not handle on its own, so each live camera runs a
small supervisor:

- every open-and-read attempt runs in its own reader thread. ``VideoCapture.grab()`` can
  block with no timeout after a disconnect on some builds, so the supervisor never waits
  on it: a watchdog marks the camera offline when no frame arrives for
  ``stall_timeout_s`` and starts a fresh reader; the stuck one is abandoned and releases
  its capture itself if FFmpeg ever returns (releasing it from another thread while it is
  inside ``grab()`` could crash the process).
- OpenCV serialises FFmpeg ``open()`` calls across the whole process with one mutex, so a
  source that hangs while opening would hold up every other camera's (re)connect for up
  to ``open_timeout_s``. Network sources are therefore probed first, in the camera's own
  thread with plain sockets: a closed port, a port that accepts and says nothing, or a
  server that is not RTSP/HTTP fails there without touching OpenCV.
- failed attempts are retried with exponential backoff up to a cap; the attempt count
  resets once frames flow again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable
from urllib.parse import urlsplit

import cv2
import numpy as np

from streamclf.batching import Batcher, DropPolicy, DropReason
from streamclf.config import CameraConfig
from streamclf.entities import Frame
from streamclf.logs import redact

log = logging.getLogger(__name__)

_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# The user's own FFmpeg options (``key;value|key;value``), kept; each camera's rtsp_transport is added to them.
_USER_FFMPEG_OPTIONS = os.environ.get(_FFMPEG_OPTIONS_ENV, "")
# OpenCV reads the options from the environment inside open(). Setting the variable and opening must
# happen together, or two cameras with different transports could swap options. OpenCV already holds
# a process-wide mutex for the whole of open(), so this lock adds no wait that was not there.
_FFMPEG_OPEN_LOCK = threading.Lock()

if "OPENCV_LOG_LEVEL" not in os.environ:
    # OpenCV's own warnings ("Stream timeout triggered", "can't be used to capture by name") name no
    # camera; our log lines say the same with the camera name. OPENCV_LOG_LEVEL=WARNING brings them back.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class CameraState(str, Enum):
    STARTING = "starting"
    ONLINE = "online"
    OFFLINE = "offline"
    ENDED = "ended"  # a file that reached its end (or could not be read) and does not loop
    STOPPED = "stopped"  # the daemon shut down
    DISABLED = "disabled"  # enabled: false in the config


@dataclass(frozen=True)
class CameraStatus:
    """A camera's state change, as reported to the publisher.

    ``reconnect_attempts`` counts failed attempts since frames last flowed; ``reconnects`` every
    attempt since start. ``last_error`` is redacted. ``changed_at`` is epoch seconds.
    """

    camera: str
    state: CameraState
    reason: str = ""
    reconnect_attempts: int = 0
    last_error: str = ""
    reconnects: int = 0
    changed_at: float = field(default_factory=time.time)

    def detail(self) -> dict:
        """The JSON body of ``<prefix>/<camera>/status/detail``."""
        return {
            "camera": self.camera,
            "state": self.state.value,
            "reason": self.reason,
            "reconnect_attempts": self.reconnect_attempts,
            "reconnects": self.reconnects,
            "last_error": redact(self.last_error),
            "since": round(self.changed_at, 3),
        }


StatusCallback = Callable[[CameraStatus], None]


# FFmpeg's default analyzeduration (5 s) makes every RTSP open take about 5 s on a low frame rate
# stream, and opens run one at a time: with 1 s a reconnect is about 1.5 s. The user's own value wins.
_DEFAULT_FFMPEG_OPTIONS = {"analyzeduration": "1000000"}


def ffmpeg_capture_options(rtsp_transport: str, user_options: str = "") -> str:
    """The ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` value for one camera: its transport, the user's options, our defaults."""
    pairs = [p for p in user_options.split("|") if p and not p.startswith("rtsp_transport;")]
    keys = {p.split(";", 1)[0] for p in pairs}
    defaults = [f"{k};{v}" for k, v in _DEFAULT_FFMPEG_OPTIONS.items() if k not in keys]
    return "|".join([f"rtsp_transport;{rtsp_transport}", *pairs, *defaults])


def open_capture(
    source: int | str, open_timeout_s: float, read_timeout_s: float, rtsp_transport: str = "tcp",
    started: Callable[[], None] | None = None, decode_threads: int = 0,
) -> cv2.VideoCapture:
    """Open a source with the FFmpeg backend for files and URLs, where the timeouts (seconds) apply.

    FFmpeg opens run one at a time (see the module docstring); ``started()`` is called when
    this one's turn comes, so a watchdog can time the open itself rather than the queue.
    ``decode_threads`` caps FFmpeg's decoder threads (0: FFmpeg's default, one per core). Each
    camera already decodes on its own thread, so one decoder thread per camera by default keeps
    decoding from fighting the model's threads for the cores.
    """
    if isinstance(source, int):
        if started:
            started()
        return cv2.VideoCapture(source)
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000),
    ]
    if decode_threads and hasattr(cv2, "CAP_PROP_N_THREADS"):  # OpenCV >= 4.7
        params += [cv2.CAP_PROP_N_THREADS, decode_threads]
    options = ffmpeg_capture_options(rtsp_transport, _USER_FFMPEG_OPTIONS)
    with _FFMPEG_OPEN_LOCK:
        if started:
            started()
        if os.environ.get(_FFMPEG_OPTIONS_ENV) != options:
            os.environ[_FFMPEG_OPTIONS_ENV] = options
        return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)


def probe_stream(url: str, timeout_s: float) -> str | None:
    """Check that an rtsp:// or http:// server answers like one, within ``timeout_s`` seconds.

    Returns None when it does (or for schemes it cannot check), else why not, without
    credentials. Runs before OpenCV's open(), which would hold a process-wide mutex while a
    silent server makes it wait.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("rtsp", "http") or not parts.hostname:
        return None
    try:
        port = parts.port or (554 if scheme == "rtsp" else 80)
    except ValueError:
        return f"invalid port in {redact(url)}"
    host = parts.hostname
    where = f"{host}:{port}"
    target = f"{scheme}://{where}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    if scheme == "rtsp":
        request = f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: streamclf\r\n\r\n"
        expected, kind = b"RTSP/", "RTSP"
    else:
        request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {where}\r\nUser-Agent: streamclf\r\n\r\n"
        expected, kind = b"HTTP/", "HTTP"
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except socket.timeout:
        return f"no TCP connection to {where} within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot connect to {where}: {exc.strerror or exc}"
    with sock:
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.sendall(request.encode())
            reply = sock.recv(64)
        except socket.timeout:
            return f"{where} accepted the connection but sent nothing within {timeout_s:g} s"
        except OSError as exc:
            return f"{where} failed while answering: {exc.strerror or exc}"
    if not reply:
        return f"{where} closed the connection without answering"
    if not reply.startswith(expected):
        return f"{where} is not an {kind} server (it answered {reply[:24]!r})"
    return None


def _enter_idle_priority(camera: str) -> bool:
    """Move the calling thread (and the threads it starts) to Linux's SCHED_IDLE class.

    Why: torch runs a batch on every core, split into equal parts that wait for each other. A
    decoder that takes a core from one of them for a millisecond can stall the others for that
    millisecond too, and non-realtime files are decoded as fast as the model takes frames, so
    their decoding always has work to do (measured in README "Performance"). At idle priority it runs only on CPU time nobody else
    wants: gaps in the model's work, and between batches. A live camera keeps normal priority:
    its frames arrive at the camera's pace and are late if the reader waits (see
    ``CameraConfig.decode_priority``). Returns False where the platform has no SCHED_IDLE.
    """
    if not hasattr(os, "SCHED_IDLE"):
        log.info("camera %s: decode_priority idle needs Linux's SCHED_IDLE; decoding at normal priority", camera)
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread, on Linux
    except OSError as exc:  # e.g. a seccomp profile that forbids it: decode at normal priority
        log.warning("camera %s: could not lower the decoding priority (%s); decoding at normal priority",
                    camera, exc)
        return False
    return True


PrepareFrame = Callable[[np.ndarray], object]  # a frame -> its model input (ClipClassifier.prepare_image)


class Camera:
    """Base: a named source, a thread, a stop event and status reporting.

    ``prepare``, when given, is the part of preprocessing that can run ahead (the resize and
    crop). It runs on the capture thread only when that thread decodes at idle priority: there
    it costs the model nothing, and the inference thread, which every batch waits for, only
    copies the result. At normal priority the same work would compete with the model for the
    cores just as it does in the inference thread, so it is left there.
    """

    def __init__(self, name: str, cfg: CameraConfig, batcher: Batcher, on_status: StatusCallback, source: int | str,
                 prepare: PrepareFrame | None = None):
        self.name = name
        self.cfg = cfg
        self.source = source
        self.batcher = batcher
        self._on_status = on_status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run_guarded, name=f"camera-{name}", daemon=True)
        self._state_lock = threading.RLock()  # this camera's own; never shared with another camera
        self.state = CameraState.STARTING
        self.frames_read = 0
        self.frames_sampled = 0
        self.reconnects = 0  # failed attempts and stalls since start
        self.last_status = CameraStatus(name, CameraState.STARTING, "starting")
        self._prepare = prepare
        self._prepare_here = False  # decided on the capture thread, once its priority is known

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
        with self._state_lock:
            if state is self.state and state is not CameraState.OFFLINE:
                return
            self.state = state
            status = CameraStatus(self.name, state, reason, attempts, redact(error), self.reconnects)
            self.last_status = status
            try:
                self._on_status(status)
            except Exception:  # a failing listener must not kill capture
                log.exception("camera %s: status listener failed", self.name)

    def _run_guarded(self) -> None:
        if self.cfg.idle_decoding and _enter_idle_priority(self.name):
            self._prepare_here = self._prepare is not None
        try:
            self._run()
        except Exception as exc:
            log.exception("camera %s: capture thread failed", self.name)
            self._set_state(CameraState.OFFLINE, "capture thread failed", error=str(exc))

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _frame(self, bgr: np.ndarray, index: int, media_time: float) -> Frame:
        # Kept in OpenCV's BGR order: the preprocessor reads the channels in RGB order from the
        # 224x224 crop, and a full-size conversion here would cost about 0.3 ms per 1280x720 frame.
        captured = time.monotonic()
        model_input = None
        if self._prepare_here:
            try:
                model_input = self._prepare(bgr)
            except Exception:  # the inference thread prepares it instead; said once, not per frame
                log.exception("camera %s: preparing frames for the model failed; the inference thread does it",
                              self.name)
                self._prepare_here = False
        return Frame(self.name, bgr, index, media_time, captured, model_input)


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
                if not os.path.exists(str(self.source)):
                    reason, err = "file not found", f"{where} does not exist"
                else:
                    reason, err = "cannot decode file", f"{where} is not a video OpenCV/FFmpeg can read (corrupt or truncated?)"
                log.error("camera %s: %s", self.name, err)
                self._set_state(CameraState.ENDED, reason, error=err)
                return
            src_fps = cap.get(cv2.CAP_PROP_FPS)
            if not src_fps or src_fps != src_fps or src_fps > 1000:
                src_fps = 25.0
                log.warning("camera %s: file reports no frame rate; assuming %.0f fps", self.name, src_fps)
            expected = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            n, duration = self._read_pass(cap, src_fps, pass_offset_s, index_offset)
            cap.release()
            if n == 0:
                err = f"{where} has no decodable frames"
                log.error("camera %s: %s", self.name, err)
                self._set_state(CameraState.ENDED, "no decodable frames", error=err)
                return
            if not self._stop.is_set() and expected and expected == expected and n < expected - 1:
                err = f"{where} ended after {n} of {int(expected)} frames: truncated or corrupt"
                log.error("camera %s: %s", self.name, err)
                self._set_state(CameraState.ENDED, "file truncated or corrupt", error=err)
                return
            if not self.cfg.loop or self._stop.is_set():
                break
            pass_offset_s += duration
            index_offset += n
        if self._stop.is_set():
            return  # stopped, not ended: the pipeline reports that
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
            if self.state is not CameraState.ONLINE:  # once per pass, not a lock round-trip per frame
                self._set_state(CameraState.ONLINE, "reading file")
            frame = self._frame(bgr, index_offset + i - 1, time_offset + media_t)
            self.frames_sampled += 1
            while not self.batcher.put(frame, policy, timeout=0.5):
                if self._stop.is_set() or policy is not DropPolicy.WAIT:
                    break
        return i, i / src_fps


OpenSource = Callable[..., cv2.VideoCapture]  # open_capture's signature
ProbeSource = Callable[[str, float], "str | None"]


class _Attempt:
    """One open-and-read attempt of a live source, run by its own reader thread.

    The reader writes the progress fields; the camera's supervisor reads them to decide
    whether the attempt is stuck. ``abandoned`` tells a reader that the supervisor has
    given up on it: it must not deliver frames or report state any more.
    """

    def __init__(self) -> None:
        self.phase = "probing"  # probing -> queued (behind other cameras' opens) -> opening -> reading
        self.phase_since = time.monotonic()
        self.last_frame: float | None = None  # time.monotonic() of the newest frame
        self.frames = 0
        self.reason = ""
        self.error = ""
        self.done = threading.Event()
        self.abandoned = threading.Event()

    def enter(self, phase: str) -> None:
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
            if attempt.phase == "reading":
                quiet = now - (attempt.last_frame or attempt.phase_since)
                if quiet > stall_s:
                    attempt.fail("stalled", f"no frame for {quiet:.1f} s (stall_timeout_s {stall_s:g})")
                    return True
            elif attempt.phase != "queued" and now - attempt.phase_since > open_limit_s:
                # Not while queued: that wait is OpenCV's one-open-at-a-time rule, and ends when the
                # open ahead of us ends or is itself given up by FFmpeg.
                attempt.fail("open hung", f"{attempt.phase} did not return within {open_limit_s:g} s")
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
            attempt.enter("queued")
            cap = self._open_source(source, self.cfg.open_timeout_s, self.cfg.read_timeout_s, self.cfg.rtsp_transport,
                                    started=lambda: attempt.enter("opening"), decode_threads=self.cfg.decode_threads)
            if attempt.abandoned.is_set():
                return
            if not cap.isOpened():
                attempt.fail("cannot open stream", f"OpenCV/FFmpeg could not open {redact(str(source))}")
                return
            attempt.enter("reading")
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


def make_camera(
    name: str, cfg: CameraConfig, batcher: Batcher, on_status: StatusCallback, base_dir: str | None = None,
    prepare: PrepareFrame | None = None,
) -> Camera:
    """The right Camera for ``cfg.source``; relative file paths resolve against ``base_dir``."""
    if cfg.is_file:
        path = os.path.expanduser(str(cfg.source))
        if base_dir and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        return FileCamera(name, cfg, batcher, on_status, path, prepare)
    source = cfg.source
    if isinstance(source, str) and source.isdigit():
        source = int(source)
    return LiveCamera(name, cfg, batcher, on_status, source, prepare=prepare)
