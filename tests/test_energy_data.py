"""Tests of the energy datasets read from the installed aeon wheel, and the energy tasks.

The data tests need the `examples` extra (aeon), which the `dev` extra includes; without
it they are skipped, and the test of the missing-package error runs on its own. Expected
counts are the archive's published sizes (1,096 days of 24 hours; 200 signatures of
1,460 samples, 20 per appliance type), not numbers read back from the loader.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import numpy as np
import pytest

from hierfl.data.tasks import TASKS, PlantRequest, energy_data
from hierfl.data.tasks.energy import HOURS_AHEAD, HOURS_GIVEN, divide_pool
from hierfl.errors import DataError

needs_aeon = pytest.mark.skipif(
    importlib.util.find_spec("aeon") is None, reason='needs pip install "hierfl[examples]"'
)


def test_missing_aeon_names_the_extra_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aeon" else real(name, *a)
    )
    with pytest.raises(DataError, match=r'pip install "hierfl\[examples\]"'):
        energy_data.italy_power_demand()
    with pytest.raises(DataError, match=r"aeon package, which is not installed"):
        TASKS["appliance-id"].make_plant_data([PlantRequest("p", 0, 1, None, 0.0)], 0.25, 0)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@needs_aeon
def test_files_are_read_from_the_installed_wheel(no_network):
    import aeon

    package = Path(aeon.__file__).resolve().parent
    for name in ("ItalyPowerDemand", "ACSF1"):
        for path in energy_data.dataset_paths(name):
            assert path.resolve().is_relative_to(package), path
            assert path.suffix == ".ts" and path.stat().st_size > 10_000


@needs_aeon
def test_italy_power_demand_is_the_published_dataset(no_network):
    load, season = energy_data.italy_power_demand()
    assert load.shape == (1096, 24) and load.dtype == np.float32
    assert set(np.unique(season)) == {0, 1}
    counts = np.bincount(season)
    assert abs(counts[0] - counts[1]) < 60  # two seasons of about half a year each
    # Every day is z-normalised on its own (the UCR convention).
    np.testing.assert_allclose(load.mean(axis=1), 0.0, atol=1e-3)
    np.testing.assert_allclose(load.std(axis=1, ddof=1), 1.0, atol=1e-2)


@needs_aeon
def test_acsf1_is_balanced_over_ten_appliances(no_network):
    power, appliance = energy_data.acsf1()
    assert power.shape == (200, 1460)
    np.testing.assert_array_equal(np.bincount(appliance), [20] * 10)


def test_divide_pool_gives_plants_only_their_classes():
    groups = np.repeat([0, 1, 2], [40, 40, 40])
    names = ("a", "b", "c")
    requests = [
        PlantRequest("x", 0, 2, None, 0.0, ("a",)),
        PlantRequest("y", 1, 2, None, 0.0, ("a", "b")),
        PlantRequest("z", 2, 1, None, 0.0, None),
    ]
    parts = divide_pool(groups, names, requests, 0.25, seed=0)
    seen = np.concatenate([np.concatenate(p) for p in parts])
    assert len(seen) == len(np.unique(seen)) == 120  # disjoint, and every example placed
    # Class a is shared by x, y, z in proportion 2/1 : 2/2 : 1/3 -> 40 * (6/10, 3/10, 1/10).
    for (train, test), classes, expected_a in zip(parts, ({0}, {0, 1}, {0, 1, 2}), (24, 12, 4)):
        assert set(groups[np.concatenate([train, test])]) == classes
        assert np.sum(groups[np.concatenate([train, test])] == 0) == expected_a
        for c in classes:  # every class the plant has is held out in its test set
            assert np.sum(groups[test] == c) >= 1
    again = divide_pool(groups, names, requests, 0.25, seed=0)
    assert all(
        np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(parts, again)
    )
    with pytest.raises(DataError, match="asks for 100"):
        divide_pool(groups, names, [PlantRequest("x", 0, 1, 100, 0.0, ("a",))], 0.25, seed=0)


@needs_aeon
def test_forecast_task_targets_are_the_last_hours():
    task = TASKS["energy-forecast"]
    load, season = energy_data.italy_power_demand()
    winter, summer = task.make_plant_data(
        [
            PlantRequest("w", 0, 2, None, 0.0, ("winter",)),
            PlantRequest("s", 1, 2, None, 0.0, ("summer",)),
        ],
        0.25,
        0,
    )
    assert winter.x_train.shape[1:] == (HOURS_GIVEN,) and winter.y_train.shape[1:] == (HOURS_AHEAD,)
    days = {row.tobytes(): i for i, row in enumerate(load[:, :HOURS_GIVEN])}
    for plant, label in ((winter, 0), (summer, 1)):
        rows = [days[r.tobytes()] for r in plant.x_train]
        np.testing.assert_array_equal(plant.y_train, load[rows, HOURS_GIVEN:])
        assert set(season[rows]) == {label}
    assert len(winter.y_train) + len(winter.y_test) == np.sum(season == 0)
