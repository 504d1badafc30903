"""The simulator's cloud round: the core's steps (`hierfl.core.steps`) over the whole tree.

One cloud round is one jitted call. `edge_rounds` times, every device runs the core's
`device_step` from its edge's model (a chunk's devices split over the cores and run in
turn on each, `parallel.map_devices`; scanned over chunks so 10,000 devices fit in memory) and the receiving edge's decode; each edge's rule
combines its devices' updates (`rules.segment_reduce`, streamed chunk by chunk, or
`rules.reduce` over the whole stack for a robust rule) and `edge_release` applies it.
Then every edge's `edge_upload` is decoded and the cloud's `cloud_step`, `next_clip_norm`
and `next_cloud_variate` close the round. The runtime's nodes call the very same steps,
one per process. A fine-tuning round (`make_plant_round`) runs the same edge rounds from
each plant's own model and stops before the upload.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hierfl.core import personal, rules, steps
from hierfl.core.algorithms import Algorithm, DeviceData, Summary
from hierfl.core.algorithms.fedavg import Params
from hierfl.core.links import LinkCodecs
from hierfl.kernels import FlatSpec, ravel, segment_weighted_sum
from hierfl.privacy.config import DpConfig
from hierfl.sim import parallel
from hierfl.topology import Attack, TierRule, Topology

DEVICE_GROUP = 1
"""Devices trained side by side (vmapped) within a part of a chunk; the rest run in turn."""


class DeviceChunks(NamedTuple):
    """Device shards grouped `[num_chunks, chunk, ...]`; padding devices have count 0 and
    edge = num_edges. `steps` is each device's local steps per edge round; `index` its
    device index (padding devices continue the numbering)."""

    x: jax.Array
    y: jax.Array
    count: jax.Array
    steps: jax.Array
    edge: jax.Array
    index: jax.Array


class Residuals(NamedTuple):
    """Error-feedback memories the senders keep between rounds (`[..., 0]` without one):
    `device` laid out like the chunks, `[num_chunks, chunk, R]`; `edge` `[num_edges, R]`."""

    device: jax.Array
    edge: jax.Array


class Variates(NamedTuple):
    """SCAFFOLD's control variates, flat: `device` `[num_chunks, chunk, V]`, `cloud` `[V]`;
    V is the model size for SCAFFOLD and 0 otherwise (no memory used)."""

    device: jax.Array
    cloud: jax.Array


class TrainState(NamedTuple):
    """Everything a cloud round updates: global params, server optimizer state, residuals,
    variates, the DP clip norm (adaptive clipping moves it; otherwise constant), and with
    per-plant layers each edge's model after its last cloud round `[E, P]`, whose personal
    layers are the plant's (`hierfl.core.personal`; None without personalization)."""

    params: Params
    server_state: Any
    residuals: Residuals
    variates: Variates
    clip_norm: jax.Array
    personal: jax.Array | None = None


class RoundStats(NamedTuple):
    """What one cloud round reports besides the model: mean training loss, rejected updates."""

    train_loss: jax.Array
    rejected_updates: jax.Array


class RoundOutcome(NamedTuple):
    """What a cloud round (or a buffered application) leaves for its record: the global version
    it made, the state, the mean training loss, refused updates, each tier's bytes, the
    devices that trained, and the engine's other record fields."""

    round: int
    state: TrainState
    loss: float
    rejected: int
    bytes: dict[str, int]
    devices: int
    fields: dict[str, Any]


class Tally(NamedTuple):
    """What the edges count over a cloud round, per edge (`[E, ...]`): SCAFFOLD's weighted
    variate changes, the (noised) counts of unclipped updates, the weighted training loss,
    and the updates refused as non-finite."""

    variate_sum: jax.Array
    unclipped: jax.Array
    loss_sum: jax.Array
    rejected: jax.Array


class Edges(NamedTuple):
    """The edges during a cloud round: models `[E, P]`, the weight each aggregated `[E]`,
    the device memories the edge rounds move, and the round's tally."""

    params: jax.Array
    weight: jax.Array
    residuals: jax.Array
    variates: jax.Array
    tally: Tally


