"""Opening a video source with OpenCV's FFmpeg backend, with each camera's own FFmpeg options.

OpenCV serialises FFmpeg ``open()`` calls across the whole process with one mutex, and reads
its FFmpeg options from the environment inside that call; this module is the one place that
sets them, so two cameras with different transports never swap options.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

import cv2

from streamclf.config import is_video_device

_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# The user's own FFmpeg options (``key;value|key;value``), kept; each camera's rtsp_transport is added to them.
_USER_FFMPEG_OPTIONS = os.environ.get(_FFMPEG_OPTIONS_ENV, "")
# OpenCV reads the options from the environment inside open(). Setting the variable and opening must
# happen together, or two cameras with different transports could swap options. OpenCV already holds
# a process-wide mutex for the whole of open(), so this lock adds no wait that was not there.
_FFMPEG_OPEN_LOCK = threading.Lock()

# FFmpeg's default analyzeduration (5 s) makes every RTSP open of a low frame rate stream wait that
# long, and opens run one at a time, so one slow camera delays every reconnect. The user's value wins.
_DEFAULT_FFMPEG_OPTIONS = {"analyzeduration": "1000000"}

if "OPENCV_LOG_LEVEL" not in os.environ:
    # OpenCV's own warnings ("Stream timeout triggered", "can't be used to capture by name") name no
    # camera; our log lines say the same with the camera name. OPENCV_LOG_LEVEL=WARNING brings them back.
    # OpenCV 5 has cv2.utils.logging; OpenCV 4 (which nvidia-pytriton's numpy < 2 brings) only the flat
    # call, where 2 is LOG_LEVEL_ERROR.
    _opencv_logging = getattr(cv2.utils, "logging", None)
    if _opencv_logging is not None:
        _opencv_logging.setLogLevel(_opencv_logging.LOG_LEVEL_ERROR)
    else:
        cv2.setLogLevel(2)


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
    if is_video_device(source):  # /dev/video7, /dev/v4l/by-id/...: Video4Linux, not FFmpeg's file reader
        if started:
            started()
        return cv2.VideoCapture(source, cv2.CAP_V4L2)
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
