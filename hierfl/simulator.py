"""The simulator: the whole hierarchy in one process, HierFAVG semantics, compiled once.

One cloud round is one jitted call. Inside it, `edge_rounds` times: every device starts
from its edge's model and runs the algorithm's `local_update` (vmapped over a chunk of
devices, scanned over chunks so 10,000 devices fit in memory); the results are summed per
edge with a segment reduction and each edge applies its mean. Then each edge's delta from
the global model, weighted by its examples, goes to the cloud, which aggregates and
applies `server_update`. These are the same pure functions the runtime calls per process.
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

from hierfl import __version__, checkpoint, parallel, rng
from hierfl.algorithms import (
    Algorithm,
    DeviceData,
    Summary,
    apply_summary,
    build_algorithm,
    edge_summary,
    screen_nonfinite,
    summarize,
)
from hierfl.evaluation import make_evaluator
from hierfl.loading import load_topology
from hierfl.metrics import MetricsWriter, write_run_info
from hierfl.plan import Plan, make_plan
from hierfl.progress import RoundProgress
from hierfl.tasks.models import Model, Params, build_model
from hierfl.topology import Topology

DEFAULT_CHUNK_SIZE = 512


class DeviceChunks(NamedTuple):
    """Device shards grouped `[num_chunks, chunk, ...]`; padding devices have count 0 and edge = num_edges."""

    x: jax.Array
    y: jax.Array
    count: jax.Array
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
        edge=group(plan.device_edge, fill=plan.num_edges),
        index=np.arange(padded, dtype=np.int32).reshape(padded // chunk, chunk),
    )


def place_chunks(plan: Plan, chunk_size: int, mesh: Mesh | None) -> DeviceChunks:
    """The plan's devices, chunked and placed: each chunk split across the mesh's devices."""
    shards = parallel.shard_count(mesh)
    return parallel.put_sharded(chunk_devices(plan, chunk_size, multiple=shards), mesh, axis=1)


def make_cloud_round(algorithm: Algorithm, num_edges: int, edge_rounds: int, seed: int) -> Callable:
    """`cloud_round(global_params, server_state, chunks, round) -> (params, state, RoundStats)`, jitted."""

    def edge_round(edge_params, chunks: DeviceChunks, cloud_round, e):
        def train_chunk(carry, chunk: DeviceChunks):
            summary, loss_sum, rejected = carry
            start = jax.tree.map(lambda p: p[jnp.minimum(chunk.edge, num_edges - 1)], edge_params)
            keys = jax.vmap(lambda i: rng.device_key(seed, cloud_round, e, i))(chunk.index)
            results = jax.vmap(algorithm.local_update)(start, DeviceData(chunk.x, chunk.y, chunk.count), keys)
            results, ok = jax.vmap(screen_nonfinite)(results)
            per_edge = algorithm.segment_aggregate(summarize(results), chunk.edge, num_edges)
            summary = jax.tree.map(jnp.add, summary, per_edge)
            loss_sum = loss_sum + jnp.sum(results.loss * results.weight)
            return (summary, loss_sum, rejected + jnp.sum(~ok & (chunk.count > 0))), None

        empty = Summary(jax.tree.map(jnp.zeros_like, edge_params), jnp.zeros(num_edges, jnp.float32))
        (summary, loss_sum, rejected), _ = jax.lax.scan(train_chunk, (empty, jnp.float32(0), jnp.int32(0)), chunks)
        return jax.vmap(apply_summary)(edge_params, summary), summary.weight, loss_sum, rejected

    def cloud_round(global_params, server_state, chunks: DeviceChunks, cloud_round):
        edge_params = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_edges, *p.shape)), global_params)

        def one_edge_round(carry, e):
            params, loss_sum, rejected = carry
            params, weight, loss, bad = edge_round(params, chunks, cloud_round, e)
            return (params, loss_sum + loss, rejected + bad), weight

        initial = (edge_params, jnp.float32(0), jnp.int32(0))
        (edge_params, loss_sum, rejected), weights = jax.lax.scan(one_edge_round, initial, jnp.arange(edge_rounds))
        # An edge's weight is the examples it aggregated, summed over its edge rounds.
        edge_weight = weights.sum(axis=0)
        edge_summaries = edge_summary(edge_params, global_params, edge_weight)
        new_params, new_state = algorithm.server_update(global_params, server_state, algorithm.aggregate(edge_summaries))
        return new_params, new_state, RoundStats(loss_sum / jnp.maximum(weights.sum(), 1.0), rejected)

    return jax.jit(cloud_round)


def tier_bytes(param_bytes: int, devices: int, edges: int, edge_rounds: int) -> dict[str, int]:
    """Payload bytes each tier sends in one cloud round (one full model per message)."""
    return {
        "device_to_edge": devices * edge_rounds * param_bytes,
        "edge_to_device": devices * edge_rounds * param_bytes,
        "edge_to_cloud": edges * param_bytes,
        "cloud_to_edge": edges * param_bytes,
    }


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
        Each chunk is split over all local JAX devices (see `hierfl.parallel`).
      progress: show a rich progress bar with the latest accuracy.
      on_round: called with each round's metrics record after it is written.
    """
    if not isinstance(topology, Topology):
        topology = load_topology(topology)
    if rounds is not None:
        topology = topology.with_federation(cloud_rounds=rounds)
    federation = topology.federation
    plan = make_plan(topology)
    model, params = init_global_model(plan)
    algorithm = build_algorithm(federation.algorithm, model.apply, plan.task, federation)
    cloud_round = make_cloud_round(algorithm, plan.num_edges, federation.edge_rounds, federation.seed)
    evaluate = make_evaluator(model, plan.task, plan.test, plan.num_edges)
    chunks = place_chunks(plan, chunk_size, parallel.device_mesh())
    server_state = algorithm.server_init(params)
    param_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    trained_devices = int(np.count_nonzero(plan.shards.counts))
    bytes_per_round = tier_bytes(param_bytes, trained_devices, plan.num_edges, federation.edge_rounds)

    run_dir = Path(out) if out is not None else None
    writer = _open_run_dir(run_dir, plan, model) if run_dir is not None else None
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    with RoundProgress(federation.cloud_rounds, enabled=progress, title=federation.name) as bar:
        for r in range(1, federation.cloud_rounds + 1):
            round_started = time.perf_counter()
            params, server_state, stats = cloud_round(params, server_state, chunks, jnp.int32(r))
            scores = evaluate(params)
            now = time.perf_counter()
            record = {
                "round": r,
                "loss": float(stats.train_loss),
                "test_loss": scores.loss,
                "accuracy": scores.score,
                "plant_accuracy": dict(zip(topology.plant_names, scores.per_plant)),
                "bytes": bytes_per_round,
                "round_seconds": now - round_started,
                "elapsed_seconds": now - started,
                "devices": trained_devices,
                "rejected_updates": int(stats.rejected_updates),
            }
            history.append(record)
            if writer is not None:
                writer.write(record)
            bar.update(record)
            if on_round is not None:
                on_round(record)
    if writer is not None:
        writer.close()
        checkpoint.save_params(run_dir / "model.npz", params)
    return SimulationResult(params, history, model, plan, run_dir)


def _open_run_dir(run_dir: Path, plan: Plan, model: Model) -> MetricsWriter:
    """Creates the run directory, records what is being run, and opens a fresh metrics file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    topology, federation = plan.topology, plan.topology.federation
    write_run_info(run_dir, {
        "name": federation.name,
        "task": federation.task,
        "model": model.name,
        "algorithm": federation.algorithm,
        "topology": topology.source,
        "seed": federation.seed,
        "num_plants": len(topology.plants),
        "num_devices": topology.num_devices,
        "cloud_rounds": federation.cloud_rounds,
        "edge_rounds": federation.edge_rounds,
        "local_steps": federation.local_steps,
        "batch_size": federation.batch_size,
        "learning_rate": federation.learning_rate,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hierfl_version": __version__,
    })
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return MetricsWriter(run_dir)