@dataclasses.dataclass(frozen=True)
class RoundSteps:
    """The core's steps bound for one topology: what a node of each tier runs."""

    device: Callable[..., steps.DeviceOutput]
    decode_update: Callable
    edge_rules: tuple[TierRule, ...]
    edge_release: Callable[..., steps.EdgeOutcome]
    edge_upload: Callable
    decode_summary: Callable
    cloud: Callable
    dp: DpConfig | None
    variates: bool
    personal_mask: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        topology: Topology,
        algorithm: Algorithm,
        spec: FlatSpec,
        codecs: LinkCodecs,
        attackers: np.ndarray,
    ):
        seed, dp = topology.federation.seed, DpConfig.of(topology)
        edge_rules = tuple(topology.edge_rule(plant) for plant in topology.plants)
        num_edges = len(topology.plants)
        cloud_rule = topology.aggregation.cloud
        attack: Attack = topology.attack
        mask = personal.topology_mask(topology, spec)
        return cls(
            device=steps.make_device_step(
                algorithm, spec, codecs.device_to_edge, seed, dp, attack, attackers
            ),
            decode_update=steps.make_decode(codecs.device_to_edge),
            edge_rules=edge_rules,
            edge_release=steps.make_edge_release(dp, seed),
            edge_upload=steps.make_edge_upload(codecs.edge_to_cloud, seed),
            decode_summary=steps.make_decode(codecs.edge_to_cloud),
            cloud=steps.make_cloud_step(
                algorithm, spec, cloud_rule, dp, seed, num_edges, personal_mask=mask
            ),
            dp=dp,
            variates=algorithm.control_variates,
            personal_mask=mask,
        )


@dataclasses.dataclass(frozen=True)
class TreeShape:
    """The tree's sizes a round needs: edges, edge rounds, each edge's devices and
    examples (`[E]`, padding excluded), and the federation's totals."""

    num_edges: int
    edge_rounds: int
    devices: np.ndarray
    examples: np.ndarray

    @property
    def total_devices(self) -> int:
        return int(self.devices.sum())


def make_cloud_round(
    round_steps: RoundSteps, spec: FlatSpec, tree: TreeShape, mesh: Mesh | None = None
) -> Callable[[TrainState, DeviceChunks, jax.Array], tuple[TrainState, RoundStats]]:
    """`cloud_round(TrainState, chunks, round) -> (TrainState, RoundStats)`, jitted.

    Edge models and every update travel as flat buffers (`spec`); the device memories
    come back split over `mesh` like the chunks, so round after round reuses one compile.
    """
    edge_round = make_edge_round(round_steps, tree, parallel.shard_count(mesh))
    num_edges = tree.num_edges
    edge_ids = jnp.arange(num_edges)
    mask = round_steps.personal_mask

    def cloud_round(state: TrainState, chunks: DeviceChunks, cloud_round):
        global_flat = ravel(spec, state.params)
        edge_models = jnp.broadcast_to(global_flat, (num_edges, global_flat.shape[0]))
        if mask is not None:
            edge_models = personal.merge(global_flat[None], state.personal, mask)
        edges = train_edges(edge_round, tree, edge_models, chunks, state, cloud_round)

        upload = jax.vmap(round_steps.edge_upload, in_axes=(0, None, 0, 0, None, 0))
        shared = edges.params
        if mask is not None:
            shared = personal.shared_part(edges.params, global_flat[None], mask)
        payload, edge_residuals = upload(
            shared, global_flat, edges.weight, state.residuals.edge, cloud_round, edge_ids
        )
        deltas = jax.vmap(round_steps.decode_summary)(payload)
        params, server_state = round_steps.cloud(
            state.params, state.server_state, deltas, edges.weight, cloud_round, state.clip_norm
        )
        tally = edges.tally
        clip_norm = steps.next_clip_norm(
            round_steps.dp,
            state.clip_norm,
            tally.unclipped.sum(),
            tree.edge_rounds,
            tree.total_devices,
        )
        cloud_variate = steps.next_cloud_variate(
            state.variates.cloud, tally.variate_sum, jnp.float32(tree.examples.sum())
        )
        device_residuals = keep_sharded(edges.residuals, mesh)
        device_variates = keep_sharded(edges.variates, mesh)
        new_state = TrainState(
            params,
            server_state,
            Residuals(device_residuals, edge_residuals),
            Variates(device_variates, cloud_variate),
            clip_norm,
            None if mask is None else edges.params,
        )
        return new_state, round_stats(edges)

    return jax.jit(cloud_round)


