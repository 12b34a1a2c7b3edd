"""What the live page shows, kept as the pipeline runs: ``LiveView`` is a ``PipelineObserver``.

Per classified frame it keeps references only (the latest frame of each camera, the latest
scores of each camera and zone) and appends one entry to a bounded score history; nothing is
copied, encoded or formatted until someone asks. A camera's latest JPEG is encoded on request,
at most ``max_jpeg_per_s`` times a second per camera, and cached. Events keep a small JPEG
snapshot, made once when the event starts. Every figure the page reads comes out of here as
plain JSON-ready dicts, built under the one lock that guards this state.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import cv2
import numpy as np

from streamclf.capture import CameraStatus
from streamclf.config import Config
from streamclf.decisions import Decisions, Event, EventType
from streamclf.entities import Classification, Frame
from streamclf.observer import PipelineObserver
from streamclf.status import PipelineStatus
from streamclf.zones import Zone

HealthFn = Callable[[], tuple[bool, dict]]

MAX_EVENTS = 100  # events the page lists, newest first
MAX_HISTORY_POINTS = 3600  # per camera and zone, whatever the fps: the history's memory stays bounded
SPARKLINE_POINTS = 150  # history points per label sent with the status; the page appends live ones
LATEST_JPEG_MAX_WIDTH = 960  # pixels: enough for a card, light on a phone's connection
SNAPSHOT_MAX_WIDTH = 640  # pixels, of an event's snapshot


class PipelineView(Protocol):
    """What ``LiveView`` reads of the pipeline (``streamclf.pipeline.Pipeline`` provides it)."""

    @property
    def cfg(self) -> Config: ...

    def status(self) -> PipelineStatus: ...

    def threshold(self, camera: str, label: str) -> float: ...


@dataclass
class _EventRecord:
    """One event's life so far; owned by ``LiveView`` under its lock."""

    seq: int  # bumped on every change, so a live stream sends what changed since its last look
    id: str
    camera: str
    zone: str | None
    label: str
    started_at: float  # epoch seconds when streamclf saw the start
    start_time: float  # the event's own clock (seconds), for the duration
    end_time: float | None
    top_score: float
    reason: str | None = None
    snapshot: bytes | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        end = self.end_time
        return {
            "id": self.id, "camera": self.camera, "zone": self.zone, "label": self.label,
            "start": round(self.started_at, 3),
            "duration_s": None if end is None else round(max(0.0, end - self.start_time), 3),
            "active": end is None, "top_score": round(self.top_score, 4), "reason": self.reason,
            "snapshot": f"/api/events/{self.id}/snapshot.jpg" if self.snapshot else None,
        }


@dataclass
class _Jpeg:
    frame: Frame | None = None
    encoded_at: float = -math.inf  # monotonic seconds
    data: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock)  # one encode at a time per camera


