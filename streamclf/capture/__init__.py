"""Capture: one thread per camera turning a video source into sampled frames.

Files are sampled by position (frame index and media time), so a non-realtime run is
deterministic and drops nothing; realtime files are paced to the wall clock like a
camera. Live sources (RTSP/HTTP URLs, webcam indexes) decode continuously and hand the
batcher only their newest frame, so a slow model never classifies stale video; frames
between two samples are decoded (``grab()``) but never converted to BGR (``retrieve()``).
Each camera owns its thread and its VideoCapture, so one camera's fault never delays the
others.

- ``ffmpeg``: opening a source with OpenCV's FFmpeg backend, per-camera FFmpeg options.
- ``probe``: a plain-socket check that an RTSP/HTTP server answers, before OpenCV opens it.
- ``camera``: the camera base class and the state/status types reported to the publisher.
- ``file_camera``: video files, sampled by media time.
- ``live_camera``: streams and webcams, supervised by a watchdog with reconnects.
- ``factory``: the right camera for a camera's config.
"""

from streamclf.capture.camera import Camera, CameraState, CameraStatus, PrepareFrame, StatusCallback
from streamclf.capture.factory import make_camera
from streamclf.capture.ffmpeg import ffmpeg_capture_options, open_capture
from streamclf.capture.file_camera import FileCamera
from streamclf.capture.live_camera import AttemptPhase, LiveCamera, OpenSource, ProbeSource
from streamclf.capture.probe import probe_stream

__all__ = [
    "AttemptPhase",
    "Camera",
    "CameraState",
    "CameraStatus",
    "FileCamera",
    "LiveCamera",
    "OpenSource",
    "PrepareFrame",
    "ProbeSource",
    "StatusCallback",
    "ffmpeg_capture_options",
    "make_camera",
    "open_capture",
    "probe_stream",
]
