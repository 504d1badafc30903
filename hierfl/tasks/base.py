"""What a task is: a model family, a data source split per plant, a loss and a score.

A task produces each plant's train and test examples (`PlantData`) from `PlantRequest`s;
the plan then divides a plant's train pool among its lines and devices. Tasks with a
fixed pool (digits) divide the pool among plants; tasks that generate data (bearing)
generate each plant's own, so plants differ the way real plants do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class PlantRequest:
    """What the plan asks a task for, for one plant.

    `train_samples` is the exact number of training examples the plant needs, or None for
    a fair share of a fixed pool (proportional to `num_devices`). `shift` in [0, 1] is the
    plant's feature-shift severity, interpreted by the task.
    """

    name: str
    index: int
    num_devices: int
    train_samples: int | None
    shift: float


@dataclasses.dataclass(frozen=True)
class PlantData:
    """One plant's examples: `x_*` float32 `[N, *input_shape]`, `y_*` int32 `[N]`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, `[B]`, for integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example 0/1 accuracy, `[B]` float32."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


MakePlantData = Callable[[Sequence[PlantRequest], float, int], Iterable[PlantData]]


@dataclasses.dataclass(frozen=True)
class Task:
    """A learning problem: models by name, data per plant, per-example loss and score.

    `make_plant_data(requests, test_fraction, seed)` yields one `PlantData` per request, in
    order, deterministic in `seed`; generating tasks yield lazily, so the plan holds one
    plant's raw pool at a time.
    `example_loss(logits, y)` is minimised; `example_score(logits, y)` (higher is better,
    accuracy for classification) is what evaluation reports.
    `default_samples_per_device` is used by generating tasks when a line sets none;
    it is None for fixed-pool tasks, whose pool is split evenly.
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    models: Mapping[str, Callable[[nnx.Rngs], nnx.Module]]
    default_model: str
    make_plant_data: MakePlantData
    default_samples_per_device: int | None = None
    example_loss: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy
    example_score: Callable[[jax.Array, jax.Array], jax.Array] = correct

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_test_split(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with `test_fraction` of every class held out (at least one each)."""
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, int(round(test_fraction * len(members))))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
