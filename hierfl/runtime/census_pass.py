"""The census before round 1 in the runtime: parts up the tree, the result down.

A device sends its part (`census`: its example count and, for a task that standardizes,
its channels' sums and sums of squares) once it has joined; an edge adds its devices'
parts (`PlantCensus`) and sends the plant's up once every device that has not stayed out
has reported, or its start wait is over; the cloud adds the plants' (`CloudCensus`),
finishes the census (`hierfl.data.census.finish`), keeps it in the run (`census.json`, read
back on `--resume`) and sends the result down before the first model; an edge passes it on
to its devices, and to any device that reports later. Every node then standardizes what it
holds: a device its examples, an edge its test data, the cloud its published models.

It runs when the task standardizes its inputs, or when a device of a task that reads files
holds the only count of its examples and the federation needs the total (SCAFFOLD's variate
at the cloud; FedNova's effective step count, `sum steps x examples / sum examples`, which
every device's compiled step is built with once the result is in).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hierfl.data import census
from hierfl.data.census import Census, Part
from hierfl.data.tasks.base import Task
from hierfl.runs.metrics import read_census, write_census
from hierfl.runtime import protocol
from hierfl.topology import Topology


def needs_census(topology: Topology, task: Task) -> bool:
    """Whether the runtime runs a census before round 1 (see the module docstring)."""
    return task.standardize or (task.reads_files and topology.federation.algorithm in COUNTED)


COUNTED = ("scaffold", "fednova")
"""Algorithms that need the federation's counts, which only the devices of a task that reads
files know: SCAFFOLD's total examples, FedNova's effective step count."""


def channels(task: Task) -> int:
    """Numbers per statistic a census of `task` carries (0: counts only)."""
    return task.input_shape[-1] if task.standardize else 0


def layouts(task: Task, part: bool) -> dict[str, tuple[str, protocol.CensusLayout]]:
    """`parse_message` layouts for census parts (`part`) or results of `task`."""
    return {protocol.CENSUS: (protocol.CENSUS, protocol.CensusLayout(channels(task), part))}


def part_fields(part: Part) -> dict[str, Any]:
    """`protocol.encode` fields of a census part."""
    return {
        "examples": int(part.examples),
        "sums": [float(v) for v in part.sums],
        "squares": [float(v) for v in part.squares],
        "step_examples": int(part.step_examples),
    }


def part_from(header: Mapping[str, Any]) -> Part:
    """The `Part` a checked census header reports."""
    return Part(
        int(header["examples"]),
        np.asarray(header.get("sums", []), np.float64),
        np.asarray(header.get("squares", []), np.float64),
        int(header.get("step_examples", 0)),
    )


def result_fields(found: Census) -> dict[str, Any]:
    """`protocol.encode` fields of a census result."""
    return found.describe()


def result_from(header: Mapping[str, Any]) -> Census:
    """The `Census` a checked census result header carries."""
    return census.from_description(header)


class PlantCensus:
    """An edge's half: its devices' parts, the plant's sum sent up once, the result kept."""

    def __init__(self, task: Task):
        self.task = task
        self.parts: dict[str, Part] = {}
        self.sent = False
        self.result: Census | None = None
        self.informed: set[str] = set()  # devices the result was sent to

    def take(self, device: str, header: Mapping[str, Any]) -> None:
        self.parts[device] = part_from(header)

    def reported(self) -> set[str]:
        return set(self.parts)

    def plant_part(self) -> dict[str, Any]:
        """The plant's part (its reporting devices' summed): what goes up."""
        self.sent = True
        return part_fields(census.add(self.parts.values()))


class CloudCensus:
    """The cloud's half: the plants' parts, then the census, kept in `run_dir/census.json`."""

    def __init__(self, task: Task, run_dir: Path, resume: bool):
        self.task, self.run_dir = task, Path(run_dir)
        self.parts: dict[str, Part] = {}
        described = read_census(run_dir) if resume else None
        self.result: Census | None = (
            None if described is None else census.from_description(described)
        )

    def take(self, edge: str, header: Mapping[str, Any]) -> None:
        if self.result is None:
            self.parts[edge] = part_from(header)

    def reported(self) -> set[str]:
        return set(self.parts)

    def finish(self) -> Census:
        """The census of every part that came, written to the run."""
        per_channel = census.values_per_channel(self.task.input_shape)
        self.result = census.finish(census.add(self.parts.values()), per_channel)
        write_census(self.run_dir, self.result.describe())
        return self.result
