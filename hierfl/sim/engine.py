"""The simulator: the whole hierarchy in one process, HierFAVG semantics, compiled once.

One cloud round is one jitted call. Inside it, `edge_rounds` times: every device starts
from its edge's model and runs the algorithm's `local_update` (vmapped over a chunk of
devices, scanned over chunks so 10,000 devices fit in memory); the results are summed per
edge with a segment reduction and each edge applies its mean. Then each edge's delta from
the global model, weighted by its examples, goes to the cloud, which aggregates and
applies `server_update`. These are the same pure functions the runtime calls per process.

An edge with a robust rule (`hierfl.core.rules`) needs all its devices' updates at once,
so when any edge has one the round also keeps the `[devices, P]` stack of the edge round
(memory grows with the devices, unlike the streaming mean). SCAFFOLD's control variates
(`hierfl.core.algorithms.scaffold`) live in the `TrainState` beside the model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hierfl import privacy
from hierfl.core import links, rng, rules
from hierfl.core.algorithms import (
    Algorithm,
    DeviceData,
    Summary,
    apply_summary,
    build_algorithm,
    edge_result,
    screen_nonfinite,
    summarize,
)
from hierfl.core.attack import apply_attack, attacker_mask
from hierfl.core.links import LinkCodecs
from hierfl.data.evaluation import make_evaluator
from hierfl.data.loading import load_topology
from hierfl.data.plan import Plan, make_plan
from hierfl.data.tasks.models import Model, Params, build_model
from hierfl.kernels import FlatSpec, clip_by_l2, flat_spec, ravel, segment_weighted_sum, unravel
from hierfl.privacy.config import DpConfig, rounds_to_run
from hierfl.runs import checkpoint, records
from hierfl.runs.metrics import MetricsWriter, write_run_info
from hierfl.runs.progress import RoundProgress
from hierfl.sim import parallel
from hierfl.topology import Attack, TierRule, Topology

DEFAULT_CHUNK_SIZE = 512


class DeviceChunks(NamedTuple):
    """Device shards grouped `[num_chunks, chunk, ...]`; padding devices have count 0 and edge = num_edges.

    `steps` is each device's local steps per edge round; `attacker` marks simulated faulty devices.
    """

    x: jax.Array
    y: jax.Array
    count: jax.Array
    steps: jax.Array
    attacker: jax.Array
    edge: jax.Array
    index: jax.Array


class RoundStats(NamedTuple):
    """What one cloud round reports besides the model: mean training loss, rejected updates."""

    train_loss: jax.Array
    rejected_updates: jax.Array


@dataclasses.dataclass
class SimulationResult:
    """The trained global model, the metrics of every cloud round, and where they were written."""

    params: Params
    history: list[dict[str, Any]]
    model: Model
    plan: Plan
    run_dir: Path | None


def chunk_devices(plan: Plan, chunk_size: int, multiple: int = 1) -> DeviceChunks:
    """Groups the device axis into equal chunks of about `chunk_size`, padding the last.

    The number of chunks is the fewest that respects `chunk_size`; chunks are then as even
    as possible and rounded up to a `multiple` (the number of shards), so little padding
    is trained.
    """
    shards, num_devices = plan.shards, plan.shards.num_devices
    num_chunks = -(-num_devices // chunk_size)
    chunk = -(-num_devices // num_chunks)
    chunk = -(-chunk // multiple) * multiple
    padded = num_chunks * chunk
    pad = padded - num_devices

    def group(a: np.ndarray, fill: int = 0) -> np.ndarray:
        a = np.concatenate([a, np.full((pad, *a.shape[1:]), fill, a.dtype)])
        return a.reshape(padded // chunk, chunk, *a.shape[1:])

    return DeviceChunks(
        x=group(shards.x),
        y=group(shards.y),
        count=group(shards.counts),
        steps=group(np.asarray(plan.topology.device_steps, np.int32)),
        attacker=group(attacker_mask(plan.topology)),
        edge=group(plan.device_edge, fill=plan.num_edges),
        index=np.arange(padded, dtype=np.int32).reshape(padded // chunk, chunk),
    )


def place_chunks(plan: Plan, chunk_size: int, mesh: Mesh | None) -> DeviceChunks:
    """The plan's devices, chunked and placed: each chunk split across the mesh's devices."""
    shards = parallel.shard_count(mesh)
    return parallel.put_sharded(chunk_devices(plan, chunk_size, multiple=shards), mesh, axis=1)


class Residuals(NamedTuple):
    """Error-feedback memories the senders keep between rounds (empty `[..., 0]` without one).

    `device` is laid out like the chunks, `[num_chunks, chunk, R]`; `edge` is `[num_edges, R]`.
    """

    device: jax.Array
    edge: jax.Array


class Variates(NamedTuple):
    """SCAFFOLD's control variates, flat: `device` `[num_chunks, chunk, V]`, `edge` `[E, V]`, `cloud` `[V]`.

    V is the model size for SCAFFOLD and 0 for every other algorithm (no memory used).
    """

    device: jax.Array
    edge: jax.Array
    cloud: jax.Array


class TrainState(NamedTuple):
    """Everything a cloud round updates: global params, server optimizer state, residuals,
    variates, and the DP clip norm (adaptive clipping moves it; otherwise constant)."""

    params: Params
    server_state: Any
    residuals: Residuals
    variates: Variates
    clip_norm: jax.Array


@dataclasses.dataclass(frozen=True)
class Tiers:
    """What each tier does besides the algorithm: every edge's rule (in plant order), the cloud's, the attack."""

    edge: tuple[TierRule, ...]
    cloud: TierRule = TierRule()
    attack: Attack = Attack()
    dp: DpConfig | None = None

    @classmethod
    def of(cls, topology: Topology) -> Tiers:
        return cls(
            tuple(topology.edge_rule(plant) for plant in topology.plants),
            topology.aggregation.cloud,
            topology.attack,
            DpConfig.of(topology),
        )


@dataclasses.dataclass(frozen=True)
class Simulation:
    """The compiled simulator for one plan: its model, the placed devices, the round, the start state.

    `cloud_round(state, chunks, round)` runs one cloud round; `bytes_per_round` is what
    each tier sends in one (see `hierfl.core.links.tier_bytes`).
    """

    model: Model
    spec: FlatSpec
    codecs: LinkCodecs
    chunks: DeviceChunks
    initial: TrainState
    cloud_round: Callable[[TrainState, DeviceChunks, jax.Array], tuple[TrainState, RoundStats]]
    bytes_per_round: dict[str, int]
    trained_devices: int


def build_simulation(plan: Plan, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Simulation:
    """Builds the model, algorithm, codecs and jitted cloud round, and places the devices."""
    topology = plan.topology
    federation = topology.federation
    model, params = init_global_model(plan)
    algorithm = build_algorithm(model.apply, plan.task, topology, plan.shards.counts)
    spec = flat_spec(params)
    codecs = links.build_link_codecs(topology.compression, spec.size)
    mesh = parallel.device_mesh()
    chunks = place_chunks(plan, chunk_size, mesh)
    variate_size = spec.size if algorithm.control_variates else 0
    initial = TrainState(
        params,
        algorithm.server_init(params),
        initial_residuals(codecs, chunks, plan.num_edges, mesh),
        initial_variates(variate_size, chunks, plan.num_edges, mesh),
        jnp.float32(topology.privacy.clip_norm),
    )
    model_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    trained_devices = int(np.count_nonzero(plan.shards.counts))
    tiers = Tiers.of(topology)
    return Simulation(
        model=model,
        spec=spec,
        codecs=codecs,
        chunks=chunks,
        initial=initial,
        cloud_round=make_cloud_round(
            algorithm,
            spec,
            codecs,
            tiers,
            plan.num_edges,
            federation.edge_rounds,
            federation.seed,
            mesh,
        ),
        bytes_per_round=links.tier_bytes(
            codecs,
            model_bytes,
            trained_devices,
            plan.num_edges,
            federation.edge_rounds,
            variates=algorithm.control_variates,
        ),
        trained_devices=trained_devices,
    )


def initial_residuals(
    codecs: LinkCodecs, chunks: DeviceChunks, num_edges: int, mesh: Mesh | None
) -> Residuals:
    """Zero memories for every device (sharded like the chunks, unless empty) and every edge."""
    device = links.initial_residuals(codecs.device_to_edge, chunks.count.shape)
    if codecs.device_to_edge.residual_size:
        device = parallel.put_sharded(device, mesh, axis=1)
    return Residuals(device, links.initial_residuals(codecs.edge_to_cloud, (num_edges,)))


def initial_variates(
    size: int, chunks: DeviceChunks, num_edges: int, mesh: Mesh | None
) -> Variates:
    """Zero control variates of `size` for every device (sharded like the chunks), edge and the cloud."""
    device = jnp.zeros((*chunks.count.shape, size), jnp.float32)
    if size:
        device = parallel.put_sharded(device, mesh, axis=1)
    return Variates(
        device, jnp.zeros((num_edges, size), jnp.float32), jnp.zeros((size,), jnp.float32)
    )


def make_cloud_round(
    algorithm: Algorithm,
    spec: FlatSpec,
    codecs: LinkCodecs,
    tiers: Tiers,
    num_edges: int,
    edge_rounds: int,
    seed: int,
    mesh: Mesh | None = None,
) -> Callable:
    """`cloud_round(TrainState, chunks, round) -> (TrainState, RoundStats)`, jitted.

    Edge models and every update travel as flat buffers (`spec`), so aggregation and
    compression are the `hierfl.kernels` array kernels; devices train on the unraveled
    pytree and the cloud's server optimizer sees the pytree again. The device residuals
    and variates come back split over `mesh` like the chunks, so round after round
    reuses one compile.
    """
    to_flat = jax.vmap(lambda tree: ravel(spec, tree))
    from_flat = jax.vmap(lambda buffer: unravel(spec, buffer))
    robust_edges = tuple(e for e, rule in enumerate(tiers.edge) if rule.robust)
    clip_norms = jnp.array(
        [rule.clip_norm or jnp.inf for rule in tiers.edge] + [jnp.inf], jnp.float32
    )
    clipping = any(rule.clip_norm is not None for rule in tiers.edge)
    scaffold = algorithm.control_variates
    dp = tiers.dp

    def send_up(codec):
        return jax.vmap(lambda result, residual, key: links.transmit(codec, result, residual, key))

    def privatize_devices(results, chunk: DeviceChunks, clip_norm, cloud_round, e):
        """DP on the devices' side (`privacy.device_release`): participation, one vote each, clipping, local noise."""
        sampling = jax.vmap(lambda i: dp.key(rng.sampling_key(seed, cloud_round, e, i)))(
            chunk.index
        )
        noise = jax.vmap(lambda i: dp.key(rng.privacy_key(seed, cloud_round, e, i)))(chunk.index)
        noise_std = dp.noise_multiplier * clip_norm if dp.place == "device" else jnp.float32(0)
        release = jax.vmap(privacy.device_release, in_axes=(0, 0, 0, 0, None, None, None))
        deltas, weights, unclipped = release(
            results.delta, results.weight, sampling, noise, clip_norm, noise_std, dp.sample_rate
        )
        return results._replace(delta=deltas, weight=weights), unclipped

    def train_devices(
        edge_params, chunk: DeviceChunks, variate, cloud_variate, clip_norm, cloud_round, e
    ):
        """A chunk's local updates (flat, attacked, screened) and its devices' variate changes."""
        start = from_flat(edge_params[jnp.minimum(chunk.edge, num_edges - 1)])
        keys = jax.vmap(lambda i: rng.device_key(seed, cloud_round, e, i))(chunk.index)
        data = DeviceData(chunk.x, chunk.y, chunk.count, chunk.steps)
        if scaffold:
            corrections = from_flat(cloud_variate[None, :] - variate)
            results = jax.vmap(algorithm.local_update)(start, data, keys, corrections)
        else:
            results = jax.vmap(algorithm.local_update)(start, data, keys)
        attack_keys = jax.vmap(lambda i: rng.attack_key(seed, cloud_round, e, i))(chunk.index)
        deltas = apply_attack(tiers.attack, to_flat(results.delta), chunk.attacker, attack_keys)
        results, ok = jax.vmap(screen_nonfinite)(results._replace(delta=deltas))
        if dp is not None:
            results, unclipped = privatize_devices(results, chunk, clip_norm, cloud_round, e)
            return results, ok, unclipped
        if not scaffold:
            return results, ok, variate
        changes = jax.vmap(algorithm.variate_delta, in_axes=(0, 0, None))(
            results.delta, chunk.steps, cloud_variate
        )
        changes = jnp.where((results.weight > 0)[:, None], changes, 0.0)
        return results, ok, changes

    def edge_round(
        edge_params,
        chunks: DeviceChunks,
        residuals,
        device_variates,
        cloud_variate,
        clip_norm,
        cloud_round,
        e,
    ):
        def train_chunk(carry, chunk_and_memories):
            chunk, residual, variate = chunk_and_memories
            summary, variate_sum, loss_sum, rejected, unclipped = carry
            results, ok, changes = train_devices(
                edge_params, chunk, variate, cloud_variate, clip_norm, cloud_round, e
            )
            if dp is not None:
                unclipped = unclipped + jax.ops.segment_sum(
                    changes.astype(jnp.float32), chunk.edge, num_edges
                )
            if scaffold:
                variate_sum = variate_sum + segment_weighted_sum(
                    changes, results.weight, chunk.edge, num_edges
                )
                variate = variate + changes
            upload_keys = jax.vmap(lambda i: rng.device_upload_key(seed, cloud_round, e, i))(
                chunk.index
            )
            results, residual = send_up(codecs.device_to_edge)(results, residual, upload_keys)
            if clipping:
                clipped, _ = clip_by_l2(results.delta, clip_norms[chunk.edge])
                results = results._replace(delta=clipped)
            per_edge = algorithm.segment_aggregate(summarize(results), chunk.edge, num_edges)
            summary = jax.tree.map(jnp.add, summary, per_edge)
            loss_sum = loss_sum + jnp.sum(results.loss * results.weight)
            received = (results.delta, results.weight) if robust_edges else None
            carry = (
                summary,
                variate_sum,
                loss_sum,
                rejected + jnp.sum(~ok & (chunk.count > 0)),
                unclipped,
            )
            return carry, (residual, variate, received)

        empty = Summary(jnp.zeros_like(edge_params), jnp.zeros(num_edges, jnp.float32))
        no_variates = jnp.zeros((num_edges, device_variates.shape[-1]), jnp.float32)
        initial = (
            empty,
            no_variates,
            jnp.float32(0),
            jnp.int32(0),
            jnp.zeros(num_edges, jnp.float32),
        )
        (
            (summary, variate_sum, loss_sum, rejected, unclipped),
            (residuals, device_variates, received),
        ) = jax.lax.scan(train_chunk, initial, (chunks, residuals, device_variates))
        if dp is not None and dp.central:
            summary, unclipped = central_dp_edge(
                summary, unclipped, chunks, clip_norm, cloud_round, e
            )
        new_params = jax.vmap(apply_summary)(edge_params, summary)
        if robust_edges:
            new_params = robust_edge_params(
                edge_params, new_params, received, chunks.edge.reshape(-1)
            )
        return (
            new_params,
            summary.weight,
            loss_sum,
            rejected,
            residuals,
            device_variates,
            variate_sum,
            unclipped.sum(),
        )

    def central_dp_edge(
        summary: Summary, unclipped, chunks: DeviceChunks, clip_norm, cloud_round, e
    ):
        """A trusted edge's DP release: noise on its sum (dp = 'edge'), the expected count as its weight.

        Dividing by the expected number of devices (not the actual, private one) keeps the
        sensitivity of the edge's mean at one clipped update; with dp = 'cloud' the noise
        waits for the cloud's sum. Adaptive clipping noises the count of unclipped updates.
        """
        nodes = jnp.arange(num_edges)
        if dp.place == "edge":
            keys = jax.vmap(lambda n: dp.key(rng.sum_noise_key(seed, cloud_round, e, n)))(nodes)
            noised = jax.vmap(privacy.privatize_sum, in_axes=(0, 0, None))(
                summary.delta_sum, keys, dp.noise_multiplier * clip_norm
            )
            summary = summary._replace(delta_sum=noised)
        if dp.clip_quantile is not None:
            keys = jax.vmap(lambda n: dp.key(rng.count_noise_key(seed, cloud_round, e, n)))(nodes)
            unclipped = unclipped + dp.quantile_noise * jax.vmap(lambda k: jax.random.normal(k))(
                keys
            )
        devices = jax.ops.segment_sum(
            (chunks.count.reshape(-1) > 0).astype(jnp.float32), chunks.edge.reshape(-1), num_edges
        )
        return summary._replace(weight=dp.sample_rate * devices), unclipped

    def robust_edge_params(edge_params, new_params, received, edge_ids):
        """Edges with a robust rule replace their mean with the rule over all their devices' updates."""
        deltas, weights = received
        stack, weights = deltas.reshape(-1, deltas.shape[-1]), weights.reshape(-1)
        for e in robust_edges:
            own = jnp.where(edge_ids == e, weights, 0.0)
            new_params = new_params.at[e].set(
                edge_params[e] + rules.rule_mean(tiers.edge[e], stack, own)
            )
        return new_params

    def cloud_round(state: TrainState, chunks: DeviceChunks, cloud_round):
        global_params, residuals, variates = state.params, state.residuals, state.variates
        global_flat = ravel(spec, global_params)
        edge_params = jnp.broadcast_to(global_flat, (num_edges, global_flat.shape[0]))
        edge_examples = jax.ops.segment_sum(
            chunks.count.reshape(-1).astype(jnp.float32), chunks.edge.reshape(-1), num_edges
        )

        def one_edge_round(carry, e):
            params, device_residuals, device_variates, edge_variates, loss_sum, rejected = carry
            params, weight, loss, bad, device_residuals, device_variates, variate_sum, unclipped = (
                edge_round(
                    params,
                    chunks,
                    device_residuals,
                    device_variates,
                    variates.cloud,
                    state.clip_norm,
                    cloud_round,
                    e,
                )
            )
            edge_variates = edge_variates + variate_sum / jnp.maximum(edge_examples, 1.0)[:, None]
            carry = (
                params,
                device_residuals,
                device_variates,
                edge_variates,
                loss_sum + loss,
                rejected + bad,
            )
            return carry, (weight, variate_sum, unclipped)

        initial = (
            edge_params,
            residuals.device,
            variates.device,
            variates.edge,
            jnp.float32(0),
            jnp.int32(0),
        )
        (
            (edge_params, device_residuals, device_variates, edge_variates, loss_sum, rejected),
            (weights, variate_sums, unclipped),
        ) = jax.lax.scan(one_edge_round, initial, jnp.arange(edge_rounds))
        # An edge's weight is the examples it aggregated, summed over its edge rounds.
        uploads = edge_result(edge_params, global_flat, weights.sum(axis=0))
        upload_keys = jax.vmap(lambda e: rng.edge_upload_key(seed, cloud_round, e))(
            jnp.arange(num_edges)
        )
        uploads, edge_residuals = send_up(codecs.edge_to_cloud)(
            uploads, residuals.edge, upload_keys
        )
        total = rules.reduce(tiers.cloud, uploads.delta, uploads.weight)
        clip_norm = state.clip_norm
        if dp is not None and dp.place == "cloud":
            key = dp.key(rng.sum_noise_key(seed, cloud_round, 0, num_edges))
            total = total._replace(
                delta_sum=privacy.privatize_sum(
                    total.delta_sum, key, dp.noise_multiplier * clip_norm
                )
            )
        if dp is not None and dp.clip_quantile is not None:
            expected = edge_rounds * weights[0].sum()
            clip_norm = privacy.adapt_clip_norm(
                clip_norm, unclipped.sum(), expected, dp.clip_quantile, dp.clip_learning_rate
            )
        total = Summary(unravel(spec, total.delta_sum), total.weight)
        params, server_state = algorithm.server_update(global_params, state.server_state, total)
        cloud_variate = variates.cloud + variate_sums.sum(axis=(0, 1)) / jnp.maximum(
            edge_examples.sum(), 1.0
        )
        if mesh is not None and codecs.device_to_edge.residual_size:
            device_residuals = jax.lax.with_sharding_constraint(
                device_residuals, parallel.sharding(mesh, axis=1)
            )
        if mesh is not None and scaffold:
            device_variates = jax.lax.with_sharding_constraint(
                device_variates, parallel.sharding(mesh, axis=1)
            )
        stats = RoundStats(loss_sum / jnp.maximum(weights.sum(), 1.0), rejected)
        new_state = TrainState(
            params,
            server_state,
            Residuals(device_residuals, edge_residuals),
            Variates(device_variates, edge_variates, cloud_variate),
            clip_norm,
        )
        return new_state, stats

    return jax.jit(cloud_round)