def make_plant_round(
    round_steps: RoundSteps, tree: TreeShape, adapted: np.ndarray, mesh: Mesh | None = None
) -> Callable[[TrainState, DeviceChunks, jax.Array], tuple[TrainState, RoundStats]]:
    """`plant_round(TrainState, chunks, round) -> (TrainState, RoundStats)`, jitted: a
    fine-tuning round (`[personalization] method = "fine-tune"`).

    Every edge starts from its plant's model (`state.personal` `[E, P]`) and runs the
    round's edge rounds as a cloud round does, keeping only the change of the `adapted`
    layers (`personal.adapting_only`; `round_steps`' devices train through
    `personal.frozen_apply`); nothing goes to the cloud, the global model and the server
    state stay. `state.personal` comes back as each plant's new model.
    """
    steps_here = dataclasses.replace(
        round_steps, edge_release=personal.adapting_only(round_steps.edge_release, adapted)
    )
    edge_round = make_edge_round(steps_here, tree, parallel.shard_count(mesh))

    def plant_round(state: TrainState, chunks: DeviceChunks, cloud_round):
        edges = train_edges(edge_round, tree, state.personal, chunks, state, cloud_round)
        residuals = state.residuals._replace(device=keep_sharded(edges.residuals, mesh))
        new_state = state._replace(residuals=residuals, personal=edges.params)
        return new_state, round_stats(edges)

    return jax.jit(plant_round)


def train_edges(
    edge_round: Callable[..., Edges],
    tree: TreeShape,
    edge_models: jax.Array,
    chunks: DeviceChunks,
    state: TrainState,
    cloud_round,
) -> Edges:
    """The `edge_rounds` edge rounds of one cloud round, every edge starting from its row of
    `edge_models` `[E, P]`."""
    start = Edges(
        params=edge_models,
        weight=jnp.zeros(tree.num_edges, jnp.float32),
        residuals=state.residuals.device,
        variates=state.variates.device,
        tally=empty_tally(tree.num_edges, state.variates.device.shape[-1]),
    )
    run_edge_round = lambda edges, e: (edge_round(edges, chunks, state, cloud_round, e), None)  # noqa: E731
    edges, _ = jax.lax.scan(run_edge_round, start, jnp.arange(tree.edge_rounds))
    return edges


def round_stats(edges: Edges) -> RoundStats:
    """A round's mean training loss (weighted by what the edges aggregated) and rejections."""
    tally = edges.tally
    return RoundStats(
        tally.loss_sum.sum() / jnp.maximum(edges.weight.sum(), 1.0), tally.rejected.sum()
    )


def make_edge_round(
    round_steps: RoundSteps, tree: TreeShape, shards: int = 1
) -> Callable[..., Edges]:
    """`edge_round(edges, chunks, state, cloud_round, e) -> edges`: every device trains from
    its edge's model, every edge applies its rule and `edge_release`; a chunk's devices are
    split in `shards` parts (the mesh's size)."""
    train_chunk = make_chunk_training(round_steps, tree.num_edges, shards)
    robust = tuple(e for e, rule in enumerate(round_steps.edge_rules) if rule.robust)
    release = jax.vmap(round_steps.edge_release, in_axes=(0, 0, 0, 0, None, None, 0, None))
    devices = jnp.asarray(tree.devices, jnp.float32)
    edge_ids = jnp.arange(tree.num_edges)

    def edge_round(edges: Edges, chunks: DeviceChunks, state: TrainState, cloud_round, e) -> Edges:
        def scan_chunk(carry, chunk_and_memories):
            chunk, residual, variate = chunk_and_memories
            return train_chunk(carry, chunk, residual, variate, edges.params, state, cloud_round, e)

        size, variate_size = edges.params.shape[-1], edges.variates.shape[-1]
        empty = (empty_summary(tree.num_edges, size), empty_tally(tree.num_edges, variate_size))
        (summary, tally), (residuals, variates, received) = jax.lax.scan(
            scan_chunk, empty, (chunks, edges.residuals, edges.variates)
        )
        if robust:
            summary = robust_summaries(
                round_steps.edge_rules, robust, summary, received, chunks.edge
            )
        outcome = release(
            edges.params,
            summary,
            tally.unclipped,
            devices,
            cloud_round,
            e,
            edge_ids,
            state.clip_norm,
        )
        return Edges(
            params=outcome.edge_flat,
            weight=edges.weight + outcome.weight,
            residuals=residuals,
            variates=variates,
            tally=add(edges.tally, tally._replace(unclipped=outcome.unclipped)),
        )

    return edge_round


