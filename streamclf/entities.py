"""Frozen value types passed between the pipeline stages.

Each stage owns its mutable state; what crosses a stage boundary is one of these
immutable records, so a frame can sit in a queue while its producer moves on
without anyone changing it underneath.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One sampled frame of one camera, waiting to be classified.

    ``image`` is BGR uint8 (OpenCV's order, as decoded), shape (height, width, 3).
    ``frame_index`` and ``frame_time`` (seconds) locate the frame in its source: for files
    the decoded-frame index and the media time, for live streams a running count and the
    capture wall-clock time.
    ``captured_monotonic`` (``time.monotonic()`` seconds) is when it was decoded and is
    what frame-age limits are measured against.
    ``model_input`` is the whole frame already resized and cropped for the model (a planar
    uint8 tensor, still BGR), when the capture thread could do that on CPU time the model does
    not want (see ``Camera``); None leaves it to the inference thread.
    """

    camera: str
    image: np.ndarray
    frame_index: int
    frame_time: float
    captured_monotonic: float
    model_input: object | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(
                f"Frame.image must be uint8 of shape (H, W, 3), got {self.image.dtype} {self.image.shape}"
            )


@dataclass(frozen=True)
class Classification:
    """CLIP scores for one frame, or one zone of it: label -> probability (0..1) over the camera's labels.

    ``zone`` is None for the whole frame. ``image`` is the BGR uint8 picture that was scored
    (the zone's crop, or the frame), kept so that a snapshot shows exactly what CLIP saw; it
    is a reference, not a copy, and takes no part in equality.
    """

    camera: str
    frame_index: int
    frame_time: float
    captured_monotonic: float
    scores: Mapping[str, float] = field(default_factory=dict)
    zone: str | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Read-only view: several consumers (decisions, publishing, metrics) share one object.
        object.__setattr__(self, "scores", MappingProxyType(dict(self.scores)))

    @property
    def top_label(self) -> str | None:
        """Label with the highest score, or None when there are no scores."""
        return max(self.scores, key=self.scores.__getitem__) if self.scores else None


@dataclass(frozen=True)
class Detection:
    """A non-background label at or above its threshold on one classified frame."""

    camera: str
    label: str
    score: float
    classification: Classification

    def payload(self, timestamp: float) -> dict:
        """The JSON body published on ``<prefix>/<camera>/detection``; ``timestamp`` is epoch seconds.

        ``zone`` is present only for zones: a whole-frame payload has no ``zone`` key at all.
        """
        c = self.classification
        body = {
            "camera": self.camera,
            "label": self.label,
            "score": round(self.score, 6),
            "scores": {k: round(v, 6) for k, v in c.scores.items()},
            "frame_index": c.frame_index,
            "frame_time": round(c.frame_time, 6),
            "timestamp": round(timestamp, 3),
        }
        if c.zone is not None:
            body["zone"] = c.zone
        return body


@dataclass(frozen=True)
class BatchReport:
    """One model call, for metrics: how many frames, how long (seconds), and each frame's age
    (seconds from capture to classification) in batch order."""

    size: int
    duration_s: float
    frame_ages_s: tuple[float, ...]
