"""Tests of the run-to-failure trajectories and the `bearing-rul` task.

Expected values come from the module docstring's formulas worked by hand (RUL strata,
defect sizes, fault-type rotation, split sizes) or from independent numpy statistics of
the windows (their energy), never from the generator's helpers.
"""

import numpy as np
import pytest

from hierfl.data.tasks import TASKS, PlantRequest
from hierfl.data.tasks.bearing_rul_data import (
    FAULT_TYPES,
    RECORD_HOURS,
    defect_size,
    generate_machines,
)
from hierfl.errors import DataError

TASK = TASKS["bearing-rul"]


def test_shapes_and_determinism():
    x, rul, fault, machine = generate_machines(3, 1, 2, 5, 0.5, window=256)
    assert x.shape == (10, 256) and x.dtype == np.float32
    assert rul.shape == fault.shape == machine.shape == (10,)
    np.testing.assert_array_equal(machine, [0] * 5 + [1] * 5)
    again = generate_machines(3, 1, 2, 5, 0.5, window=256)
    np.testing.assert_array_equal(x, again[0])
    np.testing.assert_array_equal(rul, again[1])
    assert not np.array_equal(x, generate_machines(4, 1, 2, 5, 0.5, window=256)[0])


def test_rul_is_stratified_over_the_recording_within_each_machine():
    # W = 8 windows: window k lies in ((k) * 100 / 8, (k + 1) * 100 / 8] hours, one per stratum.
    _, rul, _, machine = generate_machines(0, 0, 3, 8, 0.0, window=128)
    width = RECORD_HOURS / 8
    for m in range(3):
        strata = np.floor(np.sort(rul[machine == m]) / width)
        np.testing.assert_array_equal(strata, np.arange(8))
    assert 0 < rul.min() and rul.max() <= RECORD_HOURS


def test_machines_take_the_plants_fault_types_in_turn():
    _, _, fault, machine = generate_machines(
        0, 0, 5, 2, 0.0, fault_types=("inner", "ball"), window=128
    )
    per_machine = fault[::2]
    np.testing.assert_array_equal(per_machine, [1, 2, 1, 2, 1])  # inner, ball, inner, ...
    _, _, fault, _ = generate_machines(
        0, 0, 2, 2, 0.0, fault_types=("inner", "ball"), window=128, first_machine=5
    )
    np.testing.assert_array_equal(fault[::2], [2, 1])  # machines 5 and 6 continue the rotation
    with pytest.raises(DataError):
        generate_machines(0, 0, 2, 2, 0.0, fault_types=("cage",))
    with pytest.raises(DataError):
        generate_machines(0, 0, 2, 2, 1.5)


def test_defect_size_follows_exponential_growth():
    np.testing.assert_allclose(defect_size([0.0, 25.0, 50.0], 25.0), [1.0, np.exp(-1), np.exp(-2)])


def test_windows_carry_more_impact_energy_near_failure():
    # Noise-free of the growth's randomness: same machines, windows sorted by RUL. The mean
    # square of the last fifth of life should exceed that of the first fifth clearly.
    x, rul, _, _ = generate_machines(0, 0, 6, 20, 0.0, fault_types=("outer",), window=1024)
    energy = (x.astype(np.float64) ** 2).mean(axis=1)
    assert energy[rul < 20].mean() > 3 * energy[rul > 80].mean()


def test_task_holds_out_whole_machines():
    (plant,) = TASK.make_plant_data([PlantRequest("p", 0, 4, 60, 0.0, ("outer", "inner"))], 0.25, 0)
    # 4 training machines x ceil(60 / 4) = 15 windows, 60 kept; test machines:
    # max(2 fault types, round(4 x 0.25 / 0.75) = 1) = 2, of 15 windows each.
    assert plant.x_train.shape == (60, 2048, 1) and plant.x_test.shape == (30, 2048, 1)
    assert plant.y_train.shape == (60, 1) and plant.y_train.dtype == np.float32
    train_rows = {row.tobytes() for row in plant.x_train}
    assert not any(row.tobytes() in train_rows for row in plant.x_test)
    assert TASK.is_regression and TASK.num_outputs == 1 and TASK.metric.name == "rmse"
    assert TASK.plant_classes == FAULT_TYPES
    np.testing.assert_array_equal(np.bincount(TASK.strata(plant.y_train), minlength=5), [12] * 5)
