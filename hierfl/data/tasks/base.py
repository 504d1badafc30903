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
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hierfl.data import partition
from hierfl.data.scoring import Metric
from hierfl.errors import DataError

_POOL = 13  # purpose of the pool-division stream: default_rng([seed, _POOL])
_SPLIT = 14  # purpose of a plant's test split: default_rng([seed, _SPLIT, plant])


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
class PerPlant:
    """A task's data made for each plant on its own, by `one(request, test_fraction, seed)`.

    Called like any `MakePlantData` (one plant after the other, lazily); `plant_data` makes
    one plant's alone, which is all a device process of that plant needs.
    """

    one: Callable[[PlantRequest, float, int], PlantData]

    def __call__(
        self, requests: Sequence[PlantRequest], test_fraction: float, seed: int
    ) -> Iterator[PlantData]:
        return (self.one(request, test_fraction, seed) for request in requests)


def plant_data(
    task: Task, requests: Sequence[PlantRequest], index: int, test_fraction: float, seed: int
) -> PlantData:
    """Plant `index`'s data alone: made on its own where the task makes each plant's so
    (`PerPlant`), else taken from the whole federation's (a fixed pool divided among the
    plants, which needs every plant's request)."""
    make = task.make_plant_data
    if isinstance(make, PerPlant):
        return make.one(requests[index], test_fraction, seed)
    return next(itertools.islice(make(requests, test_fraction, seed), index, None))


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

    A task gets its data one of two ways, exactly one of them set: `make_plant_data`
    generates every plant's examples from the seed (the bundled tasks), or `loader` reads
    each device's own files (`hierfl.data.files`: a built-in loader, or the user's
    function `path -> (x, y)`) from the paths the topology gives (`[data] path`).
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    models: Mapping[str, Callable[[nnx.Rngs], nnx.Module]]
    default_model: str
    make_plant_data: MakePlantData | None = None
    default_samples_per_device: int | None = None
    example_loss: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy
    metrics: tuple[Metric, ...] = (ACCURACY,)
    target_names: tuple[str, ...] = ()
    strata: Callable[[np.ndarray], np.ndarray] = class_strata
    example_classes: tuple[str, ...] = ()
    loader: Any = None
    standardize: bool = False
    """Whether examples are standardized per input channel with the federation's mean and
    std, found by a census before round 1 (`hierfl.data.census`; no row leaves a device)."""

    def __post_init__(self):
        if (self.make_plant_data is None) == (self.loader is None):
            raise ValueError(
                f"task {self.name!r}: give exactly one of make_plant_data (generated data) "
                "and loader (each device's files)"
            )
        if self.default_model not in self.models:
            raise ValueError(
                f"task {self.name!r}: default_model {self.default_model!r} is not one of its "
                f"models ({', '.join(sorted(self.models))})"
            )

    @property
    def reads_files(self) -> bool:
        """Whether each device reads its own files (else the task generates every plant's data)."""
        return self.loader is not None

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


def divide_pool(
    groups: np.ndarray,
    names: Sequence[str],
    requests: Sequence[PlantRequest],
    test_fraction: float,
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each plant's (train, test) indices into a fixed pool whose examples fall in `groups`.

    `groups[i]` indexes `names` (classes, seasons). A plant takes only the groups its
    request's `classes` name (all by default); each group is shared among the plants that
    take it in proportion to `num_devices / len(classes)`. The plant's share is then split
    by group into test (`test_fraction`) and train; a plant asking for `train_samples` gets
    that many (DataError if its share is smaller).
    """
    rng = np.random.default_rng([seed, _POOL])
    kinds = [
        tuple(names.index(c) for c in r.classes) if r.classes else tuple(range(len(names)))
        for r in requests
    ]
    shares: list[list[np.ndarray]] = [[] for _ in requests]
    for g in range(len(names)):
        takers = [p for p, k in enumerate(kinds) if g in k]
        if not takers:
            continue
        members = rng.permutation(np.flatnonzero(groups == g))
        sizes = partition.proportional_sizes(
            len(members), [requests[p].num_devices / len(kinds[p]) for p in takers]
        )
        for p, chunk in zip(takers, np.split(members, np.cumsum(sizes)[:-1])):
            shares[p].append(chunk)
    divided = []
    for p, request in enumerate(requests):
        share = np.sort(np.concatenate(shares[p]))
        split_rng = np.random.default_rng([seed, _SPLIT, request.index])
        train, test = stratified_test_split(groups[share], test_fraction, split_rng)
        train, test = share[train], share[test]
        if request.train_samples is not None:
            if request.train_samples > len(train):
                raise DataError(
                    f"plant {request.name!r} asks for {request.train_samples} training examples; "
                    f"its share of the pool has {len(train)}"
                )
            train = np.sort(split_rng.permutation(train)[: request.train_samples])
        divided.append((train, test))
    return divided
