"""Classification figures from counts (`hierfl.data.classification`), against numbers worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hierfl.data import classification as cls

# Four classes: a and b in the test set; c predicted once but absent; d neither present nor predicted.
#            predicted a  b  c  d
CONFUSION = [
    [5, 1, 0, 0],  # true a: support 6
    [2, 3, 1, 0],  # true b: support 6
    [0, 0, 0, 0],  # true c
    [0, 0, 0, 0],  # true d
]


def test_per_class_precision_recall_f1_and_support():
    scores = cls.per_class_scores(np.array(CONFUSION))
    # a: 5 of 7 predicted a are a, 5 of 6 a found; F1 = 2*5 / (6 + 7).
    # b: 3 of 4 predicted b, 3 of 6 found; F1 = 6 / 10.
    # c: predicted once, never right, absent: precision 0/1, recall 0/0 := 0, F1 0/1.
    # d: all 0/0 := 0.
    np.testing.assert_allclose(scores.precision, [5 / 7, 3 / 4, 0, 0])
    np.testing.assert_allclose(scores.recall, [5 / 6, 1 / 2, 0, 0])
    np.testing.assert_allclose(scores.f1, [10 / 13, 0.6, 0, 0])
    np.testing.assert_array_equal(scores.support, [6, 6, 0, 0])
    assert scores.support.dtype == np.int64


def test_f1_is_the_harmonic_mean_of_precision_and_recall():
    scores = cls.per_class_scores(np.array(CONFUSION))
    for p, r, f1 in zip(scores.precision[:2], scores.recall[:2], scores.f1[:2]):
        assert f1 == pytest.approx(2 * p * r / (p + r))


def test_macro_f1_averages_the_classes_present_or_predicted():
    # a, b and c count (c was predicted); d, neither present nor predicted, does not.
    assert cls.macro_f1(np.array(CONFUSION)) == pytest.approx((10 / 13 + 0.6 + 0) / 3)
    assert cls.macro_f1(np.eye(3, dtype=np.int64) * 4) == 1.0
    assert math.isnan(cls.macro_f1(np.zeros((3, 3), np.int64)))


def test_chance_is_always_predicting_the_majority_class():
    # a and b tie at 6 of 12: the lower index wins. Always predicting a: accuracy 1/2;
    # a's F1 = 2*6 / (6 + 12) = 2/3, b's 0; c and d are absent and never predicted.
    level = cls.chance(np.array(CONFUSION))
    assert level.majority == 0 and level.accuracy == 0.5
    assert level.macro_f1 == pytest.approx(1 / 3)
    # The imbalanced plant: 84 ok, 16 faults. Always "ok": 84% accuracy,
    # F1(ok) = 2*84 / (100 + 84), F1(fault) = 0, macro F1 = 0.4565...
    level = cls.chance(np.array([[80, 4], [10, 6]]))
    assert level == (0, 0.84, pytest.approx(168 / 184 / 2))
    assert round(level.macro_f1, 2) == 0.46
    assert cls.chance(np.zeros((2, 2), np.int64)) is None


def test_auroc_from_a_histogram_counts_ties_in_a_bin_as_half():
    # Four bins. Negatives at scores 0.1, 0.1, 0.3, 0.6; positives at 0.3, 0.6, 0.9, 0.9.
    # Pairs (16): the positive at 0.3 beats 2 and ties 1 (2.5), at 0.6 beats 3 and ties 1
    # (3.5), each at 0.9 beats all 4 (8): 14 / 16.
    histogram = np.array([[2, 1, 1, 0], [0, 1, 1, 2]])
    assert cls.auroc(histogram) == 0.875
    assert cls.auroc(np.array([[3, 0], [0, 5]])) == 1.0
    assert cls.auroc(np.array([[0, 3], [5, 0]])) == 0.0
    assert cls.auroc(np.array([[2, 2], [1, 1]])) == 0.5  # all in the same places
    assert math.isnan(cls.auroc(np.array([[0, 0], [1, 2]])))  # no negatives


def test_probability_bins_are_equal_and_closed_at_one():
    p = np.array([0.0, 0.0009, 0.001, 0.5, 0.9999, 1.0])
    np.testing.assert_array_equal(cls.probability_bins(p), [0, 0, 1, 500, 999, 999])
    np.testing.assert_array_equal(cls.probability_bins(p, bins=4), [0, 0, 0, 2, 3, 3])


def test_counts_per_group_add_up_to_the_counts_of_the_pool():
    true = np.array([0, 1, 1, 2, 0, 2, 2])
    predicted = np.array([0, 1, 0, 2, 2, 2, 1])
    groups = np.array([0, 0, 1, 1, 1, 0, 1])
    counts = cls.confusion_counts(true, predicted, groups, 2, 3)
    np.testing.assert_array_equal(counts[0], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(counts[1], [[0, 0, 1], [1, 0, 0], [0, 1, 1]])
    pooled = cls.confusion_counts(true, predicted, np.zeros(7, np.int64), 1, 3)[0]
    np.testing.assert_array_equal(counts.sum(axis=0), pooled)

    probability = np.array([0.1, 0.8, 0.3, 0.95])
    hist = cls.histogram_counts(np.array([0, 1, 0, 1]), probability, np.array([0, 0, 1, 1]), 2, 4)
    np.testing.assert_array_equal(hist[0], [[1, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(hist[1], [[0, 1, 0, 0], [0, 0, 0, 1]])


def rank_auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """The exact AUROC: the share of (positive, negative) pairs ranked right, ties 1/2."""
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def test_binned_auroc_is_the_exact_auroc_when_no_bin_holds_both_classes():
    rng = np.random.default_rng(0)
    # Distinct bins for every example: scores at bin centres, shuffled between the classes.
    centres = (rng.permutation(cls.BINS)[:300] + 0.5) / cls.BINS
    true = (rng.random(300) < np.clip(centres, 0.05, 0.95)).astype(np.int64)
    histogram = cls.histogram_counts(true, centres, np.zeros(300, np.int64), 1)[0]
    exact = rank_auroc(centres[true == 0], centres[true == 1])
    assert 0.6 < exact < 0.95
    assert cls.auroc(histogram) == pytest.approx(exact, abs=1e-12)
    # Continuous scores (some pairs share a bin): within the bin width.
    scores = np.clip(rng.normal(0.5 + 0.1 * (2 * true - 1), 0.2), 0, 1)
    histogram = cls.histogram_counts(true, scores, np.zeros(300, np.int64), 1)[0]
    assert cls.auroc(histogram) == pytest.approx(
        rank_auroc(scores[true == 0], scores[true == 1]), abs=1e-3
    )


def test_figures_and_record_fields():
    confusion = np.array([[80, 4], [10, 6]])
    histogram = np.zeros((2, 4), np.int64)
    histogram[0] = [50, 30, 4, 0]
    histogram[1] = [0, 6, 4, 6]
    found = cls.class_figures(confusion, histogram)
    fields = cls.record_fields(found, ("ok", "fault"), two_classes=True)
    # ok: precision 80/90, recall 80/84, F1 160/174; fault: 6/10, 6/16, 12/26.
    assert fields["per_class"] == {
        "ok": {
            "precision": pytest.approx(80 / 90),
            "recall": pytest.approx(80 / 84),
            "f1": pytest.approx(160 / 174),
            "support": 84,
        },
        "fault": {
            "precision": pytest.approx(0.6),
            "recall": pytest.approx(6 / 16),
            "f1": pytest.approx(12 / 26),
            "support": 16,
        },
    }
    assert fields["macro_f1"] == pytest.approx((160 / 174 + 12 / 26) / 2)
    # Positives: 6 in bin 1 (50 negatives below, 30 level), 4 in bin 2 (80 below, 4 level),
    # 6 in bin 3 (84 below): (6*65 + 4*82 + 6*84) / (84*16).
    assert fields["auroc"] == pytest.approx((6 * 65 + 4 * 82 + 6 * 84) / (84 * 16))
    assert fields["confusion"] == [[80, 4], [10, 6]]
    assert type(fields["confusion"][0][0]) is int
    assert fields["chance"] == {
        "class": "ok",
        "accuracy": 0.84,
        "macro_f1": pytest.approx(168 / 184 / 2),
    }
    missing = cls.record_fields(None, ("ok", "fault"), two_classes=True)
    assert math.isnan(missing["macro_f1"]) and math.isnan(missing["auroc"])
    assert missing["per_class"] is missing["confusion"] is missing["chance"] is None
    assert "auroc" not in cls.record_fields(None, ("a", "b", "c"), two_classes=False)
    assert cls.class_figures(np.zeros((2, 2)), histogram * 0) is None
