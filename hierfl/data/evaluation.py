"""Evaluation of a global model on held-out test examples: sums per plant, combined into scores.

Every figure is computed from per-plant sums that add up exactly across plants
(`PlantSums`: example count, loss and metric sums, and for a classifier the confusion
matrix and, with two classes, a histogram of the probability of class 1). `make_evaluator`
computes each plant's sums over the whole test set and combines them with
`combine_plant_sums`, the same function the cloud applies to sums the edges send
(`make_plant_evaluator`, one plant's test examples; under homomorphic encryption,
`hierfl.runtime.encrypted`). So evaluating at the edges is a matter of sending `PlantSums`.
The figures themselves are `hierfl.data.classification`'s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.data import classification
from hierfl.data.classification import ClassFigures
from hierfl.data.plan import TestSet
from hierfl.data.tasks import Task
from hierfl.data.tasks.models import Model, Params

EVAL_BATCH = 1024


def _no_counts() -> np.ndarray:
    return np.zeros((0, 0), np.int64)


@dataclasses.dataclass(frozen=True)
class PlantSums:
    """One plant's test examples scored, as sums that add across plants.

    `count` examples, the sum of their losses, the sum of each metric's example values;
    for a classifier the `confusion` matrix `[C, C]` (int64 counts, rows the true class,
    columns the predicted one) and for two classes the `histogram` `[2, BINS]` of the
    predicted probability of class 1 per true class (`hierfl.data.classification`). Both
    are `[0, 0]` where the task has none (`count_shapes`).
    """

    count: int
    loss_sum: float
    metric_sums: Mapping[str, float]
    confusion: np.ndarray = dataclasses.field(default_factory=_no_counts)
    histogram: np.ndarray = dataclasses.field(default_factory=_no_counts)


@dataclasses.dataclass(frozen=True)
class Scores:
    """Mean test loss and the task's metrics, overall and on each plant's test set.

    `score` and `per_plant` are the deciding metric's (`task.metric`: accuracy for
    classification); `metrics` and `plant_metrics` hold every metric of the task by name.
    A classifier's `classification` (overall) and `plant_classification` are its per-class
    figures, macro F1, AUROC and chance level (`classification.ClassFigures`); None where
    nothing was counted (a plant that did not report) and for regression tasks.
    """

    loss: float
    score: float
    per_plant: tuple[float, ...]
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    plant_metrics: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    classification: ClassFigures | None = None
    plant_classification: tuple[ClassFigures | None, ...] = ()


def count_shapes(task: Task) -> tuple[int, int]:
    """`(classes, bins)`: a `PlantSums.confusion` is `[classes, classes]` and its `histogram`
    `[2, bins]`; 0 where the task has none (regression; bins unless two classes)."""
    classes = 0 if task.is_regression else task.num_classes
    return classes, classification.BINS if classes == 2 else 0


def make_sums_evaluator(
    model: Model, task: Task, test: TestSet, num_plants: int, batch: int = EVAL_BATCH
) -> Callable[[Params], list[PlantSums]]:
    """`evaluate(params) -> [PlantSums] * num_plants` over `test`, by `test.plant`.

    One compiled function over fixed-size padded batches gives each example's loss, metric
    values and, for a classifier, predicted class and (two classes) probability of class 1;
    numpy `bincount`s add them per plant. Padding rows are cut off before counting.
    """
    metrics = task.metrics
    classes, bins = count_shapes(task)

    @jax.jit
    def per_example(params, x, y):
        outputs = model.apply(params, x)
        values = tuple(m.example_value(outputs, y) for m in metrics)
        predicted = jnp.argmax(outputs, axis=-1).astype(jnp.int32) if classes else None
        probability = jax.nn.softmax(outputs, axis=-1)[:, 1] if bins else None
        return task.example_loss(outputs, y), values, predicted, probability

    size = len(test.y)
    batch = max(min(batch, size), 1)
    padded = -(-size // batch) * batch
    plant = np.asarray(test.plant, np.int64)
    counts = np.bincount(plant, minlength=num_plants)

    def evaluate(params: Params) -> list[PlantSums]:
        outputs = [
            per_example(params, *padded_batch(test.x, test.y, s, batch))
            for s in range(0, padded, batch)
        ]

        def examples(pick: Callable, dtype: Any) -> np.ndarray:
            return np.concatenate([np.asarray(pick(o)) for o in outputs])[:size].astype(dtype)

        def per_plant(values: np.ndarray) -> np.ndarray:
            return np.bincount(plant, weights=values, minlength=num_plants)

        loss_sums = per_plant(examples(lambda o: o[0], np.float64))
        metric_sums = {
            m.name: per_plant(examples(lambda o, k=k: o[1][k], np.float64))
            for k, m in enumerate(metrics)
        }
        confusion = histogram = np.zeros((num_plants, 0, 0), np.int64)
        if classes:
            true = np.asarray(test.y, np.int64)
            predicted = examples(lambda o: o[2], np.int64)
            confusion = classification.confusion_counts(true, predicted, plant, num_plants, classes)
            if bins:
                probability = examples(lambda o: o[3], np.float64)
                histogram = classification.histogram_counts(
                    true, probability, plant, num_plants, bins
                )
        return [
            PlantSums(
                int(counts[p]),
                float(loss_sums[p]),
                {name: float(sums[p]) for name, sums in metric_sums.items()},
                confusion[p],
                histogram[p],
            )
            for p in range(num_plants)
        ]

    return evaluate


def padded_batch(
    x: np.ndarray, y: np.ndarray, start: int, batch: int
) -> tuple[jax.Array, jax.Array]:
    """Rows `start:start + batch` of `x` and `y` on the JAX device, the last batch padded
    with zero rows to `batch` (one compiled shape); the test set itself is not copied."""

    def rows(a: np.ndarray) -> jax.Array:
        part = a[start : start + batch]
        if len(part) < batch:
            part = np.concatenate([part, np.zeros((batch - len(part), *a.shape[1:]), a.dtype)])
        return jnp.asarray(part)

    return rows(x), rows(y)


def make_evaluator(
    model: Model, task: Task, test: TestSet, num_plants: int, batch: int = EVAL_BATCH
) -> Callable[[Params], Scores]:
    """`evaluate(params) -> Scores` over `test`: each plant's sums, combined (one compile)."""
    sums = make_sums_evaluator(model, task, test, num_plants, batch)
    return lambda params: combine_plant_sums(task, sums(params))


