"""Frame- and event-level measures of one label's scores against ground truth, in numpy.

Scores are 0..1; a frame is predicted positive when its score is at or above the threshold,
as the decider counts it. Every function takes plain arrays, so each is tested with a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class FrameCounts:
    """Precision, recall and F1 (0..1) of ``score >= threshold`` over labelled frames."""

    threshold: float
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (0..1): the chance a positive frame outscores a negative one, ties
    counting half. None without both positive and negative frames."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=float)
    sorted_scores = scores[order]
    # Tied scores share the mean of their ranks (1-based), as Mann-Whitney's U needs.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def precision_recall_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at every distinct score, highest threshold first."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    last_of_each = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # where a threshold's group ends
    tp, fp, thresholds = tp[last_of_each], fp[last_of_each], s[last_of_each]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(int(p.sum()), 1)
    return precision, recall, thresholds


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Average precision (0..1): precision at each distinct threshold weighted by the recall it adds.
    None without positive frames."""
    if not np.asarray(positive, dtype=bool).any():
        return None
    precision, recall, _ = precision_recall_curve(scores, positive)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def counts_at(scores: np.ndarray, positive: np.ndarray, threshold: float | np.ndarray) -> FrameCounts:
    """Precision/recall/F1 of ``scores >= threshold``; ``threshold`` may be per frame (an array)."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    predicted = scores >= threshold
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    shown = float(threshold) if np.ndim(threshold) == 0 else float(np.median(threshold))
    return FrameCounts(shown, precision, recall, f1, tp, fp, fn)


@dataclass(frozen=True)
class Suggestion:
    """A threshold (0..1) and why: ``best F1`` or ``precision >= P``. ``threshold`` lies halfway
    between the lowest score it accepts and the next lower score, so it has a margin on both sides."""

    threshold: float
    reason: str
    reached: bool = True  # False when no threshold reaches the target precision (then: best F1)


def suggest_threshold(scores: np.ndarray, positive: np.ndarray,
                      target_precision: float | None = None) -> Suggestion | None:
    """The threshold that maximises F1 or, with ``target_precision`` (0..1), the lowest one whose
    precision reaches it. None without positive frames."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return None
    precision, recall, thresholds = precision_recall_curve(scores, positive)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    reason, reached = "best F1", True
    if target_precision is not None:
        meeting = np.nonzero(precision >= target_precision - 1e-12)[0]
        if len(meeting):
            k = int(meeting[-1])  # the lowest threshold that still meets it: the most recall
            return Suggestion(_between(thresholds, k), f"precision >= {target_precision:g}")
        reason, reached = f"best F1 (no threshold reaches precision {target_precision:g})", False
    k = int(np.argmax(f1))  # ties: the highest threshold, the fewest false alerts
    return Suggestion(_between(thresholds, k), reason, reached)


def _between(thresholds: np.ndarray, k: int) -> float:
    """A round threshold in (next lower score, thresholds[k]]: accepts the same frames as thresholds[k]."""
    high = float(thresholds[k])
    low = float(thresholds[k + 1]) if k + 1 < len(thresholds) else max(0.0, high - 1e-3)
    middle = (high + low) / 2.0
    for digits in range(2, 9):
        rounded = round(middle, digits)
        if low < rounded <= high:
            return rounded
    return high


@dataclass(frozen=True)
class EventCounts:
    """Ground-truth intervals hit or missed by ON periods, and ON periods that hit none."""

    intervals: int
    hit: int
    missed: int
    false_on: int
    false_on_per_hour: float  # false ON periods per hour of footage


def match_events(truth: Sequence[tuple[float, float]], on_periods: Sequence[tuple[float, float]],
                 footage_s: float) -> EventCounts:
    """Count hits, misses and false ON periods; an interval is hit when an ON period overlaps it
    (both ends included). Times are seconds of one video, or of several laid end to end."""
    hit = sum(1 for s, e in truth if any(a <= e and b >= s for a, b in on_periods))
    false_on = sum(1 for a, b in on_periods if not any(a <= e and b >= s for s, e in truth))
    hours = footage_s / 3600.0
    return EventCounts(len(truth), hit, len(truth) - hit, false_on, false_on / hours if hours > 0 else 0.0)
