"""The camera base class and the state/status types every camera reports.

A camera owns its thread, its stop event and its state; it reports each state change
through a status callback (the pipeline forwards them to the publisher), and hands
sampled frames to the batcher. ``FileCamera`` and ``LiveCamera`` supply ``_run``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import cv2
import numpy as np

from streamclf.batching import Batcher
from streamclf.config import CameraConfig
from streamclf.entities import Frame
from streamclf.logs import redact

log = logging.getLogger(__name__)


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
PrepareFrame = Callable[[np.ndarray], object]  # a frame -> its model input (ClipClassifier.prepare_image)


def _enter_idle_priority(camera: str) -> bool:
    """Move the calling thread (and the threads it starts) to Linux's SCHED_IDLE class.

    Why: torch runs a batch on every core, split into equal parts that wait for each other. A
    decoder that takes a core from one of them for a millisecond can stall the others for that
    millisecond too, and non-realtime files are decoded as fast as the model takes frames, so
    their decoding always has work to do. At idle priority it runs only on CPU time nobody else
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


def shrink_to_side(bgr: np.ndarray, max_side_px: int | None) -> np.ndarray:
    """``bgr`` shrunk (aspect kept) so that its longer side is at most ``max_side_px`` pixels; as is when it fits.

    Done once at capture so that every later holder of the frame (the batcher's queue, the zone
    crops, the snapshot queue) holds the small copy, never the decoded full-size picture.
    """
    h, w = bgr.shape[:2]
    if max_side_px is None or max(h, w) <= max_side_px:
        return bgr
    scale = max_side_px / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)


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
        self.last_frame_monotonic: float | None = None  # time.monotonic() of the newest sampled frame
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
    def thread_alive(self) -> bool:
        """True while the capture thread runs (False before start and after it returned)."""
        return self._thread.is_alive()

    @property
    def thread_native_id(self) -> int | None:
        """The OS id of the capture thread (None before start): for checking its scheduling policy."""
        return self._thread.native_id

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
        # model-sized crop, so a full-size colour conversion here would be wasted work.
        captured = time.monotonic()
        self.last_frame_monotonic = captured
        bgr = shrink_to_side(bgr, self.cfg.frame_side_limit_px)
        model_input = None
        if self._prepare_here and self._prepare is not None:
            try:
                model_input = self._prepare(bgr)
            except Exception:  # the inference thread prepares it instead; said once, not per frame
                log.exception("camera %s: preparing frames for the model failed; the inference thread does it",
                              self.name)
                self._prepare_here = False
        return Frame(self.name, bgr, index, media_time, captured, model_input)