class LiveView(PipelineObserver):
    """The live page's state; observer events arrive on pipeline threads, readers are HTTP threads."""

    history_s = 300.0  # seconds of scores kept per camera and zone
    max_jpeg_per_s = 4.0  # encodes of one camera's latest frame per second, at most

    def __init__(self, pipeline: PipelineView, health: HealthFn, model_info: Mapping[str, str],
                 frames_per_s: Callable[[], float]):
        self._pipeline = pipeline
        self._health = health
        self._model_info = dict(model_info)
        self._frames_per_s = frames_per_s
        self._lock = threading.Lock()
        self._frames: dict[str, Frame] = {}
        self._latest: dict[tuple[str, str | None], tuple[float, Mapping[str, float]]] = {}
        self._history: dict[tuple[str, str | None], deque[tuple[float, Mapping[str, float]]]] = {}
        self._states: dict[tuple[str, str | None, str], bool] = {}
        self._events: deque[_EventRecord] = deque(maxlen=MAX_EVENTS)
        self._event_seq = 0
        self._camera_status: dict[str, CameraStatus] = {}
        self._rates: dict[str, deque[tuple[float, int]]] = {}
        self._jpegs: dict[str, _Jpeg] = {}
        self._last_tick = -math.inf

    # -- PipelineObserver (pipeline threads) ------------------------------------------

    def on_classified(self, frame: Frame, classifications: Sequence[Classification]) -> None:
        now = time.time()
        with self._lock:
            self._frames[frame.camera] = frame
            for c in classifications:
                key = (c.camera, c.zone)
                entry = (now, c.scores)  # the scores mapping is read-only: shared, not copied
                self._latest[key] = entry
                history = self._history.get(key)
                if history is None:
                    history = self._history[key] = deque(maxlen=self._history_len(c.camera))
                history.append(entry)

    def on_decisions(self, decisions: Decisions) -> None:
        if not (decisions.state_changes or decisions.events):
            return
        snapshots = {e.id: _snapshot_jpeg(e) for e in decisions.events if e.type is EventType.START}
        with self._lock:
            for change in decisions.state_changes:
                self._states[(change.camera, change.zone, change.label)] = change.on
            for event in decisions.events:
                self._record(event, snapshots.get(event.id))

    def on_camera_status(self, status: CameraStatus) -> None:
        with self._lock:
            self._camera_status[status.camera] = status

    def on_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick < 1.0:  # rates need a sample a second, not every tick
            return
        self._last_tick = now
        figures = self._pipeline.status().cameras
        with self._lock:
            for name, cam in figures.items():
                samples = self._rates.setdefault(name, deque(maxlen=64))
                if not samples or now - samples[-1][0] >= 1.0:
                    samples.append((now, cam.frames_classified))
            for name in set(self._rates) - set(figures):
                del self._rates[name]
            self._fit_history()

    def _record(self, event: Event, snapshot: bytes | None) -> None:
        record = next((r for r in self._events if r.id == event.id), None)
        if record is None:
            if event.type is not EventType.START:
                return  # its start is older than the events kept
            record = _EventRecord(0, event.id, event.camera, event.zone, event.label, time.time(),
                                  event.start_time, None, event.top_score, snapshot=snapshot)
            self._events.append(record)
        elif event.type is EventType.UPDATE and event.top_score <= record.top_score:
            return  # nothing the page shows has changed
        self._event_seq += 1
        record.seq = self._event_seq
        record.top_score = max(record.top_score, event.top_score)
        if event.type is EventType.END:
            record.end_time = event.end_time if event.end_time is not None else event.start_time
            record.reason = event.reason

    def _history_len(self, camera: str) -> int:
        cam = self._pipeline.cfg.cameras.get(camera)
        fps = cam.fps if cam is not None else 1.0
        return max(2, min(MAX_HISTORY_POINTS, math.ceil(self.history_s * fps) + 1))

    def _fit_history(self) -> None:
        """A reload may change a camera's fps: its history keeps ``history_s`` seconds at the new rate."""
        cameras = self._pipeline.cfg.cameras
        for key, history in list(self._history.items()):
            if key[0] not in cameras:
                del self._history[key]
                self._latest.pop(key, None)
            elif history.maxlen != (wanted := self._history_len(key[0])):
                self._history[key] = deque(history, maxlen=wanted)
        for name in set(self._frames) - set(cameras):
            del self._frames[name]

    # -- readers (HTTP threads) --------------------------------------------------------

    @property
    def event_seq(self) -> int:
        """Increases with every event change; ``events_since`` takes it as a cursor."""
        with self._lock:
            return self._event_seq

    def events(self, limit: int = MAX_EVENTS) -> list[dict]:
        """The last ``limit`` events (at most ``MAX_EVENTS``), newest first."""
        with self._lock:
            records = list(self._events)[-max(0, min(limit, MAX_EVENTS)):] if limit > 0 else []
            return [r.as_dict() for r in reversed(records)]

    def events_since(self, seq: int) -> tuple[int, list[dict]]:
        """Events started or changed after cursor ``seq``, oldest change first, and the new cursor."""
        with self._lock:
            changed = sorted((r for r in self._events if r.seq > seq), key=lambda r: r.seq)
            return self._event_seq, [r.as_dict() for r in changed]

    def event_snapshot(self, event_id: str) -> bytes | None:
        """The JPEG snapshot of a listed event, or None."""
        with self._lock:
            record = next((r for r in self._events if r.id == event_id), None)
            return record.snapshot if record is not None else None

    def latest_jpeg(self, camera: str) -> bytes | None:
        """The camera's latest classified frame as JPEG, or None before its first frame.

        Encoded again only when a newer frame exists and the last encode is older than
        ``1 / max_jpeg_per_s`` seconds; otherwise the cached picture is returned.
        """
        with self._lock:
            frame = self._frames.get(camera)
            if frame is None:
                return None
            cache = self._jpegs.setdefault(camera, _Jpeg())
        with cache.lock:
            now = time.monotonic()
            if cache.data and (cache.frame is frame or now - cache.encoded_at < 1.0 / self.max_jpeg_per_s):
                return cache.data
            cache.data = _encode_jpeg(frame.image, LATEST_JPEG_MAX_WIDTH, quality=80)
            cache.frame, cache.encoded_at = frame, now
            return cache.data

    def scores(self) -> dict:
        """The latest scores and ON/OFF states of every camera and zone (the live stream's ``scores``)."""
        cfg = self._pipeline.cfg
        with self._lock:
            latest = dict(self._latest)
            states = dict(self._states)
        out: dict[str, dict] = {}
        for name in cfg.cameras:
            areas = {}
            for zone in _areas(cfg, name):
                t, scores = latest.get((name, zone), (None, {}))
                areas[zone or ""] = {
                    "t": None if t is None else round(t, 3),
                    "scores": {label: round(s, 4) for label, s in scores.items()},
                    "on": {label: states.get((name, zone, label), False) for label in cfg.labels_for(name)},
                }
            out[name] = areas
        return out

    def status(self) -> dict:
        """Everything the page shows besides the events: the header and a card per configured camera."""
        status = self._pipeline.status()
        ok, health = self._health()
        header = {
            "healthy": ok, "health": health.get("status"), "reasons": health.get("reasons", []),
            **self._model_info, "mqtt_connected": status.mqtt.connected,
            "mqtt_error": status.mqtt.last_error, "frames_per_s": round(self._frames_per_s(), 2),
        }
        cards = [self._card(status, name) for name in status.config.cameras]
        return {"time": round(time.time(), 3), "header": header, "cameras": cards}

    def _card(self, status: PipelineStatus, name: str) -> dict:
        cfg = status.config
        cam_cfg = cfg.cameras[name]
        figures = status.cameras.get(name)
        with self._lock:
            frame = self._frames.get(name)
            detail = self._camera_status.get(name)
            rate = _rate(self._rates.get(name, ()))
            areas_history = {zone: list(self._history.get((name, zone), ())) for zone in _areas(cfg, name)}
            top = self._latest.get((name, None))  # the top label is the whole frame's: zoned cameras have none
        height, width = frame.image.shape[:2] if frame is not None else (0, 0)
        return {
            "name": name,
            "state": figures.state if figures is not None else "removed",
            "reason": detail.reason if detail is not None else "",
            "last_error": detail.last_error if detail is not None else "",
            "reconnects": figures.reconnects if figures is not None else 0,
            "frames_per_s": round(rate, 2),
            "frames_classified": figures.frames_classified if figures is not None else 0,
            "drops": dict(figures.frames_dropped) if figures is not None else {},
            "frame_size": [width, height],
            "zones": _zone_boxes(cam_cfg.zones, width, height),
            "top_label": max(top[1], key=top[1].__getitem__) if top and top[1] else None,
            "labels": self._labels(cfg, name),
            "history": {zone or "": _sparklines(h, cfg.labels_for(name)) for zone, h in areas_history.items()},
        }

    def _labels(self, cfg: Config, camera: str) -> list[dict]:
        labels = []
        for label in cfg.labels_for(camera):
            background = cfg.labels[label].background
            try:
                threshold = None if background else self._pipeline.threshold(camera, label)
            except KeyError:  # the label set changed between the two reads
                threshold = None
            labels.append({"name": label, "background": background, "threshold": threshold})
        return labels


