"""What the pipeline tells those who watch it: metrics, health, ``<prefix>/stats``, systemd glue.

``PipelineObserver`` is one small interface whose methods all do nothing by default, so an
observer overrides only the events it needs. Events arrive on the thread that causes them:
``on_started``, ``on_tick`` and ``on_stopping`` on the supervising (main) thread, ``on_batch``
and ``on_classified`` on the inference thread, where a slow observer slows classification (keep
references there; copy, encode and format only when someone asks), ``on_decisions`` on the
thread that decided (the inference thread, or the one that changed the config or paused a
camera), ``on_camera_status`` on the camera's capture thread or the main thread. An observer
that raises is logged and the pipeline goes on: watching must never take the daemon down.
"""

from __future__ import annotations

import logging
from typing import Sequence

from streamclf.capture import CameraStatus
from streamclf.decisions import Decisions
from streamclf.entities import BatchReport, Classification, Frame

log = logging.getLogger(__name__)


class PipelineObserver:
    """Receives pipeline events; every method is a no-op unless overridden."""

    def on_started(self) -> None:
        """Cameras and the inference thread are running (main thread)."""

    def on_tick(self) -> None:
        """The supervising loop's tick, every ``Pipeline.tick_s`` seconds (main thread)."""

    def on_batch(self, report: BatchReport) -> None:
        """A model call finished (inference thread)."""

    def on_classified(self, frame: Frame, classifications: Sequence[Classification]) -> None:
        """``frame`` was classified: one classification for the whole frame, or one per zone
        (inference thread; the frame and its image are shared, never to be changed)."""

    def on_decisions(self, decisions: Decisions) -> None:
        """States, events and detections that are being published (the thread that decided)."""

    def on_camera_status(self, status: CameraStatus) -> None:
        """A camera changed state (its capture thread, or the main thread)."""

    def on_stopping(self) -> None:
        """Shutdown begins (main thread)."""


class ObserverGroup(PipelineObserver):
    """Hands every event to each attached observer in turn; a failing one is logged and skipped."""

    def __init__(self) -> None:
        self._observers: tuple[PipelineObserver, ...] = ()

    def attach(self, observer: PipelineObserver) -> None:
        # Swapped whole: the inference thread iterates over it without a lock.
        self._observers = (*self._observers, observer)

    def on_started(self) -> None:
        for o in self._observers:
            _safely(o.on_started)

    def on_tick(self) -> None:
        for o in self._observers:
            _safely(o.on_tick)

    def on_batch(self, report: BatchReport) -> None:
        for o in self._observers:
            _safely(o.on_batch, report)

    def on_classified(self, frame: Frame, classifications: Sequence[Classification]) -> None:
        for o in self._observers:
            _safely(o.on_classified, frame, classifications)

    def on_decisions(self, decisions: Decisions) -> None:
        for o in self._observers:
            _safely(o.on_decisions, decisions)

    def on_camera_status(self, status: CameraStatus) -> None:
        for o in self._observers:
            _safely(o.on_camera_status, status)

    def on_stopping(self) -> None:
        for o in self._observers:
            _safely(o.on_stopping)


def _safely(method, *args) -> None:
    try:
        method(*args)
    except Exception:
        log.exception("pipeline observer %s failed", getattr(method, "__qualname__", method))
