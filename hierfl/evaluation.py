"""Evaluation of a global model on the held-out test set: overall and per plant."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.plan import TestSet
from hierfl.tasks import Task
from hierfl.tasks.models import Model, Params

EVAL_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class Scores:
    """Mean test loss, mean score (accuracy) overall, and the score of each plant's test set."""

    loss: float
    score: float
    per_plant: tuple[float, ...]


def make_evaluator(model: Model, task: Task, test: TestSet, num_plants: int, batch: int = EVAL_BATCH) -> Callable[[Params], Scores]:
    """`evaluate(params) -> Scores` over `test`, in fixed-size padded batches (one compile)."""

    @jax.jit
    def per_example(params, x, y):
        logits = model.apply(params, x)
        return task.example_loss(logits, y), task.example_score(logits, y)

    size = len(test.y)
    batch = min(batch, size)
    padded = -(-size // batch) * batch
    x = np.concatenate([test.x, np.zeros((padded - size, *test.x.shape[1:]), test.x.dtype)])
    y = np.concatenate([test.y, np.zeros(padded - size, test.y.dtype)])
    plant_counts = np.bincount(test.plant, minlength=num_plants)

    def evaluate(params: Params) -> Scores:
        losses, scores = [], []
        for start in range(0, padded, batch):
            loss, score = per_example(params, jnp.asarray(x[start : start + batch]), jnp.asarray(y[start : start + batch]))
            losses.append(np.asarray(loss))
            scores.append(np.asarray(score))
        loss = np.concatenate(losses)[:size].astype(np.float64)
        score = np.concatenate(scores)[:size].astype(np.float64)
        per_plant = np.bincount(test.plant, weights=score, minlength=num_plants) / np.maximum(plant_counts, 1)
        return Scores(float(loss.mean()), float(score.mean()), tuple(float(s) for s in per_plant))

    return evaluate
