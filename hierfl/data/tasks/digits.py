"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes).

The data ships inside the scikit-learn wheel: nothing is downloaded. Pixels are scaled to
[0, 1] and shaped `[8, 8, 1]`. Plants share the pool in proportion to their devices,
stratified by class; a plant's `shift` applies a camera-like change to its train and test
images alike (contrast gain, brightness offset, sensor noise), drawn once per plant.
When a plant's `classes` (topology) limit it to some digits, the pool is divided class by
class instead (`divide_pool`, as the energy tasks do): each digit is shared among the
plants that have it, and each plant holds out `test_fraction` of its own digits.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hierfl.data.partition import proportional_sizes, split_stratified
from hierfl.data.tasks.base import (
    PlantData,
    PlantRequest,
    Task,
    divide_pool,
    stratified_test_split,
)
from hierfl.data.tasks.models import CNN2D, MLP
from hierfl.errors import DataError

SHAPE = (8, 8, 1)
CLASSES = tuple(str(d) for d in range(10))


def digits_file() -> Path:
    """scikit-learn's `digits.csv.gz`, found without importing scikit-learn.

    Importing it (and scipy behind it) costs every device process about a second of CPU
    for one small file: `load_digits` itself only reads these 1,797 rows of 64 pixels and
    a label.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits task needs scikit-learn installed (it ships the data)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def load_digits_pool() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: x float32 `[N, 8, 8, 1]` in [0, 1], y int32 `[N]`."""
    table = np.loadtxt(digits_file(), delimiter=",", dtype=np.float64)
    x = (table[:, :-1] / 16.0).astype(np.float32).reshape((-1, *SHAPE))
    return x, table[:, -1].astype(np.int32)


def shift_images(x: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A plant's camera: gain in 1 +- 0.6 s, offset in +-0.3 s, noise std 0.15 s; clipped to [0, 1]."""
    if severity == 0.0:
        return x
    gain = 1.0 + severity * rng.uniform(-0.6, 0.6)
    offset = severity * rng.uniform(-0.3, 0.3)
    noisy = gain * x + offset + rng.normal(0.0, 0.15 * severity, size=x.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def make_plant_data(
    requests: Sequence[PlantRequest], test_fraction: float, seed: int
) -> list[PlantData]:
    """Splits the digits pool into per-plant train and test sets (see the module docstring)."""
    x, y = load_digits_pool()
    if any(request.classes is not None for request in requests):
        parts = divide_pool(y, CLASSES, requests, test_fraction, seed)
    else:
        parts = _shares_of_the_pool(y, requests, test_fraction, seed)
    plants = []
    for request, (train, test) in zip(requests, parts):
        shift_rng = np.random.default_rng([seed, 2, request.index])
        camera_state = shift_rng.bit_generator.state
        x_train = shift_images(x[train], request.shift, shift_rng)
        shift_rng.bit_generator.state = camera_state  # same camera for the plant's test images
        x_test = shift_images(x[test], request.shift, shift_rng)
        plants.append(PlantData(x_train, y[train], x_test, y[test]))
    return plants


def _shares_of_the_pool(
    y: np.ndarray, requests: Sequence[PlantRequest], test_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each plant's (train, test) indices when every plant has every digit: one stratified
    test split of the pool, then stratified shares of train and test by `_train_sizes`."""
    rng = np.random.default_rng([seed, 1])
    train_idx, test_idx = stratified_test_split(y, test_fraction, rng)
    train_sizes = _train_sizes(requests, len(train_idx))
    test_sizes = proportional_sizes(len(test_idx), train_sizes)
    train_parts = split_stratified(y[train_idx], train_sizes, rng)
    test_parts = split_stratified(y[test_idx], test_sizes, rng)
    return [(train_idx[tr], test_idx[te]) for tr, te in zip(train_parts, test_parts)]


def _train_sizes(requests: Sequence[PlantRequest], pool: int) -> np.ndarray:
    """Exact requests are served first; the rest of the pool goes to the others by device count."""
    fixed = sum(r.train_samples for r in requests if r.train_samples is not None)
    if fixed > pool:
        asking = ", ".join(
            f"{r.name!r} {r.train_samples}" for r in requests if r.train_samples is not None
        )
        raise DataError(
            f"digits: plants ask for {fixed} training examples ({asking}) but the pool has {pool}"
        )
    flexible = [r for r in requests if r.train_samples is None]
    shares = proportional_sizes(pool - fixed, [r.num_devices for r in flexible]) if flexible else []
    share_of = dict(zip((r.index for r in flexible), shares))
    return np.array(
        [r.train_samples if r.train_samples is not None else share_of[r.index] for r in requests]
    )


TASK = Task(
    name="digits",
    description="scikit-learn 8x8 handwritten digits (real data, 10 classes)",
    input_shape=SHAPE,
    class_names=CLASSES,
    models={
        "mlp": lambda rngs: MLP(64, (128,), 10, rngs=rngs),
        "cnn": lambda rngs: CNN2D(1, (8, 8), 10, rngs=rngs),
    },
    default_model="mlp",
    make_plant_data=make_plant_data,
)
