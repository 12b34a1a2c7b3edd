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

    def update_labels(self, labels: Mapping[str, LabelConfig]) -> None:
        self._labels = dict(labels)

    def detections(self, classification: Classification) -> list[Detection]:
        out = []
        for label, score in classification.scores.items():
            lc = self._labels.get(label)
            if lc is None or lc.background or score < lc.threshold:
                continue
            out.append(Detection(classification.camera, label, score, classification))
        return out
