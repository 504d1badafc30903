"""Federated algorithms by name: what `federation.algorithm` in a topology file selects."""

from __future__ import annotations

from hierfl.algorithms.fedavg import (
    Algorithm,
    DeviceData,
    LocalResult,
    Summary,
    aggregate,
    apply_summary,
    edge_result,
    edge_summary,
    fedavg,
    fedsgd,
    mean_delta,
    screen_nonfinite,
    segment_aggregate,
    summarize,
)
from hierfl.tasks.base import Task

ALGORITHMS = {"fedavg": fedavg, "fedsgd": fedsgd}


def build_algorithm(name: str, apply_fn, task: Task, federation) -> Algorithm:
    """The algorithm `name` with the topology's hyperparameters bound; the loss is the task's."""
    return ALGORITHMS[name](
        apply_fn,
        task.example_loss,
        local_steps=federation.local_steps,
        batch_size=federation.batch_size,
        learning_rate=federation.learning_rate,
        server_learning_rate=federation.server_learning_rate,
    )


__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "DeviceData",
    "LocalResult",
    "Summary",
    "aggregate",
    "apply_summary",
    "build_algorithm",
    "edge_result",
    "edge_summary",
    "fedavg",
    "fedsgd",
    "mean_delta",
    "screen_nonfinite",
    "segment_aggregate",
    "summarize",
]

