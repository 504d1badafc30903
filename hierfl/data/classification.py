"""Classification figures from counts that add up across plants (pure numpy, no JAX).

The counts: a confusion matrix `[C, C]` (int64; rows the true class, columns the predicted)
and, for two classes, a histogram `[2, B]` (row t: examples of true class t by the bin of
their predicted probability of class 1; B equal bins over [0, 1], the last closed). Counts
of plants add, so the figures of summed counts are those of the pooled test sets, exactly.

Conventions: a ratio 0/0 is 0 (precision of a class never predicted, recall of an absent
one, F1 of both; scikit-learn's `zero_division=0`). Macro F1 averages the classes present
in the test set or the predictions. AUROC is the trapezoid under the ROC curve through the
bin edges: the exact rank-based AUROC except that a positive and a negative in one bin
count as a tie (1/2), so exact when no bin holds both, and off by at most half the share of
pairs that share a bin otherwise; NaN without both classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

BINS = 1000
"""Bins of a two-class task's probability histogram: AUROC to within pairs closer than 0.001."""


def probability_bins(probability: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The histogram bin, int64 in [0, bins), of each probability in [0, 1]."""
    scaled = np.floor(np.asarray(probability, np.float64) * bins)
    return np.clip(scaled, 0, bins - 1).astype(np.int64)


def confusion_counts(
    true: np.ndarray, predicted: np.ndarray, groups: np.ndarray, num_groups: int, classes: int
) -> np.ndarray:
    """Each group's confusion matrix, `[num_groups, classes, classes]` int64, from int arrays `[N]`."""
    index = (np.asarray(groups, np.int64) * classes + true) * classes + predicted
    counts = np.bincount(index, minlength=num_groups * classes * classes)
    return counts.astype(np.int64).reshape(num_groups, classes, classes)


def histogram_counts(
    true: np.ndarray,
    probability: np.ndarray,
    groups: np.ndarray,
    num_groups: int,
    bins: int = BINS,
) -> np.ndarray:
    """Each group's histogram of the probability of class 1 per true class (0 or 1), `[num_groups, 2, bins]` int64."""
    index = (np.asarray(groups, np.int64) * 2 + true) * bins + probability_bins(probability, bins)
    counts = np.bincount(index, minlength=num_groups * 2 * bins)
    return counts.astype(np.int64).reshape(num_groups, 2, bins)


class PerClass(NamedTuple):
    """Per-class figures, `[C]` each: precision, recall, F1 (float64; 0/0 is 0) and support (int64 test examples)."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """`numerator / denominator`, 0 where the denominator is 0."""
    out = np.zeros(np.shape(numerator), np.float64)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def per_class_scores(confusion: np.ndarray) -> PerClass:
    """Precision, recall, F1 and support of each class from a `[C, C]` confusion matrix."""
    confusion = np.asarray(confusion, np.int64)
    hits = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    return PerClass(
        _ratio(hits, predicted),
        _ratio(hits, support),
        _ratio(2 * hits, support + predicted),  # 2PR / (P + R), defined where P and R are not
        support,
    )


def macro_f1(confusion: np.ndarray) -> float:
    """The mean F1 over the classes present in the test set or the predictions; NaN if none."""
    confusion = np.asarray(confusion, np.int64)
    present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    if not present.any():
        return math.nan
    return float(per_class_scores(confusion).f1[present].mean())


def auroc(histogram: np.ndarray) -> float:
    """The area under the ROC curve of class 1 from a `[2, B]` histogram (see the module's note on bins).

    Each positive scores 1 for every negative in a lower bin and 1/2 for every negative in
    its own bin; the mean over all positive-negative pairs. NaN without both classes.
    """
    negative, positive = np.asarray(histogram, np.float64)
    pairs = negative.sum() * positive.sum()
    if pairs == 0:
        return math.nan
    below = np.cumsum(negative) - negative
    return float(np.sum(positive * (below + negative / 2)) / pairs)


class Chance(NamedTuple):
    """What always predicting the test set's majority class scores: the class (the lowest index on ties), accuracy and macro F1."""

    majority: int
    accuracy: float
    macro_f1: float


def chance(confusion: np.ndarray) -> Chance | None:
    """The chance level of the test set a confusion matrix counts; None if it counts nothing."""
    support = np.asarray(confusion, np.int64).sum(axis=1)
    total = int(support.sum())
    if total == 0:
        return None
    majority = int(np.argmax(support))
    constant = np.zeros((len(support), len(support)), np.int64)
    constant[:, majority] = support
    return Chance(majority, int(support[majority]) / total, macro_f1(constant))


class ClassFigures(NamedTuple):
    """Everything one test set's counts say: confusion `[C, C]`, per-class scores, macro F1,
    AUROC (NaN unless two classes, both present) and the chance level."""

    confusion: np.ndarray
    per_class: PerClass
    macro_f1: float
    auroc: float
    chance: Chance


def class_figures(confusion: np.ndarray, histogram: np.ndarray) -> ClassFigures | None:
    """The figures of a confusion matrix and histogram (`[0, 0]`: none, AUROC NaN); None if they count no example."""
    confusion = np.asarray(confusion, np.int64)
    level = chance(confusion)
    if level is None:
        return None
    histogram = np.asarray(histogram, np.int64)
    area = auroc(histogram) if histogram.size else math.nan
    return ClassFigures(confusion, per_class_scores(confusion), macro_f1(confusion), area, level)


def record_fields(
    found: ClassFigures | None, class_names: Sequence[str], *, two_classes: bool
) -> dict[str, Any]:
    """A round record's entries for one test set, as JSON values; NaN and None where nothing was counted.

    `macro_f1`; `auroc` (two-class tasks only); `per_class` {class: {precision, recall,
    f1, support}}; `confusion` [[int]] (rows true, columns predicted); `chance` {class,
    accuracy, macro_f1}.
    """
    fields: dict[str, Any] = {"macro_f1": math.nan if found is None else found.macro_f1}
    if two_classes:
        fields["auroc"] = math.nan if found is None else found.auroc
    if found is None:
        return {**fields, "per_class": None, "confusion": None, "chance": None}
    scores = found.per_class
    fields["per_class"] = {
        name: {
            "precision": float(scores.precision[c]),
            "recall": float(scores.recall[c]),
            "f1": float(scores.f1[c]),
            "support": int(scores.support[c]),
        }
        for c, name in enumerate(class_names)
    }
    fields["confusion"] = found.confusion.tolist()
    fields["chance"] = {
        "class": class_names[found.chance.majority],
        "accuracy": found.chance.accuracy,
        "macro_f1": found.chance.macro_f1,
    }
    return fields