def make_chunk_training(round_steps: RoundSteps, num_edges: int, shards: int = 1) -> Callable:
    """`train_chunk((summary, tally), chunk, residual, variate, edge_params, state,
    cloud_round, e) -> ((summary, tally), (residual, variate, received))`: a chunk of
    devices trains and sends (`DEVICE_GROUP` at a time in each of `shards` parts, see
    `parallel.map_devices`), the receiving edges decode and add up
    (`rules.segment_reduce`); `received` keeps the decoded stack for robust edges (None
    when no edge needs it)."""
    batched = (True, True, True, False, False, True, False, True, False)
    device = parallel.map_devices(round_steps.device, batched, shards, DEVICE_GROUP)
    decode = jax.vmap(round_steps.decode_update)
    keep_stack = any(rule.robust for rule in round_steps.edge_rules)

    def train_chunk(
        carry,
        chunk: DeviceChunks,
        residual,
        variate,
        edge_params,
        state: TrainState,
        cloud_round,
        e,
    ):
        start = edge_params[jnp.minimum(chunk.edge, num_edges - 1)]
        data = DeviceData(chunk.x, chunk.y, chunk.count, chunk.steps)
        cloud_variate = state.variates.cloud if round_steps.variates else None
        out = device(
            start,
            data,
            residual,
            cloud_round,
            e,
            chunk.index,
            state.clip_norm,
            variate,
            cloud_variate,
        )
        deltas = decode(out.payload)
        per_edge = lambda x: jax.ops.segment_sum(x, chunk.edge, num_edges)  # noqa: E731
        if round_steps.variates:
            variate_sum = segment_weighted_sum(
                out.variate_change, out.weight, chunk.edge, num_edges
            )
            variate = variate + out.variate_change
        else:
            variate_sum = jnp.zeros((num_edges, 0), jnp.float32)
        tally = Tally(
            variate_sum=variate_sum,
            unclipped=per_edge(out.unclipped.astype(jnp.float32)),
            loss_sum=per_edge(out.loss * out.weight),
            rejected=per_edge((~out.ok & (chunk.count > 0)).astype(jnp.int32)),
        )
        summary = rules.segment_reduce(
            round_steps.edge_rules, deltas, out.weight, chunk.edge, num_edges
        )
        received = (deltas, out.weight) if keep_stack else None
        return add(carry, (summary, tally)), (out.residual, variate, received)

    return train_chunk


def robust_summaries(
    edge_rules, robust: tuple[int, ...], summary: Summary, received, chunk_edges
) -> Summary:
    """Edges with a robust rule replace their streamed sum by `rules.reduce` over all their
    devices' updates (`received`: the decoded `[chunks, chunk, P]` stack and weights)."""
    deltas, weights = received
    stack, weights, owners = (
        deltas.reshape(-1, deltas.shape[-1]),
        weights.reshape(-1),
        chunk_edges.reshape(-1),
    )
    delta_sum, weight = summary
    for e in robust:
        own = rules.reduce(edge_rules[e], stack, jnp.where(owners == e, weights, 0.0))
        delta_sum, weight = delta_sum.at[e].set(own.delta_sum), weight.at[e].set(own.weight)
    return Summary(delta_sum, weight)


def empty_summary(num_edges: int, size: int) -> Summary:
    return Summary(jnp.zeros((num_edges, size), jnp.float32), jnp.zeros(num_edges, jnp.float32))


def empty_tally(num_edges: int, variate_size: int) -> Tally:
    zeros = jnp.zeros(num_edges, jnp.float32)
    return Tally(
        jnp.zeros((num_edges, variate_size), jnp.float32),
        zeros,
        zeros,
        jnp.zeros(num_edges, jnp.int32),
    )


def add(a, b):
    """Two pytrees of the same structure, added leaf by leaf."""
    return jax.tree.map(jnp.add, a, b)


def keep_sharded(memory: jax.Array, mesh: Mesh | None) -> jax.Array:
    """A device memory laid out like the chunks stays split over the mesh (empty ones aside)."""
    if mesh is None or memory.shape[-1] == 0:
        return memory
    return jax.lax.with_sharding_constraint(memory, parallel.sharding(mesh, axis=1))
