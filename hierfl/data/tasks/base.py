"""What a task is: a model family, a data source split per plant, a loss and its metrics.

A task produces each plant's train and test examples (`PlantData`) from `PlantRequest`s;
the plan then divides a plant's train pool among its lines and devices. Tasks with a
fixed pool (digits) divide the pool among plants; tasks that generate data (bearing)
generate each plant's own, so plants differ the way real plants do.

Classification tasks have integer labels `y [N]`, a model that outputs logits, softmax
cross-entropy and accuracy. Regression tasks have float targets `y [N, H]` (H outputs,
e.g. the hours to forecast), a model that outputs `[N, H]`, squared error and error
metrics (RMSE, MAE: lower is better). Both divide their data the same way: by `strata`,
integer groups of the targets (the class itself, or quantile bins of a regression target),
which stratified splits and Dirichlet label skew work on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hierfl.data import partition
from hierfl.data.scoring import Metric


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
    classes: tuple[str, ...] | None = None
    """The classes (or fault types) the plant sees, by name; None for all of the task's."""


@dataclasses.dataclass(frozen=True)
class PlantData:
    """One plant's examples: `x_*` float32 `[N, *input_shape]`; `y_*` int32 `[N]` class
    labels, or float32 `[N, H]` regression targets."""

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


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean squared error over the outputs, `[B]`, for `[B, H]` arrays."""
    return jnp.mean(jnp.square(outputs - targets), axis=-1)


def absolute_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean absolute error over the outputs, `[B]`, for `[B, H]` arrays."""
    return jnp.mean(jnp.abs(outputs - targets), axis=-1)


ACCURACY = Metric(
    "accuracy", higher_is_better=True, label="accuracy", percent=True, example_value=correct
)


def rmse(scale: float = 1.0, unit: str = "", what: str = "") -> Metric:
    """Root mean squared error in the target's unit: the model works on targets divided by
    `scale`, so errors are multiplied back. `what` names the target in labels."""
    label = f"RMSE{' of ' + what if what else ''}{f' ({unit})' if unit else ''}"
    return Metric(
        "rmse",
        higher_is_better=False,
        label=label,
        unit=unit,
        root=True,
        example_value=lambda out, y: squared_error(out, y) * scale**2,
    )


def mae(scale: float = 1.0, unit: str = "", what: str = "") -> Metric:
    """Mean absolute error in the target's unit (see `rmse` for `scale`)."""
    label = f"MAE{' of ' + what if what else ''}{f' ({unit})' if unit else ''}"
    return Metric(
        "mae",
        higher_is_better=False,
        label=label,
        unit=unit,
        example_value=lambda out, y: absolute_error(out, y) * scale,
    )


def class_strata(y: np.ndarray) -> np.ndarray:
    """The strata of a classification task: the labels themselves."""
    return np.asarray(y)


def target_bins(num_bins: int) -> Callable[[np.ndarray], np.ndarray]:
    """The strata of a regression task: `num_bins` quantile bins of the mean target."""

    def strata(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, np.float64)
        return partition.quantile_bins(y.reshape(len(y), -1).mean(axis=1), num_bins)

    return strata


MakePlantData = Callable[[Sequence[PlantRequest], float, int], Iterable[PlantData]]


@dataclasses.dataclass(frozen=True)
class Task:
    """A learning problem: models by name, data per plant, per-example loss and metrics.

    `make_plant_data(requests, test_fraction, seed)` yields one `PlantData` per request, in
    order, deterministic in `seed`; generating tasks yield lazily, so the plan holds one
    plant's raw pool at a time.
    `example_loss(outputs, y)` is minimised; `metrics` are what evaluation reports, the
    first deciding (`metric`): accuracy for classification, e.g. RMSE for regression.
    `class_names` name a classifier's outputs; a regression task has none and names its
    outputs in `target_names` instead (its `y` is float32 `[N, len(target_names)]`).
    `strata(y)` gives integer groups of targets for stratified splits and label skew.
    `example_classes` are the kinds of example a plant's `classes` may name when they are
    not the output classes (a regression task's fault types); by default the class names.
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
    metrics: tuple[Metric, ...] = (ACCURACY,)
    target_names: tuple[str, ...] = ()
    strata: Callable[[np.ndarray], np.ndarray] = class_strata
    example_classes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def plant_classes(self) -> tuple[str, ...]:
        """What a plant's `classes` may name: `example_classes`, or the class names."""
        return self.example_classes or self.class_names

    @property
    def metric(self) -> Metric:
        """The deciding metric (best round, comparisons at equal score)."""
        return self.metrics[0]

    @property
    def is_regression(self) -> bool:
        return bool(self.target_names)

    @property
    def num_outputs(self) -> int:
        """Width of the model's output: classes (logits) or regression targets."""
        return len(self.target_names) if self.is_regression else self.num_classes

    @property
    def example_score(self) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """The deciding metric's per-example values (accuracy: 0/1 correct)."""
        return self.metric.example_value


def stratified_test_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with `test_fraction` of every class held out (at least one each)."""
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, int(round(test_fraction * len(members))))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
