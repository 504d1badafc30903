"""Evaluation of a global model on the held-out test set: overall and per plant.

The cloud evaluates the whole test set (`make_evaluator`). Where the cloud holds no
plaintext model (homomorphic encryption, `hierfl.runtime.encrypted`), each plant's edge
evaluates the global model on its own test examples (`make_plant_evaluator`) and
reports sums, which `combine_plant_sums` turns into the same `Scores`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.data.plan import TestSet
from hierfl.data.tasks import Task
from hierfl.data.tasks.models import Model, Params

EVAL_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class Scores:
    """Mean test loss and the task's metrics, overall and on each plant's test set.

    `score` and `per_plant` are the deciding metric's (`task.metric`: accuracy for
    classification); `metrics` and `plant_metrics` hold every metric of the task by name.
    """

    loss: float
    score: float
    per_plant: tuple[float, ...]
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    plant_metrics: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)


def make_evaluator(
    model: Model, task: Task, test: TestSet, num_plants: int, batch: int = EVAL_BATCH
) -> Callable[[Params], Scores]:
    """`evaluate(params) -> Scores` over `test`, in fixed-size padded batches (one compile)."""
    metrics = task.metrics

    @jax.jit
    def per_example(params, x, y):
        outputs = model.apply(params, x)
        return task.example_loss(outputs, y), tuple(m.example_value(outputs, y) for m in metrics)

    size = len(test.y)
    batch = min(batch, size)
    padded = -(-size // batch) * batch
    x = np.concatenate([test.x, np.zeros((padded - size, *test.x.shape[1:]), test.x.dtype)])
    y = np.concatenate([test.y, np.zeros((padded - size, *test.y.shape[1:]), test.y.dtype)])
    plant_counts = np.maximum(np.bincount(test.plant, minlength=num_plants), 1)

    def evaluate(params: Params) -> Scores:
        losses, values = [], []
        for start in range(0, padded, batch):
            loss, value = per_example(
                params, jnp.asarray(x[start : start + batch]), jnp.asarray(y[start : start + batch])
            )
            losses.append(np.asarray(loss))
            values.append([np.asarray(v) for v in value])
        loss = np.concatenate(losses)[:size].astype(np.float64)
        overall, per_plant = {}, {}
        for k, metric in enumerate(metrics):
            value = np.concatenate([v[k] for v in values])[:size].astype(np.float64)
            overall[metric.name] = metric.reduce(float(value.mean()))
            plant_means = (
                np.bincount(test.plant, weights=value, minlength=num_plants) / plant_counts
            )
            per_plant[metric.name] = tuple(metric.reduce(float(m)) for m in plant_means)
        first = metrics[0].name
        return Scores(float(loss.mean()), overall[first], per_plant[first], overall, per_plant)

    return evaluate


@dataclasses.dataclass(frozen=True)
class PlantSums:
    """One plant's test examples scored: `count`, the sum of example losses, and the sum of each metric's example values."""

    count: int
    loss_sum: float
    metric_sums: Mapping[str, float]


def make_plant_evaluator(
    model: Model, task: Task, test: TestSet, plant: int, batch: int = EVAL_BATCH
) -> Callable[[Params], PlantSums]:
    """`evaluate(params) -> PlantSums` over the test examples of plant index `plant` (one compile)."""
    mine = test.plant == plant
    if not mine.any():
        return lambda params: PlantSums(0, 0.0, {m.name: 0.0 for m in task.metrics})
    evaluate = make_evaluator(
        model,
        task,
        TestSet(test.x[mine], test.y[mine], np.zeros(int(mine.sum()), np.int32)),
        1,
        batch,
    )
    count = int(mine.sum())

    def plant_sums(params: Params) -> PlantSums:
        scores = evaluate(params)
        # `make_evaluator` reports means (square-rooted for RMSE); undo that to get sums.
        sums = {
            m.name: count * (scores.metrics[m.name] ** 2 if m.root else scores.metrics[m.name])
            for m in task.metrics
        }
        return PlantSums(count, count * scores.loss, sums)

    return plant_sums


def combine_plant_sums(task: Task, sums: Sequence[PlantSums | None]) -> Scores:
    """The `Scores` of the whole test set from each plant's sums (None: that plant did not report).

    Overall values are over the plants that reported; a missing plant's per-plant value is NaN.
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
    return Scores(loss, overall[first], per_plant[first], overall, per_plant)


def metric_fields(task: Task, scores: Scores, plant_names: Sequence[str]) -> dict[str, Any]:
    """The round record's metric entries: each metric by name, then per plant as `plant_<name>`.

    For a classification task that is `{"accuracy": ..., "plant_accuracy": {plant: ...}}`.
    """
    fields: dict[str, Any] = {}
    for metric in task.metrics:
        fields[metric.name] = scores.metrics[metric.name]
    for metric in task.metrics:
        fields[metric.plant_key] = dict(zip(plant_names, scores.plant_metrics[metric.name]))
    return fields
