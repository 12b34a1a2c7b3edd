"""The pipeline's figures as one plain dict: the ``<prefix>/stats`` message, and the source the
Prometheus collector reads, so the two can never disagree.

A view of one ``PipelineStatus`` snapshot (``Pipeline.status()``); nothing here counts anything.
"""

from __future__ import annotations

import time
from collections import defaultdict

from streamclf import __version__
from streamclf.service.health import Progress
from streamclf.status import PipelineStatus


def pipeline_figures(status: PipelineStatus, progress: Progress, classified_fps: float,
                     started_monotonic: float) -> dict:
    """Every figure streamclf reports; counts since start, ``*_s`` in seconds, ``classified_fps`` per second."""
    published: dict[str, dict] = {"detection": defaultdict(dict), "event": defaultdict(dict)}
    for (kind, camera, label), n in sorted(status.published.items()):
        published.setdefault(kind, defaultdict(dict))[camera][label] = n
    inference, mqtt = status.inference, status.mqtt
    return {
        "version": __version__,
        "timestamp": round(time.time(), 3),
        "uptime_s": round(time.monotonic() - started_monotonic, 3),
        "healthy": progress.ok,
        "progress": progress.reason,
        "node": status.node,  # mqtt.node_id, None for the only daemon on the prefix
        # Camera -> the node holding it, for cameras this node claims but does not publish (a conflict).
        "conflicts": {c.camera: c.holder for c in status.conflicts},
        "cameras_online": status.cameras_online,
        "cameras_total": status.cameras_running,
        "classified_fps": round(classified_fps, 3),
        "frames_classified": inference.frames_classified,
        "batches": inference.batches,
        "queue_depth": inference.queue_depth,
        "detections_published": {c: dict(v) for c, v in published["detection"].items()},
        "events_published": {c: dict(v) for c, v in published["event"].items()},
        "mqtt": {
            "connected": mqtt.connected,
            "queued_messages": mqtt.queued_messages,
            "dropped_messages": mqtt.dropped_messages,
            "published_messages": mqtt.published_messages,
            "connects": mqtt.connects,
            "connect_failures": mqtt.connect_failures,  # attempts that failed before the broker answered
            "invalid_messages": mqtt.invalid_messages,  # refused by paho (over MQTT's limits) and dropped
        },
        "inference": {
            "backend": status.backend.kind,
            "address": status.backend.address,
            "connected": status.backend.connected,
            "last_error": status.backend.last_error,
            "reconnects": status.backend.reconnects,
            "failed_requests": status.backend.failed_requests,
        },
        "cameras": {
            name: {
                "state": c.state,
                "frames_captured": c.frames_captured,
                "frames_sampled": c.frames_sampled,
                "frames_classified": c.frames_classified,
                "frames_dropped": dict(c.frames_dropped),
                "reconnects": c.reconnects,
            }
            for name, c in status.cameras.items()
        },
    }


def status_line(figures: dict) -> str:
    """The one-line ``STATUS=`` systemd shows in ``systemctl status``."""
    line = (
        f"{figures['cameras_online']}/{figures['cameras_total']} camera(s) online, "
        f"{figures['classified_fps']:.1f} frames/s classified, "
        f"MQTT {'connected' if figures['mqtt']['connected'] else 'disconnected'}"
    )
    if figures["conflicts"]:
        line += "; not published, held by another node: " + ", ".join(
            f"{camera} ({holder})" for camera, holder in figures["conflicts"].items())
    return line if figures["healthy"] else f"{line}; NOT PROGRESSING: {figures['progress']}"