def init_global_model(plan: Plan) -> tuple[Model, Params]:
    """The task's model for the topology, initialised from the run's init key."""
    federation, task = plan.topology.federation, plan.task
    name = federation.model or task.default_model
    return build_model(name, task.models[name], rng.init_key(federation.seed))


def simulate(
    topology: Topology | str | os.PathLike,
    *,
    rounds: int | None = None,
    out: str | os.PathLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> SimulationResult:
    """Trains the topology's federation in one process and returns the global model.

    Args:
      topology: a `Topology`, a path to a topology file, or a preset name.
      rounds: cloud rounds to run (default: the topology's `cloud_rounds`).
      out: run directory for run.json, metrics.jsonl and model.npz (nothing written if None).
      chunk_size: devices trained at once; lower it to bound memory with many devices.
        Each chunk is split over all local JAX devices (see `hierfl.sim.parallel`).
      progress: show a rich progress bar with the latest score (the task's metric).
      on_round: called with each round's metrics record after it is written.
    """
    if not isinstance(topology, Topology):
        topology = load_topology(topology)
    if rounds is not None:
        topology = topology.with_federation(cloud_rounds=rounds)
    federation = topology.federation
    plan = make_plan(topology)
    sim = build_simulation(plan, chunk_size)
    model, state = sim.model, sim.initial
    evaluate = make_evaluator(model, plan.task, plan.test, plan.num_edges)

    budget = rounds_to_run(topology, federation.cloud_rounds)
    run_dir = Path(out) if out is not None else None
    writer = None
    if run_dir is not None:
        writer = _open_run_dir(
            run_dir, records.run_info(topology, model.name, plan.task.metric, budget)
        )
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    with RoundProgress(
        budget, enabled=progress, title=federation.name, metric=plan.task.metric
    ) as bar:
        for r in range(1, budget + 1):
            round_started = time.perf_counter()
            state, stats = sim.cloud_round(state, sim.chunks, jnp.int32(r))
            scores = evaluate(state.params)
            now = time.perf_counter()
            record = records.round_record(
                topology,
                plan.task,
                round=r,
                loss=float(stats.train_loss),
                scores=scores,
                bytes=sim.bytes_per_round,
                round_seconds=now - round_started,
                elapsed_seconds=now - started,
                devices=sim.trained_devices,
                clip_norm=float(state.clip_norm),
                rejected_updates=int(stats.rejected_updates),
            )
            history.append(record)
            if writer is not None:
                writer.write(record)
            bar.update(record)
            if on_round is not None:
                on_round(record)
    if writer is not None:
        writer.close()
        checkpoint.save_params(run_dir / "model.npz", state.params)
    return SimulationResult(state.params, history, model, plan, run_dir)


def _open_run_dir(run_dir: Path, info: dict[str, Any]) -> MetricsWriter:
    """Creates the run directory, writes `info` to `run.json`, and opens a fresh metrics file."""
    write_run_info(run_dir, info)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return MetricsWriter(run_dir)
