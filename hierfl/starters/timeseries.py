"""The time-series starter's data: each meter's hourly energy use as a CSV of windows.

A meter's load is a base level, a daily cycle (a day shift and a night shift) and a weekly
cycle (quieter weekends), with noise; plants differ in their base load and meters in their
size. Each row holds the 24 readings before an hour and that hour's reading (the target).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hierfl.starters.layout import each_device, each_plant, write_csv

DEVICE = "meter"
WINDOW = 24
COLUMNS = (*(f"kwh_minus_{hours}" for hours in range(WINDOW, 0, -1)), "kwh_next")
TEST_HOURS = 24 * 14


def load_curve(rng: np.random.Generator, hours: int, base: float) -> np.ndarray:
    """`hours` hourly readings in kWh: base load, daily and weekly cycles, noise."""
    t = np.arange(hours + WINDOW)
    daily = 0.35 * np.clip(np.sin(2 * np.pi * (t % 24 - 6) / 24), -0.3, 1.0)
    weekly = np.where((t // 24) % 7 >= 5, -0.25, 0.0)
    return np.maximum(base * (1.0 + daily + weekly + rng.normal(0, 0.05, t.size)), 0.0)


def windows(series: np.ndarray) -> list[list[str]]:
    """Rows of `WINDOW` readings and the next one."""
    return [[f"{v:.2f}" for v in series[i : i + WINDOW + 1]] for i in range(series.size - WINDOW)]


def write_data(
    folder: Path, devices: Mapping[tuple[str, str], tuple[str, ...]], seed: int
) -> list[Path]:
    """Every meter's CSV (`folder/PLANT/LINE/METER.csv`) and each plant's `test.csv`."""
    written = []
    for plant, p, line, name, rng in each_device(devices, seed):
        base = (40.0 + 15.0 * p) * rng.uniform(0.7, 1.3)
        series = load_curve(rng, int(rng.integers(24 * 7, 24 * 14)), base)
        written.append(write_csv(folder / plant / line / f"{name}.csv", COLUMNS, windows(series)))
    for plant, p, rng in each_plant(devices, seed):
        series = load_curve(rng, TEST_HOURS, 40.0 + 15.0 * p)
        written.append(write_csv(folder / plant / "test.csv", COLUMNS, windows(series)))
    return written
