"""Where each device's and each plant's files are, and reading them with the task's loader.

A task that reads files (`Task.reads_files`) gets a device's training examples from the
path its line's `[data] path` template names (`data/{plant}/{line}/{device}.csv`) and a
plant's held-out examples from the plant's `test_data`; relative paths are relative to
the topology file's folder. A device process reads only its own path (`read_device`), an
edge only its plant's test data (`read_plant_test`); the simulator reads them all. Every
refusal is a DataError that names the device or plant, then the file, row and column.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hierfl.data.files import Examples, Schema, read_examples
from hierfl.data.tasks.base import Task
from hierfl.data.tasks.imports import topology_folder
from hierfl.errors import DataError
from hierfl.topology import Device, Plant, Topology, fill_template


def data_root(topology: Topology) -> Path:
    """The folder relative data paths start from: the topology file's, else the working folder."""
    return topology_folder(topology.source) or Path.cwd()


def device_path(topology: Topology, device: Device, override: str | None = None) -> Path:
    """The path of `device`'s data: its line's template, or `override` (a template over
    `{plant}`, `{line}`, `{device}` given on the device's own machine)."""
    if override is not None:
        path = fill_template(override, plant=device.plant, line=device.line, device=device.name)
    else:
        path = topology.data_path(device)
        if path is None:
            raise DataError(f"device {device.id}: the topology says no data path for it")
    return data_root(topology) / Path(path).expanduser()


def schema(topology: Topology, task: Task) -> Schema:
    """What the task expects of every file: its input shape and classes or targets."""
    return Schema(
        input_shape=task.input_shape,
        class_names=() if task.is_regression else task.class_names,
        target_names=task.target_names,
        on_bad_rows=topology.on_bad_rows,
    )


def read_device(
    topology: Topology, task: Task, device: Device, override: str | None = None
) -> Examples:
    """`device`'s training examples; DataError `device <id>: <file>: ...` if they cannot be used."""
    path = device_path(topology, device, override)
    try:
        return read_examples(task.loader, path, schema(topology, task))
    except DataError as error:
        raise DataError(f"device {device.id}: {error}") from None


def read_plant_test(topology: Topology, task: Task, plant: Plant) -> Examples:
    """`plant`'s held-out examples, read by its edge; DataError `plant <name> test data: ...`."""
    if plant.test_data is None:
        raise DataError(f"plant {plant.name}: the topology says no test_data for it")
    path = data_root(topology) / Path(plant.test_data).expanduser()
    try:
        return read_examples(task.loader, path, schema(topology, task))
    except DataError as error:
        raise DataError(f"plant {plant.name} test data: {error}") from None


class AllData(NamedTuple):
    """What the simulator reads: every device's (x, y) in device order, every plant's test
    (x, y), and the bad rows `on_bad_rows = "drop"` dropped, by device id or `<plant> test data`."""

    devices: list[tuple[np.ndarray, np.ndarray]]
    tests: list[tuple[np.ndarray, np.ndarray]]
    rows_dropped: dict[str, int]


def read_all(topology: Topology, task: Task) -> AllData:
    """Every device's and plant's data, as the simulator needs them. DataError listing every
    device and plant whose data cannot be used."""
    data, problems = AllData([], [], {}), []
    for device in topology.devices:
        read = functools.partial(read_device, topology, task, device)
        _collect(read, device.id, data.devices, data.rows_dropped, problems)
    for plant in topology.plants:
        read = functools.partial(read_plant_test, topology, task, plant)
        _collect(read, f"{plant.name} test data", data.tests, data.rows_dropped, problems)
    if problems:
        raise DataError(_joined(problems))
    return data


def _collect(read, name: str, into: list, dropped: dict[str, int], problems: list[str]) -> None:
    try:
        examples = read()
    except DataError as error:
        problems.append(str(error))
        return
    into.append((examples.x, examples.y))
    if examples.dropped:
        dropped[name] = int(examples.dropped)


MAX_LISTED = 20
"""The most problems one refusal lists (a federation of thousands with one bad template)."""


def _joined(problems: Sequence[str]) -> str:
    shown = list(problems[:MAX_LISTED])
    if len(problems) > MAX_LISTED:
        shown.append(f"... and {len(problems) - MAX_LISTED} more")
    if len(shown) == 1:
        return shown[0]
    return f"{len(problems)} data problems:\n" + "\n".join(f"  - {p}" for p in shown)