def _areas(cfg: Config, camera: str) -> list[str | None]:
    """Where ``camera`` is scored: each of its zones, or the whole frame (None) when it has none."""
    return list(cfg.cameras[camera].zones) or [None]


def _rate(samples: Sequence[tuple[float, int]], window_s: float = 10.0) -> float:
    """Per second over the last ``window_s`` seconds of (monotonic s, count) samples."""
    if len(samples) < 2:
        return 0.0
    t1, c1 = samples[-1]
    t0, c0 = next((t, c) for t, c in samples if t1 - t <= window_s)
    if t0 == t1:
        t0, c0 = samples[-2]
    return (c1 - c0) / (t1 - t0)


def _sparklines(history: list[tuple[float, Mapping[str, float]]], labels: list[str]) -> dict:
    """At most ``SPARKLINE_POINTS`` evenly spaced points: times (epoch s) and each label's scores."""
    if len(history) > SPARKLINE_POINTS:
        step = len(history) / SPARKLINE_POINTS
        history = [history[int(i * step)] for i in range(SPARKLINE_POINTS - 1)] + [history[-1]]
    return {
        "t": [round(t, 2) for t, _ in history],
        "scores": {label: [round(s.get(label, 0.0), 4) for _, s in history] for label in labels},
    }


def _zone_boxes(zones: Mapping, width: int, height: int) -> list[dict]:
    """Zones as [x0, y0, x1, y1] in 0..1 of the frame (pixel zones need the frame's size)."""
    out = []
    for name, zone_cfg in zones.items():
        zone = Zone.from_config(name, zone_cfg)
        if zone.normalized:
            box = list(zone.box)
        elif width and height:
            pixels = zone.pixel_box(width, height)
            if pixels is None:
                continue
            box = [pixels[0] / width, pixels[1] / height, pixels[2] / width, pixels[3] / height]
        else:
            continue
        out.append({"name": name, "box": [round(v, 4) for v in box]})
    return out


def _snapshot_jpeg(event: Event) -> bytes | None:
    image = event.classification.image if event.classification is not None else None
    return _encode_jpeg(image, SNAPSHOT_MAX_WIDTH, quality=80) if image is not None else None


def _encode_jpeg(image: np.ndarray, max_width: int, quality: int) -> bytes:
    """``image`` (BGR uint8) as JPEG, scaled down to at most ``max_width`` pixels wide."""
    height, width = image.shape[:2]
    if width > max_width:
        image = cv2.resize(image, (max_width, max(1, round(height * max_width / width))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding of a {width}x{height} image failed")
    return data.tobytes()
