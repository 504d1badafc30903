"""Spreading the simulator's device axis over the machine's cores or accelerators.

The simulator shards its chunks of federated devices over a one-axis `jax.sharding.Mesh`
of all local JAX devices (GPUs, or CPU cores exposed as host devices); XLA then trains
each core's share of the chunk in parallel and sums the per-edge updates across them.
On one JAX device nothing is sharded. On a CPU, JAX shows one device unless asked for
more before it starts: `request_cpu_devices()` does that, and the CLI calls it first.
"""

from __future__ import annotations

from typing import TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hierfl.sim.host_devices import request_cpu_devices as request_cpu_devices

AXIS = "devices"
T = TypeVar("T")


def device_mesh() -> Mesh | None:
    """A mesh over all local JAX devices, or None when there is only one."""
    devices = jax.local_devices()
    return Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None


def shard_count(mesh: Mesh | None) -> int:
    """How many ways the device axis is split."""
    return 1 if mesh is None else mesh.size


def sharding(mesh: Mesh, axis: int) -> NamedSharding:
    """Arrays split along `axis` over the mesh, replicated along the other axes."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), AXIS))


def put_sharded(tree: T, mesh: Mesh | None, axis: int) -> T:
    """Places every array of `tree` on the mesh, split along `axis` (replicated elsewhere)."""
    if mesh is None:
        return jax.device_put(tree)
    return jax.device_put(tree, sharding(mesh, axis))
