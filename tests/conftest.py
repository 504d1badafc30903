"""Shared fixtures: small topologies written as TOML text, so each test reads its setup."""

from __future__ import annotations

import pytest

from hierfl.data.loading import load_topology
from hierfl.topology import parse_topology


def topology_text(
    *,
    plants: list[list[int]],
    task: str = "digits",
    model: str = "mlp",
    algorithm: str = "fedavg",
    cloud_rounds: int = 2,
    edge_rounds: int = 1,
    local_steps: int = 3,
    batch_size: int = 8,
    learning_rate: float = 0.1,
    seed: int = 0,
    partition: str = "iid",
    samples_per_device: int | None = None,
) -> str:
    """A topology with `plants[i][j]` devices on line j of plant i."""
    spd = f"samples_per_device = {samples_per_device}\n" if samples_per_device else ""
    text = f"""
[federation]
name = "test"
task = "{task}"
model = "{model}"
algorithm = "{algorithm}"
cloud_rounds = {cloud_rounds}
edge_rounds = {edge_rounds}
local_steps = {local_steps}
batch_size = {batch_size}
learning_rate = {learning_rate}
seed = {seed}

[data]
partition = "{partition}"
{spd}
[cloud]
address = "tcp://127.0.0.1:7000"
"""
    for i, lines in enumerate(plants):
        text += f'\n[[plants]]\nname = "plant-{i}"\naddress = "tcp://127.0.0.1:{7100 + i}"\n'
        for j, devices in enumerate(lines):
            text += f'\n[[plants.lines]]\nname = "line-{j}"\ndevices = {devices}\n'
    return text


@pytest.fixture
def make_topology():
    """`make_topology(plants=[[3, 2], [4]], ...)` -> a validated Topology."""

    def make(**kwargs):
        return parse_topology(topology_text(**kwargs), "test.toml")

    return make


@pytest.fixture(scope="session")
def demo_topology():
    return load_topology("demo")
