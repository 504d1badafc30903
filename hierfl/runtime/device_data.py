"""Where a device process gets its examples: its own files, or the bundled task's generator.

Chosen once at start-up by `device_data_source`:
- `OwnFiles` (a task that reads files): each device reads only its own path (the topology's
  template, or the `--data` template given on its machine) when it is created. The other
  devices' example counts are not known here (`counts` is None).
- `PlanShards` (a bundled task that generates its data): the simulator's plan, so every
  device trains on exactly the examples the simulator gives it; `counts` are every
  device's (FedNova, secure aggregation and SCAFFOLD use them).

`examples(device)` gives `(x, y, count)`: x and y padded with zeros past `count`. Local
training reads only the first `count` rows and draws their order from per-index random
values (prefix-stable across lengths), so a device trains the same however far its rows
are padded: `PlanShards` gives the plan's rows (one length for all, one compile), and
`OwnFiles` pads to the next power of two, so the devices of a host share a few compiled
steps rather than one per example count.
"""

from __future__ import annotations

import numpy as np

from hierfl.data.device_files import read_device
from hierfl.data.plan import make_plan
from hierfl.data.tasks.base import Task
from hierfl.topology import Device, Topology


class OwnFiles:
    """Each device's examples from its own files; no one else's are read or counted."""

    counts = None

    def __init__(self, topology: Topology, task: Task, override: str | None = None):
        self.topology, self.task, self.override = topology, task, override

    def examples(self, device: Device) -> tuple[np.ndarray, np.ndarray, int]:
        """`device`'s padded (x, y, count); DataError naming the device, file, row and
        column if its data cannot be used."""
        read = read_device(self.topology, self.task, device, self.override)
        count = len(read.y)
        length = 1 << (count - 1).bit_length()
        return _padded(read.x, length), _padded(read.y, length), count


class PlanShards:
    """Every device's examples from the plan (a task that generates its data from the seed)."""

    def __init__(self, topology: Topology):
        self.shards = make_plan(topology).shards

    @property
    def counts(self) -> np.ndarray:
        return self.shards.counts

    def examples(self, device: Device) -> tuple[np.ndarray, np.ndarray, int]:
        i = device.index
        return self.shards.x[i], self.shards.y[i], int(self.shards.counts[i])


def _padded(a: np.ndarray, length: int) -> np.ndarray:
    """`a` with zero rows appended up to `length` rows."""
    return np.concatenate([a, np.zeros((length - len(a), *a.shape[1:]), a.dtype)])


def device_data_source(
    topology: Topology, task: Task, override: str | None = None
) -> OwnFiles | PlanShards:
    """The source for this topology's task (`override`: the `--data` path template)."""
    return OwnFiles(topology, task, override) if task.reads_files else PlanShards(topology)
