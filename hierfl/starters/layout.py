"""The starters' shared shape: plants and lines, and a random stream per device and per plant."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

LAYOUT = {
    "plant-a": ("line-1", "line-2"),
    "plant-b": ("line-1", "line-2"),
}
"""Every template's plants and lines (each line has three devices, named by the template)."""

_TEST = 99  # purpose of a plant's test stream


def name_number(name: str) -> int:
    """A stable small integer for a name (Python's `hash` of a str changes per process)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


def device_rng(seed: int, plant: int, line: str, device: int) -> np.random.Generator:
    """The stream of device number `device` of `line` in plant number `plant`."""
    return np.random.default_rng([seed, plant, name_number(line), device])


def test_rng(seed: int, plant: int) -> np.random.Generator:
    """The stream of plant number `plant`'s held-out test data."""
    return np.random.default_rng([seed, plant, _TEST])


def each_device(
    devices: Mapping[tuple[str, str], Sequence[str]], seed: int
) -> Iterator[tuple[str, int, str, str, np.random.Generator]]:
    """`(plant, plant number, line, device name, its stream)` for every device of `devices`
    ((plant, line) -> names), plants numbered in name order."""
    plants = sorted({plant for plant, _ in devices})
    for (plant, line), names in devices.items():
        for d, name in enumerate(names):
            yield (
                plant,
                plants.index(plant),
                line,
                name,
                device_rng(seed, plants.index(plant), line, d),
            )


def each_plant(
    devices: Mapping[tuple[str, str], Sequence[str]], seed: int
) -> Iterator[tuple[str, int, np.random.Generator]]:
    """`(plant, plant number, its test stream)` for every plant of `devices`."""
    for p, plant in enumerate(sorted({plant for plant, _ in devices})):
        yield plant, p, test_rng(seed, p)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    """A CSV file with a header row, as a data logger writes it (its folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path
