"""The simulator's buffered asynchronous cloud (`[buffered_aggregation]`): an event-driven run.

The plants' declared speeds give the order in which their summaries reach the cloud
(`hierfl.core.buffered.arrivals`, ties in plant order). At each arrival the plant's cycle is
trained (one jitted call: its devices vmapped by the core's `device_step`, its edge rounds
scanned, its `edge_upload` decoded, exactly what `hierfl.sim.round` does for all plants at
once), its summary is added to the buffer with its staleness discount, the buffer is applied
when `should_apply` says so, and the plant starts its next cycle from the newest global
model. The runtime's cloud with `order = "declared"` takes summaries in this same order.

Each plant's devices are laid out as their own chunks, padded to the largest plant, so one
compile serves every plant (no mesh: a plant's cycle runs on one JAX device).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.core import buffered, links
from hierfl.data.plan import Plan
from hierfl.kernels import FlatSpec, ravel
from hierfl.runs import records
from hierfl.sim.round import (
    DeviceChunks,
    Edges,
    RoundOutcome,
    RoundSteps,
    TrainState,
    TreeShape,
    Variates,
    empty_tally,
    make_edge_round,
)
from hierfl.topology import Topology


class PlantCycle(NamedTuple):
    """What one plant's cycle sends up: its decoded summary `[P]`, weight, weighted loss sum,
    refused updates, and the device and edge memories it leaves."""

    delta: jax.Array
    weight: jax.Array
    loss_sum: jax.Array
    rejected: jax.Array
    device_residuals: jax.Array
    edge_residuals: jax.Array


def plant_chunks(plan: Plan, chunk_size: int) -> DeviceChunks:
    """Each plant's devices as chunks `[E, num_chunks, chunk, ...]`, padded to the largest
    plant (padding devices have count 0 and edge E); device indices stay the federation's."""
    shards, device_edge = plan.shards, np.asarray(plan.device_edge)
    owned = [np.flatnonzero(device_edge == e) for e in range(plan.num_edges)]
    largest = max(len(o) for o in owned)
    num_chunks = -(-largest // chunk_size)
    chunk = -(-largest // num_chunks)
    padded = num_chunks * chunk
    steps = np.asarray(plan.topology.device_steps, np.int32)

    def group(a: np.ndarray, fill: int = 0) -> np.ndarray:
        rows = []
        for o in owned:
            part = a[o]
            pad = np.full((padded - len(o), *a.shape[1:]), fill, a.dtype)
            rows.append(np.concatenate([part, pad]).reshape(num_chunks, chunk, *a.shape[1:]))
        return np.stack(rows)

    spare = np.arange(plan.shards.num_devices, plan.shards.num_devices + padded, dtype=np.int32)
    index = np.stack(
        [
            np.concatenate([o, spare[: padded - len(o)]])
            .astype(np.int32)
            .reshape(num_chunks, chunk)
            for o in owned
        ]
    )
    return DeviceChunks(
        x=group(shards.x),
        y=group(shards.y),
        count=group(shards.counts),
        steps=group(steps),
        edge=group(device_edge, fill=plan.num_edges),
        index=index,
    )


def make_plant_cycle(round_steps: RoundSteps, tree: TreeShape) -> Callable[..., PlantCycle]:
    """`plant_cycle(start_flat [P], clip_norm, chunks, device_residuals, edge_residuals, cycle,
    plant) -> PlantCycle`, jitted: plant `plant`'s `cycle`-th cycle from `start_flat`.

    `chunks` and the memories hold every plant (`[E, ...]`); the plant's are picked inside,
    so every plant runs the one compile. Its devices' keys are those of cloud round `cycle`,
    its summary's the edge upload key of (`cycle`, `plant`): what the runtime's edge uses
    for the cycle the cloud numbers the same way.
    """
    edge_round = make_edge_round(round_steps, tree)
    num_edges = tree.num_edges

    def plant_cycle(start_flat, clip_norm, chunks, device_residuals, edge_residuals, cycle, plant):
        own = jax.tree.map(lambda a: a[plant], chunks)
        residuals = device_residuals[plant]
        state = TrainState(None, None, None, Variates(None, jnp.zeros(0)), clip_norm)
        start = Edges(
            params=jnp.broadcast_to(start_flat, (num_edges, start_flat.shape[0])),
            weight=jnp.zeros(num_edges, jnp.float32),
            residuals=residuals,
            variates=jnp.zeros((*own.count.shape, 0), jnp.float32),
            tally=empty_tally(num_edges, 0),
        )
        run = lambda edges, e: (edge_round(edges, own, state, cycle, e), None)  # noqa: E731
        edges, _ = jax.lax.scan(run, start, jnp.arange(tree.edge_rounds))
        weight = edges.weight[plant]
        payload, edge_residual = round_steps.edge_upload(
            edges.params[plant], start_flat, weight, edge_residuals[plant], cycle, plant
        )
        return PlantCycle(
            round_steps.decode_summary(payload),
            weight,
            edges.tally.loss_sum[plant],
            edges.tally.rejected[plant],
            device_residuals.at[plant].set(edges.residuals),
            edge_residuals.at[plant].set(edge_residual),
        )

    return jax.jit(plant_cycle)


class BufferedSchedule:
    """The buffered cloud over a plan's plants: `run(state, applies)` yields each application."""

    def __init__(
        self,
        topology: Topology,
        plan: Plan,
        round_steps: RoundSteps,
        tree: TreeShape,
        spec: FlatSpec,
        algorithm,
        codecs: links.LinkCodecs,
        model_bytes: int,
        cycle_seconds: np.ndarray,
        chunk_size: int,
    ):
        self.topology, self.config = topology, topology.buffered
        self.spec, self.codecs, self.model_bytes = spec, codecs, model_bytes
        self.variates = algorithm.control_variates
        self.cycle_seconds = cycle_seconds
        self.chunks = jax.tree.map(jnp.asarray, plant_chunks(plan, chunk_size))
        self.plant_cycle = make_plant_cycle(round_steps, tree)
        self.add = jax.jit(buffered.make_buffer_add(topology.aggregation.cloud))
        self.apply = jax.jit(buffered.make_buffer_apply(algorithm, spec))
        self.ravel = jax.jit(lambda params: ravel(spec, params))
        self.required = buffered.required_plants(
            topology.runtime.min_edge_participation, len(topology.plants)
        )
        counts, device_edge = np.asarray(plan.shards.counts), np.asarray(plan.device_edge)
        self.trained = [
            int(np.count_nonzero(counts[device_edge == e])) for e in range(plan.num_edges)
        ]
        device_codec, edge_codec = codecs.device_to_edge, codecs.edge_to_cloud
        self.device_residuals = jnp.zeros((*self.chunks.count.shape, device_codec.residual_size))
        self.edge_residuals = jnp.zeros((plan.num_edges, edge_codec.residual_size))

    def run(self, state: TrainState, applies: int) -> Iterator[RoundOutcome]:
        """Trains until the buffer was applied `applies` times, yielding after each."""
        plants = len(self.topology.plants)
        start = [self.ravel(state.params)] * plants
        start_version, version = [0] * plants, 0
        params, server_state = state.params, state.server_state
        buffer, held = buffered.empty_buffer(self.spec.size), []
        models_sent = plants  # every plant got the initial model
        for arrival in buffered.arrivals(self.cycle_seconds):
            p = arrival.plant
            out = self.plant_cycle(
                start[p],
                state.clip_norm,
                self.chunks,
                self.device_residuals,
                self.edge_residuals,
                jnp.int32(arrival.cycle),
                jnp.int32(p),
            )
            self.device_residuals, self.edge_residuals = out.device_residuals, out.edge_residuals
            staleness = version - start_version[p]
            factor = buffered.staleness_factor(self.config, staleness)
            buffer = self.add(buffer, out.delta, out.weight, factor)
            held.append((p, arrival.cycle, staleness, out))
            if buffered.should_apply([h[0] for h in held], self.config.buffer_size, self.required):
                params, server_state = self.apply(params, server_state, buffer)
                version += 1
                state = state._replace(params=params, server_state=server_state)
                yield self._applied(version, state, held, arrival.seconds, models_sent)
                buffer, held, models_sent = buffered.empty_buffer(self.spec.size), [], 0
                if version >= applies:
                    return
            start[p], start_version[p] = self.ravel(params), version
            models_sent += 1

    def _applied(self, version, state, held, seconds: float, models_sent: int) -> RoundOutcome:
        """The record's parts for an application of the summaries `held`."""
        weight = sum(float(h[3].weight) for h in held)
        loss = sum(float(h[3].loss_sum) for h in held) / max(weight, 1.0)
        updates = sum(self.trained[h[0]] for h in held) * self.topology.federation.edge_rounds
        traffic = links.traffic(
            self.codecs,
            self.model_bytes,
            updates=updates,
            summaries=len(held),
            models_sent=models_sent,
            variates=self.variates,
        )
        fields = {
            "sim_seconds": seconds,
            **records.buffered_fields(self.topology, held_summaries(held)),
        }
        return RoundOutcome(
            version,
            state,
            loss,
            sum(int(h[3].rejected) for h in held),
            traffic,
            sum(self.trained[h[0]] for h in held),
            fields,
        )


def held_summaries(held) -> list[tuple[int, int, int]]:
    """(plant, cycle, staleness) of each summary an application took."""
    return [(p, cycle, staleness) for p, cycle, staleness, _ in held]
