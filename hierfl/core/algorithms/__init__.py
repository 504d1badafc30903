"""Federated algorithms by name: what `federation.algorithm` in a topology file selects.

Device-side algorithms (`ALGORITHMS`): fedavg, fedsgd, fedprox, fednova, scaffold. The
cloud's optimizer (FedOpt: `hierfl.core.algorithms.server`) and each tier's aggregation rule
(`hierfl.core.rules`) are chosen separately in `[aggregation.*]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hierfl.core.algorithms.fedavg import (
    Algorithm,
    DeviceData,
    LocalResult,
    Summary,
    apply_summary,
    edge_result,
    fedavg,
    fedsgd,
    mean_delta,
    screen_nonfinite,
)
from hierfl.core.algorithms.fednova import effective_steps, fednova
from hierfl.core.algorithms.fedprox import fedprox
from hierfl.core.algorithms.scaffold import scaffold
from hierfl.core.algorithms.server import server_optimizer
from hierfl.topology import Topology

ALGORITHMS = {
    "fedavg": fedavg,
    "fedsgd": fedsgd,
    "fedprox": fedprox,
    "fednova": fednova,
    "scaffold": scaffold,
}


def build_algorithm(
    apply_fn,
    task,
    topology: Topology,
    counts: Sequence[int] | np.ndarray,
    effective: float | None = None,
) -> Algorithm:
    """The topology's algorithm with every hyperparameter bound; the loss is `task.example_loss`.

    `counts` are the devices' training examples in device order (the plan's), which
    FedNova needs for its effective step count, unless `effective` gives that count (a
    runtime device learns it from the census). The device with the most `local_steps`
    sets the length of the local loop; the others stop at their own budget.
    """
    federation = topology.federation
    steps = topology.device_steps
    name = federation.algorithm
    extras = {}
    if name == "fedprox":
        extras["mu"] = federation.mu
    if name == "fednova":
        extras["effective_steps"] = (
            effective_steps(steps, counts) if effective is None else effective
        )
    return ALGORITHMS[name](
        apply_fn,
        task.example_loss,
        local_steps=max(steps),
        batch_size=federation.batch_size,
        learning_rate=federation.learning_rate,
        server_tx=server_optimizer(topology.aggregation.optimizer, federation.server_learning_rate),
        **extras,
    )


__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "DeviceData",
    "LocalResult",
    "Summary",
    "apply_summary",
    "build_algorithm",
    "edge_result",
    "effective_steps",
    "fedavg",
    "fednova",
    "fedprox",
    "fedsgd",
    "mean_delta",
    "scaffold",
    "screen_nonfinite",
    "server_optimizer",
]
