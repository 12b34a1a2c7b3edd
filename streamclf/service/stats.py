"""The pipeline's figures as one plain dict: the ``<prefix>/stats`` message, and the source the
Prometheus collector reads, so the two can never disagree.

Counters are read from the stages that keep them (cameras, batcher, publisher, pipeline) at
the moment of the snapshot; nothing here counts anything itself.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from streamclf import __version__
from streamclf.capture import CameraState
from streamclf.service.health import Progress


def _copy(counter: Counter) -> dict:
    """A copy of a Counter other threads may be adding keys to (their writes hold no lock we share)."""
    for _ in range(5):
        try:
            return dict(counter)
        except RuntimeError:  # "dictionary changed size during iteration": just try again
            continue
    return {}


def pipeline_figures(pipeline, progress: Progress, classified_fps: float, started_monotonic: float) -> dict:
    """Every figure streamclf reports; counts since start, ``*_s`` in seconds, ``classified_fps`` per second."""
    cfg = pipeline.cfg
    cams = dict(pipeline.cameras)
    drops = _copy(pipeline.batcher.drops)
    classified = _copy(pipeline.classified_by_camera)
    reconnects = _copy(pipeline.camera_reconnects)
    names = list(cfg.cameras) + sorted({c for c, _ in drops} | set(classified) - set(cfg.cameras))
    cameras = {}
    for name in names:
        cam = cams.get(name)
        cam_cfg = cfg.cameras.get(name)
        if cam is not None:
            state = cam.state.value
        elif cam_cfg is not None and not cam_cfg.enabled:
            state = "disabled"
        else:
            state = "removed"
        cameras[name] = {
            "state": state,
            "frames_captured": cam.frames_read if cam else 0,
            "frames_sampled": cam.frames_sampled if cam else 0,
            "frames_classified": classified.get(name, 0),
            "frames_dropped": {reason: n for (c, reason), n in sorted(drops.items()) if c == name},
            # A camera that counts its own reconnects (stalls included) knows best; else the status reports do.
            "reconnects": getattr(cam, "reconnects", None) if isinstance(getattr(cam, "reconnects", None), int)
            else reconnects.get(name, 0),
        }
    published: dict[str, dict] = {"detection": defaultdict(dict), "event": defaultdict(dict)}
    for (kind, camera, label), n in sorted(_copy(pipeline.published_by).items()):
        published.setdefault(kind, defaultdict(dict))[camera][label] = n
    pub = pipeline.publisher
    return {
        "version": __version__,
        "timestamp": round(time.time(), 3),
        "uptime_s": round(time.monotonic() - started_monotonic, 3),
        "healthy": progress.ok,
        "progress": progress.reason,
        "cameras_online": sum(1 for c in cams.values() if c.state is CameraState.ONLINE),
        "cameras_total": len(cams),
        "classified_fps": round(classified_fps, 3),
        "frames_classified": pipeline.classified,
        "batches": pipeline.batches,
        "queue_depth": len(pipeline.batcher),
        "detections_published": {c: dict(v) for c, v in published["detection"].items()},
        "events_published": {c: dict(v) for c, v in published["event"].items()},
        "mqtt": {
            "connected": pub.connected,
            "queued_messages": pub.queued,
            "dropped_messages": pub.dropped_overflow,
            "published_messages": pub.published,
            "connects": pub.connects,
        },
        "cameras": cameras,
    }


def status_line(figures: dict) -> str:
    """The one-line ``STATUS=`` systemd shows in ``systemctl status``."""
    line = (
        f"{figures['cameras_online']}/{figures['cameras_total']} camera(s) online, "
        f"{figures['classified_fps']:.1f} frames/s classified, "
        f"MQTT {'connected' if figures['mqtt']['connected'] else 'disconnected'}"
    )
    return line if figures["healthy"] else f"{line}; NOT PROGRESSING: {figures['progress']}"
