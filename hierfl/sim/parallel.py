"""Spreading the simulator's device axis over the machine's cores or accelerators.

The simulator shards its chunks of federated devices over a one-axis `jax.sharding.Mesh`
of all JAX devices (GPUs, or CPU cores exposed as host devices); XLA then trains each
core's share of the chunk in parallel and sums the per-edge updates across them.
On one JAX device nothing is sharded. On a CPU, JAX shows one device unless asked for
more before it starts: `request_cpu_devices()` does that, and the CLI calls it first.

In a multi-process simulation (`hierfl.sim.processes`) the mesh spans every process's
devices; each process places only its own devices' shares (`own_shards`), replicated
state is placed by every process alike, and results are read from a local copy
(`local_copy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hierfl.sim.host_devices import request_cpu_devices as request_cpu_devices

AXIS = "devices"
T = TypeVar("T")


def device_mesh() -> Mesh | None:
    """A mesh over all JAX devices (every process's, in a multi-process simulation), or
    None when there is only one."""
    devices = jax.devices()
    return Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None


def own_shards(mesh: Mesh | None) -> list[int]:
    """The positions along the mesh of this process's devices: the shares it lays out
    (all of them in one process)."""
    if mesh is None:
        return [0]
    here = jax.process_index()
    return [i for i, d in enumerate(mesh.devices.flat) if d.process_index == here]


def shard_count(mesh: Mesh | None) -> int:
    """How many ways the device axis is split."""
    return 1 if mesh is None else mesh.size


def sharding(mesh: Mesh, axis: int) -> NamedSharding:
    """Arrays split along `axis` over the mesh, replicated along the other axes."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), AXIS))


def map_devices(fn: Callable, batched: Sequence[bool], shards: int, group: int) -> Callable:
    """`fn` mapped over the leading device axis of the arguments marked in `batched`, as
    `jax.vmap` would, but `group` devices at a time within each of `shards` parts.

    The parts are vmapped (so a device axis split over the mesh stays split, one part per
    JAX device); within a part, a scan runs groups of devices in turn, each group vmapped
    (`group` is lowered to a divisor of the part's size). On a CPU a device's own small
    matmuls run at several times the FLOP rate of a whole vmapped chunk's batched ones.
    The device axis must divide by `shards`.
    """

    def mapped(*args):
        stacked = tuple(a for a, b in zip(args, batched) if b)
        devices = jax.tree.leaves(stacked)[0].shape[0]
        per_part = devices // shards
        size = math.gcd(per_part, group)

        def one(*rows):
            it = iter(rows)
            return fn(*(next(it) if b else a for a, b in zip(args, batched)))

        def run_group(carry, rows):
            return carry, jax.vmap(one)(*rows)

        def run_part(part):
            return jax.lax.scan(run_group, None, part)[1]

        split = (shards, per_part // size, size)
        parts = jax.tree.map(lambda a: a.reshape(*split, *a.shape[1:]), stacked)
        out = jax.vmap(run_part)(parts)
        return jax.tree.map(lambda a: a.reshape(devices, *a.shape[3:]), out)

    return mapped


def put_replicated(tree: T, mesh: Mesh | None) -> T:
    """Places every array of `tree` whole on every device of the mesh: where a jitted
    step's outputs land, so the step's second call finds the inputs of its first.

    Across processes every process passes the same values (`hierfl.sim.processes.
    check_same_run` checks they were asked for the same run) and places its own devices'
    copies. (`jax.device_put` would compare the values across processes, but only when
    every process has as many devices.)
    """
    replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
    if mesh is None or jax.process_count() == 1:
        return jax.device_put(tree, replicated)

    def place(leaf):
        whole = np.asarray(leaf)
        return jax.make_array_from_callback(whole.shape, replicated, lambda index: whole[index])

    return jax.tree.map(place, tree)


def assemble(pieces: Sequence[np.ndarray], mesh: Mesh | None, axis: int) -> jax.Array:
    """One array split along `axis` over the mesh from this process's pieces, one per
    position of `own_shards(mesh)` (every mesh device's, in mesh order, in one process).
    A 64-byte aligned host piece is adopted by the CPU client without a copy."""
    if mesh is None:
        return jax.device_put(pieces[0])
    devices = [mesh.devices.flat[i] for i in own_shards(mesh)]
    placed = [jax.device_put(p, d) for p, d in zip(pieces, devices, strict=True)]
    shape = list(pieces[0].shape)
    shape[axis] *= mesh.size
    return jax.make_array_from_single_device_arrays(tuple(shape), sharding(mesh, axis), placed)


def local_copy(tree: T) -> T:
    """`tree` readable by this process alone: an array spanning other processes' devices
    is replaced by this process's copy of it, which must be whole (replicated); arrays
    of this process are returned as they are. Computing on the copy needs no other process."""

    def local(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return leaf
        if not leaf.is_fully_replicated:
            raise ValueError(
                f"an array of shape {leaf.shape} split over processes has no whole copy here"
            )
        return leaf.addressable_data(0)

    return jax.tree.map(local, tree)
