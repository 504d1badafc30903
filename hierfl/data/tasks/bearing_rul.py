"""`bearing-rul`: remaining useful life of a faulty bearing from one vibration window.

Regression on the run-to-failure trajectories of `hierfl.data.tasks.bearing_rul_data`: each
window is labelled with the hours left until its bearing fails, in (0, 100]. The model
(`EnvelopeCNN` with one output, scaled by 100 h) predicts the RUL in hours, trained on the
squared error of RUL / 100 h; the metrics are RMSE and MAE in hours. A plant's devices train on
windows of its training machines; its test set is
whole machines the plant never trained on (`test_fraction` of its windows), so the score
is that of a new bearing. Plants differ in speed and sensor noise (`shift`); a plant's
`classes` (topology) are the fault types its machines develop (outer, inner, ball).
Stratified splits and Dirichlet skew work on 5 RUL bins (quantiles of the target).
"""

from __future__ import annotations

import math

import numpy as np

from hierfl.data.tasks import bearing_rul_data
from hierfl.data.tasks.base import (
    PerPlant,
    PlantData,
    PlantRequest,
    Task,
    mae,
    rmse,
    squared_error,
    target_bins,
)
from hierfl.data.tasks.models import EnvelopeCNN, ScaledOutput

DEFAULT_SAMPLES_PER_DEVICE = 48
WINDOW = 2048
RUL_SCALE = bearing_rul_data.RECORD_HOURS
"""The network learns RUL / RUL_SCALE (in (0, 1]); the model's output is multiplied back to hours."""
RUL_BINS = 5


def _plant_data(request: PlantRequest, test_fraction: float, seed: int) -> PlantData:
    train_samples = request.train_samples or DEFAULT_SAMPLES_PER_DEVICE * request.num_devices
    fault_types = tuple(request.classes) if request.classes else bearing_rul_data.FAULT_TYPES
    machines = request.num_devices
    per_machine = math.ceil(train_samples / machines)
    # Test machines hold about test_fraction of the plant's windows, at least one per fault type.
    test_machines = max(len(fault_types), round(machines * test_fraction / (1.0 - test_fraction)))
    x, rul, _, _ = bearing_rul_data.generate_machines(
        seed, request.index, machines, per_machine, request.shift, fault_types, WINDOW
    )
    x_test, rul_test, _, _ = bearing_rul_data.generate_machines(
        seed,
        request.index,
        test_machines,
        per_machine,
        request.shift,
        fault_types,
        WINDOW,
        first_machine=machines,
    )
    keep = np.sort(
        np.random.default_rng([seed, 12, request.index]).permutation(len(rul))[:train_samples]
    )
    return PlantData(x[keep, :, None], _target(rul[keep]), x_test[..., None], _target(rul_test))


def _target(rul_hours: np.ndarray) -> np.ndarray:
    return rul_hours.astype(np.float32)[:, None]


def unit_squared_error(outputs, targets):
    """Squared error of RUL / RUL_SCALE: the loss at the network's unit scale."""
    return squared_error(outputs / RUL_SCALE, targets / RUL_SCALE)


TASK = Task(
    name="bearing-rul",
    description="remaining useful life (hours) of a faulty bearing from a vibration window (run-to-failure)",
    input_shape=(WINDOW, 1),
    class_names=(),
    models={"cnn1d": lambda rngs: ScaledOutput(EnvelopeCNN(1, rngs=rngs), RUL_SCALE)},
    default_model="cnn1d",
    make_plant_data=PerPlant(_plant_data),
    default_samples_per_device=DEFAULT_SAMPLES_PER_DEVICE,
    example_loss=unit_squared_error,
    metrics=(rmse(unit="h", what="RUL"), mae(unit="h", what="RUL")),
    target_names=("rul_hours",),
    strata=target_bins(RUL_BINS),
    example_classes=bearing_rul_data.FAULT_TYPES,
)
