"""Loading a topology and checking its names against what this hierfl provides.

`hierfl.topology` knows the file format but not our registries; this adds the task,
model and algorithm names as choices, so an unknown one is rejected at load time with
the same kind of error as any other problem in the file. `check_names` applies the same
check to a topology built in code (`with_federation(task=...)`), for `make_plan`.
"""

from __future__ import annotations

import os

from hierfl.core.algorithms import ALGORITHMS
from hierfl.data.tasks import TASKS
from hierfl.topology import Topology, TopologyError
from hierfl.topology import load_topology as load_topology_file

CHOICES = {"federation.task": TASKS, "federation.algorithm": ALGORITHMS}
"""The registries a topology's `[federation]` names are checked against (`load_topology`'s `choices`)."""


def load_topology(source: str | os.PathLike) -> Topology:
    """Loads a topology file or preset, validated against the known tasks, models and algorithms."""
    topology = load_topology_file(source, choices=CHOICES)
    _check_model(topology)
    return topology


def check_names(topology: Topology) -> None:
    """TopologyError, as `load_topology` gives, unless the federation's task, model and
    algorithm are all known: for topologies changed in code after loading."""
    federation = topology.federation
    topology.with_federation(task=federation.task, algorithm=federation.algorithm, choices=CHOICES)
    _check_model(topology)


def _check_model(topology: Topology) -> None:
    task, model = TASKS[topology.federation.task], topology.federation.model
    if model is not None and model not in task.models:
        known = ", ".join(sorted(task.models))
        raise TopologyError(
            [
                f"federation.model: unknown model {model!r} for task {task.name!r} (choose from: {known})"
            ],
            topology.source,
        )
