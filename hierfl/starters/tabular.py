"""The tabular starter's data: each press's cycle log as a CSV file, failures about 1 in 6.

A press's readings drift with its hidden wear; a press near failure runs hot, vibrates,
draws more current and slows down, and its oil degrades. Plants differ in their ambient
temperature and supply pressure, and presses in how worn they are, so devices are not
identically distributed. Written with the csv module: what a data logger would write.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hierfl.starters.layout import each_device, each_plant, write_csv

DEVICE = "press"
COLUMNS = (
    "temperature_c",
    "vibration_rms",
    "pressure_bar",
    "motor_current_a",
    "cycle_time_s",
    "oil_quality",
)
TEST_ROWS = 300


def press_rows(rng: np.random.Generator, rows: int, plant: int, wear: float) -> list[list]:
    """`rows` cycle windows of one press: its six readings and "ok" or "failure"."""
    stress = rng.normal(wear, 1.0, rows)
    failing = stress + rng.normal(0.0, 0.2, rows) > 1.5
    temperature = 58 + 4 * plant + 3 * stress + rng.normal(0, 1.5, rows)
    vibration = np.exp(rng.normal(0.0, 0.15, rows)) * (1.0 + 0.25 * np.maximum(stress, 0))
    pressure = 150 - 6 * plant + rng.normal(0, 8, rows) - 4 * failing
    current = 19 + 1.2 * stress + rng.normal(0, 0.8, rows)
    cycle = 11.5 + 0.4 * stress + rng.normal(0, 0.3, rows)
    oil = np.clip(0.85 - 0.05 * stress + rng.normal(0, 0.03, rows), 0.0, 1.0)
    table = zip(temperature, vibration, pressure, current, cycle, oil, failing)
    return [
        [f"{t:.2f}", f"{v:.3f}", f"{p:.1f}", f"{c:.2f}", f"{s:.2f}", f"{o:.3f}", _label(f)]
        for t, v, p, c, s, o, f in table
    ]


def write_data(
    folder: Path, devices: Mapping[tuple[str, str], tuple[str, ...]], seed: int
) -> list[Path]:
    """Every press's CSV (`folder/PLANT/LINE/PRESS.csv`) and each plant's `test.csv`."""
    written, header = [], [*COLUMNS, "failure"]
    for plant, p, line, name, rng in each_device(devices, seed):
        wear = rng.uniform(-0.5, 1.0)
        rows = press_rows(rng, int(rng.integers(120, 240)), p, wear)
        written.append(write_csv(folder / plant / line / f"{name}.csv", header, rows))
    for plant, p, rng in each_plant(devices, seed):
        rows = press_rows(rng, TEST_ROWS, p, 0.4)
        written.append(write_csv(folder / plant / "test.csv", header, rows))
    return written


def _label(failing: bool) -> str:
    return "failure" if failing else "ok"
