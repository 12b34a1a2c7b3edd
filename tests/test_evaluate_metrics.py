"""The measures ``streamclf evaluate`` reports, on score lists small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from streamclf.evaluate.metrics import average_precision, counts_at, match_events, roc_auc, suggest_threshold

T, F = True, False


@pytest.mark.parametrize("scores, positive, auc", [
    ([0.1, 0.2, 0.8, 0.9], [F, F, T, T], 1.0),
    ([0.9, 0.8, 0.2, 0.1], [F, F, T, T], 0.0),
    ([0.5, 0.5, 0.5, 0.5], [F, F, T, T], 0.5),  # ties count half
    ([0.1, 0.6, 0.4, 0.9], [F, F, T, T], 0.75),  # 3 of 4 (positive, negative) pairs in order
    ([0.1, 0.2], [T, T], None),  # no negatives: undefined
])
def test_roc_auc(scores, positive, auc):
    assert roc_auc(np.array(scores), np.array(positive)) == (None if auc is None else pytest.approx(auc))


@pytest.mark.parametrize("scores, positive, ap", [
    ([0.1, 0.2, 0.8, 0.9], [F, F, T, T], 1.0),
    ([0.9, 0.8, 0.2, 0.1], [T, F, T, F], (1 + 2 / 3) / 2),  # precision 1 at the first hit, 2/3 at the second
    ([0.5, 0.5], [T, F], 0.5),  # one threshold takes both
    ([0.1], [F], None),
])
def test_average_precision(scores, positive, ap):
    assert average_precision(np.array(scores), np.array(positive)) == (None if ap is None else pytest.approx(ap))


def test_counts_at_a_threshold_include_scores_equal_to_it():
    c = counts_at(np.array([0.2, 0.5, 0.7, 0.4]), np.array([F, T, T, T]), 0.5)
    assert (c.true_positives, c.false_positives, c.false_negatives) == (2, 0, 1)
    assert (c.precision, c.recall, c.f1) == (1.0, pytest.approx(2 / 3), pytest.approx(0.8))


@pytest.mark.parametrize("scores, positive, target, low, high, reason", [
    # Two clusters: the suggestion lies strictly between them, a round number.
    ([0.10, 0.12, 0.11, 0.60, 0.62], [F, F, F, T, T], None, 0.12, 0.60, "best F1"),
    # Overlap: the best F1 takes all positives (F1 6/7) over the strict cut (F1 2/3).
    ([0.1, 0.5, 0.4, 0.6], [F, F, T, T], None, 0.1, 0.4, "best F1"),
    # Precision 1.0 wanted: the lowest threshold above the negative at 0.5.
    ([0.1, 0.5, 0.4, 0.6], [F, F, T, T], 1.0, 0.5, 0.6, "precision >= 1"),
])
def test_suggest_threshold(scores, positive, target, low, high, reason):
    s = suggest_threshold(np.array(scores), np.array(positive), target)
    assert low < s.threshold <= high and s.reason == reason and s.reached


def test_suggest_threshold_says_when_the_target_precision_cannot_be_reached():
    s = suggest_threshold(np.array([0.9, 0.1]), np.array([F, T]), 0.8)
    assert not s.reached and "no threshold reaches precision 0.8" in s.reason
    assert suggest_threshold(np.array([0.3]), np.array([F])) is None


@pytest.mark.parametrize("truth, on, hit, missed, false_on", [
    ([(4, 8)], [(4, 8)], 1, 0, 0),
    ([(4, 8)], [(7.5, 9)], 1, 0, 0),  # any overlap hits
    ([(4, 8), (20, 22)], [(4, 8)], 1, 1, 0),
    ([(4, 8)], [(1, 2), (4, 8), (30, 31)], 1, 0, 2),
    ([], [(1, 2)], 0, 0, 1),
])
def test_match_events(truth, on, hit, missed, false_on):
    e = match_events(truth, on, footage_s=1800.0)
    assert (e.intervals, e.hit, e.missed, e.false_on) == (len(truth), hit, missed, false_on)
    assert e.false_on_per_hour == pytest.approx(false_on * 2)