def empty_sums(task: Task) -> PlantSums:
    """The sums of no example (a plant without test examples)."""
    classes, bins = count_shapes(task)
    return PlantSums(
        0,
        0.0,
        {m.name: 0.0 for m in task.metrics},
        np.zeros((classes, classes), np.int64),
        np.zeros((2, bins) if bins else (0, 0), np.int64),
    )


def make_plant_evaluator(
    model: Model, task: Task, test: TestSet, plant: int, batch: int = EVAL_BATCH
) -> Callable[[Params], PlantSums]:
    """`evaluate(params) -> PlantSums` over the test examples of plant index `plant` (one compile)."""
    mine = test.plant == plant
    if not mine.any():
        return lambda params: empty_sums(task)
    own = TestSet(test.x[mine], test.y[mine], np.zeros(int(mine.sum()), np.int32))
    sums = make_sums_evaluator(model, task, own, 1, batch)
    return lambda params: sums(params)[0]


def combine_plant_sums(task: Task, sums: Sequence[PlantSums | None]) -> Scores:
    """The `Scores` of the whole test set from each plant's sums (None: that plant did not report).

    Overall values are over the plants that reported; a missing plant's per-plant values
    are NaN (its figures None). Counts add exactly, so a classifier's overall figures are
    those of the reporting plants' pooled test sets.
    """
    reported = [s for s in sums if s is not None and s.count > 0]
    total = sum(s.count for s in reported)
    overall, per_plant = {}, {}
    for metric in task.metrics:
        overall[metric.name] = (
            metric.reduce(sum(s.metric_sums[metric.name] for s in reported) / total)
            if total
            else math.nan
        )
        per_plant[metric.name] = tuple(
            metric.reduce(s.metric_sums[metric.name] / s.count)
            if s is not None and s.count > 0
            else math.nan
            for s in sums
        )
    loss = sum(s.loss_sum for s in reported) / total if total else math.nan
    first = task.metrics[0].name
    overall_figures, plant_figures = None, ()
    if count_shapes(task)[0]:
        plant_figures = tuple(
            classification.class_figures(s.confusion, s.histogram) if s is not None else None
            for s in sums
        )
        if reported:
            overall_figures = classification.class_figures(
                sum(s.confusion for s in reported), sum(s.histogram for s in reported)
            )
    return Scores(
        loss, overall[first], per_plant[first], overall, per_plant, overall_figures, plant_figures
    )


def metric_fields(task: Task, scores: Scores, plant_names: Sequence[str]) -> dict[str, Any]:
    """The round record's metric entries: each metric by name, then per plant as `plant_<name>`.

    For a classification task that is `{"accuracy": ..., "plant_accuracy": {plant: ...}}`,
    then the figures of `classification.record_fields` (`macro_f1`, `auroc` with two
    classes, `per_class`, `confusion`, `chance`), overall and per plant as `plant_<name>`.
    """
    fields: dict[str, Any] = {}
    for metric in task.metrics:
        fields[metric.name] = scores.metrics[metric.name]
    for metric in task.metrics:
        fields[metric.plant_key] = dict(zip(plant_names, scores.plant_metrics[metric.name]))
    classes, bins = count_shapes(task)
    if not classes:
        return fields

    def entries(found: ClassFigures | None) -> dict[str, Any]:
        return classification.record_fields(found, task.class_names, two_classes=bool(bins))

    fields.update(entries(scores.classification))
    plants = [entries(scores.plant_classification[p]) for p in range(len(plant_names))]
    for key in entries(None):
        fields[f"plant_{key}"] = {p: entry[key] for p, entry in zip(plant_names, plants)}
    return fields
