"""Where a device process gets its examples: its own files, or the bundled task's generator.

Chosen once at start-up by `device_data_source`:
- `OwnFiles` (a task that reads files): each device reads only its own path (the topology's
  template, or the `--data` template given on its machine) when it is created. The other
  devices' example counts are not known here (`counts` is None).
- `PlantShards` (a bundled task that generates its data): the plant's part of the
  simulator's plan (`plan.one_plant`), so every device trains on exactly the examples the
  simulator gives it, and no process makes other plants' data; `counts` hold the plant's
  devices' (secure aggregation's weight bound), the others' zero.
- `PlanShards`: the whole plan, where the device's step needs every device's count
  (FedNova's effective steps).

`examples(device)` gives `(x, y, count)`: x and y padded with zeros past `count`. Local
training reads only the first `count` rows and draws their order from per-index random
values (prefix-stable across lengths), so a device trains the same however far its rows
are padded: `PlanShards` gives the plan's rows (one length for all, one compile), and
`OwnFiles` pads to the next of a few lengths per octave (`padded_length`: at most 1/8
more rows), so the devices of a host share a few compiled steps rather than one per
example count, and a device with gigabytes of rows needs little more than its data.
"""

from __future__ import annotations

import numpy as np

from hierfl.data.device_files import read_device
from hierfl.data.plan import make_plan, one_plant, pad_shards, plant_counts
from hierfl.data.tasks.base import Task
from hierfl.errors import DataError
from hierfl.runtime.secagg_rounds import weight_bound_problem
from hierfl.topology import Device, Topology

STEP_NEEDS_EVERY_COUNT = ("fednova",)
"""Algorithms whose device step is built from every device's example count."""


class OwnFiles:
    """Each device's examples from its own files; no one else's are read or counted."""

    counts = None

    def __init__(self, topology: Topology, task: Task, override: str | None = None):
        self.topology, self.task, self.override = topology, task, override
        self.dropped: dict[str, int] = {}

    def rows_dropped(self, device: Device) -> int:
        """Bad rows of `device`'s file that `on_bad_rows = "drop"` dropped (after `examples`)."""
        return self.dropped.get(device.id, 0)

    def examples(self, device: Device) -> tuple[np.ndarray, np.ndarray, int]:
        """`device`'s padded (x, y, count); DataError naming the device, file, row and
        column if its data cannot be used."""
        read = read_device(self.topology, self.task, device, self.override)
        count = len(read.y)
        self.dropped[device.id] = int(read.dropped)
        problem = weight_bound_problem(self.topology, device.id, count)
        if problem is not None:
            raise DataError(problem)
        length = padded_length(count)
        return _padded(read.x, length), _padded(read.y, length), count


class PlantShards:
    """The examples of the devices of plant number `index` (a task that generates its data)."""

    def __init__(self, topology: Topology, index: int):
        devices, _ = one_plant(topology, index)
        self.first = topology.plants[index].devices[0].index
        self.shards = pad_shards(devices)
        self.counts = plant_counts(topology, index, devices)

    def rows_dropped(self, device: Device) -> int:
        return 0

    def examples(self, device: Device) -> tuple[np.ndarray, np.ndarray, int]:
        i = device.index - self.first
        return self.shards.x[i], self.shards.y[i], int(self.shards.counts[i])


class PlanShards:
    """Every device's examples from the plan (a task that generates its data from the seed)."""

    def __init__(self, topology: Topology):
        self.shards = make_plan(topology).shards

    @property
    def counts(self) -> np.ndarray:
        return self.shards.counts

    def rows_dropped(self, device: Device) -> int:
        return 0

    def examples(self, device: Device) -> tuple[np.ndarray, np.ndarray, int]:
        i = device.index
        return self.shards.x[i], self.shards.y[i], int(self.shards.counts[i])


def padded_length(count: int) -> int:
    """`count` rounded up to 8..15 times a power of two (16 at least): 8 lengths per octave,
    at most 1/8 more rows than `count`."""
    if count <= 16:
        return 16
    step = 1 << (count.bit_length() - 4)
    return -(-count // step) * step


def _padded(a: np.ndarray, length: int) -> np.ndarray:
    """`a` with zero rows appended up to `length` rows."""
    return np.concatenate([a, np.zeros((length - len(a), *a.shape[1:]), a.dtype)])


def device_data_source(
    topology: Topology, task: Task, plant: str, override: str | None = None
) -> OwnFiles | PlantShards | PlanShards:
    """The source for devices of `plant` (`override`: the `--data` path template)."""
    if task.reads_files:
        return OwnFiles(topology, task, override)
    if topology.federation.algorithm in STEP_NEEDS_EVERY_COUNT:
        return PlanShards(topology)
    return PlantShards(topology, topology.plant_names.index(plant))
