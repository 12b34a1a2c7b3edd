"""Decisions: which scores become detections.

Kept apart from classification so that the alerting rules (thresholds now; hysteresis,
cooldowns and events later) can be tested with plain score sequences, no model.
"""

from __future__ import annotations

from typing import Mapping

from streamclf.config import LabelConfig
from streamclf.entities import Classification, Detection


class ThresholdDecider:
    """Every non-background label whose score (0..1) is at or above its threshold is a detection."""

    def __init__(self, labels: Mapping[str, LabelConfig]):
        self._labels = dict(labels)
        self._camera_thresholds: dict[tuple[str, str], float] = {}  # (camera, label) -> runtime override

    def update_labels(self, labels: Mapping[str, LabelConfig]) -> None:
        """Replace the label definitions; per-camera overrides of labels that remain are kept."""
        self._labels = dict(labels)
        self._camera_thresholds = {k: v for k, v in self._camera_thresholds.items() if k[1] in self._labels}

    def set_threshold(self, camera: str, label: str, threshold: float) -> None:
        """Override ``label``'s threshold (0..1) on ``camera`` only."""
        if label not in self._labels:
            raise KeyError(label)
        self._camera_thresholds[(camera, label)] = threshold

    def threshold(self, camera: str, label: str) -> float:
        """The threshold (0..1) in force for ``label`` on ``camera``."""
        return self._camera_thresholds.get((camera, label), self._labels[label].threshold)

    def detections(self, classification: Classification) -> list[Detection]:
        out = []
        for label, score in classification.scores.items():
            lc = self._labels.get(label)
            if lc is None or lc.background or score < self.threshold(classification.camera, label):
                continue
            out.append(Detection(classification.camera, label, score, classification))
        return out
