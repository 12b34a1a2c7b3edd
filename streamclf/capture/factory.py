"""The right camera class for a camera's configured source."""

from __future__ import annotations

import os

from streamclf.batching import Batcher
from streamclf.capture.camera import Camera, PrepareFrame, StatusCallback
from streamclf.capture.file_camera import FileCamera
from streamclf.capture.live_camera import LiveCamera
from streamclf.config import CameraConfig


def make_camera(
    name: str, cfg: CameraConfig, batcher: Batcher, on_status: StatusCallback, base_dir: str | None = None,
    prepare: PrepareFrame | None = None,
) -> Camera:
    """The right Camera for ``cfg.source``; relative file paths resolve against ``base_dir``.

    Device paths (``/dev/video7``, ``/dev/v4l/by-id/...``) are live cameras: a webcam that is
    unplugged comes back, so it is retried and watched for stalls like a stream.
    """
    if cfg.is_file:
        path = os.path.expanduser(str(cfg.source))
        if base_dir and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        return FileCamera(name, cfg, batcher, on_status, path, prepare)
    source = cfg.source
    if isinstance(source, str) and source.isdigit():
        source = int(source)
    return LiveCamera(name, cfg, batcher, on_status, source, prepare=prepare)
