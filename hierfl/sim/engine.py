"""The simulator: the whole hierarchy in one process, HierFAVG semantics, compiled once.

`build_simulation` lays a plan's devices out in chunks (split over the JAX devices, those of
several processes too: `hierfl.sim.processes`)
and compiles the cloud round of `hierfl.sim.round`, a composition of the core's steps that
the runtime's nodes run one per process; `simulate` runs it round after round, evaluates
the global model and writes the run's records.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hierfl.core import links, personal, rng, speeds
from hierfl.core.algorithms import build_algorithm
from hierfl.core.attack import attacker_mask
from hierfl.core.links import LinkCodecs
from hierfl.core.steps import aligned_zeros
from hierfl.data.evaluation import (
    Scores,
    combine_plant_sums,
    make_evaluator,
    make_sums_evaluator,
)
from hierfl.data.loading import load_topology
from hierfl.data.plan import Plan, make_plan, without_training_rows
from hierfl.data.tasks.models import Model, Params, build_model
from hierfl.errors import HierflError
from hierfl.kernels import FlatSpec, flat_spec, ravel, unravel
from hierfl.privacy.config import rounds_to_run
from hierfl.runs import checkpoint, records
from hierfl.runs.metrics import MetricsWriter, write_census, write_run_info
from hierfl.runs.progress import RoundProgress
from hierfl.sim import host_memory, parallel, processes
from hierfl.sim.buffered import BufferedSchedule
from hierfl.sim.round import (
    DeviceChunks,
    Residuals,
    RoundOutcome,
    RoundStats,
    RoundSteps,
    TrainState,
    TreeShape,
    Variates,
    make_cloud_round,
    make_plant_round,
)
from hierfl.topology import Topology, TopologyError

DEFAULT_CHUNK_SIZE = 512


@dataclasses.dataclass
class SimulationResult:
    """The trained global model, the metrics of every cloud round, and where they were written.

    `plan` is the plan the devices trained on (through the model's front end, if it has one:
    `training_plan`), without its training rows unless the aggregation was buffered
    (`hierfl.data.plan.without_training_rows`: the simulator's chunks held them)."""

    params: Params
    history: list[dict[str, Any]]
    model: Model
    plan: Plan
    run_dir: Path | None


def chunk_shape(num_devices: int, chunk_size: int, multiple: int = 1) -> tuple[int, int]:
    """(chunks, devices per chunk): the device axis in equal chunks of about `chunk_size`.

    The number of chunks is the fewest that respects `chunk_size`; chunks are then as even
    as possible and rounded up to a `multiple` (the number of shards), so little padding
    is trained.
    """
    num_chunks = -(-num_devices // chunk_size)
    chunk = -(-num_devices // num_chunks)
    return num_chunks, -(-chunk // multiple) * multiple


def place_chunks(plan: Plan, chunk_size: int, mesh: Mesh | None) -> DeviceChunks:
    """The plan's devices grouped `[chunks, chunk, ...]` (the last chunk padded), each chunk
    split across the mesh's devices.

    Each mesh device's share is laid out once, straight from the plan's rows, in an aligned
    host buffer that the CPU client adopts without copying (`parallel.assemble`): the
    training data is held twice while this runs (the plan's and the simulator's), then
    once where the caller drops the plan's rows (`simulate`: `rows_held_once`).
    Across processes each lays out only its own devices' shares.
    """
    shards, num_devices = plan.shards, plan.shards.num_devices
    num_chunks, chunk = chunk_shape(num_devices, chunk_size, parallel.shard_count(mesh))
    padded = num_chunks * chunk

    def group(a: np.ndarray, fill: int = 0) -> jax.Array:
        return parallel.assemble(split_chunks(a, num_chunks, chunk, fill, mesh), mesh, axis=1)

    return DeviceChunks(
        x=group(shards.x),
        y=group(shards.y),
        count=group(shards.counts),
        steps=group(np.asarray(plan.topology.device_steps, np.int32)),
        edge=group(plan.device_edge, fill=plan.num_edges),
        index=group(np.arange(padded, dtype=np.int32)),
    )


def split_chunks(
    rows: np.ndarray, num_chunks: int, chunk: int, fill, mesh: Mesh | None
) -> list[np.ndarray]:
    """The share `[num_chunks, chunk / shards, ...]` of `rows` grouped in chunks of each
    of this process's mesh devices (`parallel.own_shards`: every one in one process), rows
    past the end set to `fill`; 64-byte aligned. Other processes' shares are not built."""
    part = chunk // parallel.shard_count(mesh)
    pieces = []
    for s in parallel.own_shards(mesh):
        piece = aligned_zeros((num_chunks, part, *rows.shape[1:]), rows.dtype)
        for c in range(num_chunks):
            taken = rows[c * chunk + s * part : c * chunk + (s + 1) * part]
            piece[c, : len(taken)] = taken
            piece[c, len(taken) :] = fill
        pieces.append(piece)
    return pieces


@dataclasses.dataclass(frozen=True)
class Simulation:
    """The compiled simulator for one plan: its model, the placed devices, the round, the start state.

    `cloud_round(state, chunks, round)` runs one cloud round; `bytes_per_round` is what
    each tier sends in one (see `hierfl.core.links.tier_bytes`); `cycle_seconds` each
    plant's simulated seconds per cycle.
    """

    model: Model
    spec: FlatSpec
    codecs: LinkCodecs
    chunks: DeviceChunks
    initial: TrainState
    cloud_round: Callable[[TrainState, DeviceChunks, jax.Array], tuple[TrainState, RoundStats]]
    bytes_per_round: dict[str, int]
    trained_devices: int
    personal_mask: np.ndarray | None = None
    round_steps: RoundSteps | None = None
    algorithm: Any = None
    model_bytes: int = 0
    cycle_seconds: np.ndarray | None = None
    """`[E]` simulated seconds of each plant's cycle (`hierfl.core.speeds`), None if no plant
    declares a speed."""
    num_edges: int = 0
    plant_round: (
        Callable[[TrainState, DeviceChunks, jax.Array], tuple[TrainState, RoundStats]] | None
    ) = None
    plan: Plan | None = None
    """The plan the devices train on: the given one, its examples through the model's
    front end (`training_plan`)."""

    @property
    def plant_mask(self) -> np.ndarray | None:
        """`[P]`: where a plant's model is its own (`state.personal`'s row) rather than the
        global model's: the per-plant layers, every parameter when fine-tuning; None
        without personalization."""
        if self.plant_round is not None:
            return np.ones(self.spec.size, bool)
        return self.personal_mask

    def plant_params(self, state: TrainState) -> list[Params]:
        """Each plant's personalized model after `state`'s round (`hierfl.core.personal.merge`)."""
        global_flat = ravel(self.spec, parallel.local_copy(state.params))
        return [
            unravel(self.spec, personal.merge(global_flat, row, self.plant_mask))
            for row in parallel.local_copy(state.personal)
        ]

    def start_fine_tuning(self, state: TrainState) -> TrainState:
        """`state` with every plant's model set to the global model (fine-tuning's start)."""
        global_flat = ravel(self.spec, state.params)
        return state._replace(personal=jnp.tile(global_flat[None], (self.num_edges, 1)))


def build_simulation(plan: Plan, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Simulation:
    """Builds the model, algorithm, codecs and jitted cloud round, and places the devices."""
    topology = plan.topology
    federation = topology.federation
    model, params = init_global_model(plan)
    plan = training_plan(plan, model)
    algorithm = build_algorithm(model.apply_features, plan.task, topology, plan.shards.counts)
    spec = flat_spec(params)
    codecs = links.build_link_codecs(topology.compression, spec.size)
    mesh = parallel.device_mesh()
    chunks = place_chunks(plan, chunk_size, mesh)
    variate_size = spec.size if algorithm.control_variates else 0
    plant_models = None
    if topology.personalization.keeps_layers:  # every plant starts from the initial model
        plant_models = jnp.tile(ravel(spec, params)[None], (plan.num_edges, 1))
    params, server_state, clip_norm, plant_models = parallel.put_replicated(
        (
            params,
            algorithm.server_init(params),
            jnp.float32(topology.privacy.clip_norm),
            plant_models,
        ),
        mesh,
    )
    initial = TrainState(
        params,
        server_state,
        initial_residuals(codecs, chunks, plan.num_edges, mesh),
        initial_variates(variate_size, chunks, mesh),
        clip_norm,
        plant_models,
    )
    model_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    trained_devices = int(np.count_nonzero(plan.shards.counts))
    round_steps = RoundSteps.of(topology, algorithm, spec, codecs, attacker_mask(topology))
    bytes_per_round = links.tier_bytes(
        codecs,
        model_bytes,
        trained_devices,
        plan.num_edges,
        federation.edge_rounds,
        variates=algorithm.control_variates,
    )
    tree = tree_shape(plan)
    adapted = personal.fine_tune_mask(topology, spec)
    plant_round = None
    if adapted is not None:
        frozen = personal.frozen_apply(model.apply_features, spec, adapted)
        tuning = build_algorithm(frozen, plan.task, topology, plan.shards.counts)
        tune_steps = RoundSteps.of(topology, tuning, spec, codecs, attacker_mask(topology))
        plant_round = make_plant_round(tune_steps, tree, adapted, mesh)
    return Simulation(
        model=model,
        spec=spec,
        codecs=codecs,
        chunks=chunks,
        initial=initial,
        cloud_round=make_cloud_round(round_steps, spec, tree, mesh),
        bytes_per_round=bytes_per_round,
        trained_devices=trained_devices,
        personal_mask=round_steps.personal_mask,
        round_steps=round_steps,
        algorithm=algorithm,
        model_bytes=model_bytes,
        cycle_seconds=speeds.topology_cycle_seconds(
            topology, codecs, model_bytes, algorithm.control_variates
        ),
        num_edges=plan.num_edges,
        plant_round=plant_round,
        plan=plan,
    )


def rows_held_once(sim: Simulation) -> Simulation:
    """`sim` without its plan's training rows, which its chunks hold now; as it is under
    `[buffered_aggregation]`, whose schedule lays the rows out again from the plan."""
    if sim.plan.topology.buffered is not None:
        return sim
    return dataclasses.replace(sim, plan=without_training_rows(sim.plan))


def training_plan(plan: Plan, model: Model) -> Plan:
    """`plan` with its devices' examples through the model's parameter-free front end
    (`Model.features`, computed once here rather than at every local step); the test set
    stays as it is (evaluation applies the whole model). `plan` itself if the model has none."""
    if model.front_end is None:
        return plan
    shards = plan.shards
    x = model.features(shards.x.reshape(-1, *shards.x.shape[2:]))
    x = x.reshape(*shards.x.shape[:2], *x.shape[1:])
    return dataclasses.replace(plan, shards=dataclasses.replace(shards, x=x))


def tree_shape(plan: Plan) -> TreeShape:
    """The plan's edges, edge rounds, and each edge's devices and examples."""
    edges = np.arange(plan.num_edges)
    device_edge = np.asarray(plan.device_edge)
    counts = np.asarray(plan.shards.counts)
    return TreeShape(
        num_edges=plan.num_edges,
        edge_rounds=plan.topology.federation.edge_rounds,
        devices=np.array([np.sum(device_edge == e) for e in edges], np.float32),
        examples=np.array([counts[device_edge == e].sum() for e in edges], np.float32),
    )


def initial_residuals(
    codecs: LinkCodecs, chunks: DeviceChunks, num_edges: int, mesh: Mesh | None
) -> Residuals:
    """Zero memories for every device (sharded like the chunks, unless empty) and every edge,
    placed where the cloud round leaves them."""
    device = zero_memory(chunks.count.shape, codecs.device_to_edge.residual_size, mesh)
    edge = links.initial_residuals(codecs.edge_to_cloud, (num_edges,))
    return Residuals(device, parallel.put_replicated(edge, mesh))


def initial_variates(size: int, chunks: DeviceChunks, mesh: Mesh | None) -> Variates:
    """Zero control variates of `size` for every device (sharded like the chunks) and the cloud."""
    cloud = parallel.put_replicated(jnp.zeros((size,), jnp.float32), mesh)
    return Variates(zero_memory(chunks.count.shape, size, mesh), cloud)


def zero_memory(leading: tuple[int, int], size: int, mesh: Mesh | None) -> jax.Array:
    """A zero device memory `[chunks, chunk, size]` split over the mesh like the chunks,
    each process making only its own devices' shares; an empty one (size = 0) whole on
    every device, as `round.keep_sharded` leaves it."""
    if mesh is None or size == 0:
        return parallel.put_replicated(jnp.zeros((*leading, size), jnp.float32), mesh)
    num_chunks, chunk = leading
    share = (num_chunks, chunk // mesh.size, size)
    pieces = [aligned_zeros(share, np.float32) for _ in parallel.own_shards(mesh)]
    return parallel.assemble(pieces, mesh, axis=1)


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
      out: run directory for run.json, metrics.jsonl and model.npz, and with per-plant layers
        each plant's personalized model-<plant>.npz (nothing written if None). In a
        multi-process simulation (`hierfl.sim.processes`) only process 0 writes it; every
        process returns the same result, with `run_dir` None but on process 0.
      chunk_size: devices trained at once; lower it to bound memory with many devices.
        Each chunk is split over all JAX devices (see `hierfl.sim.parallel`).
      progress: show a rich progress bar with the latest score (the task's metric); on
        process 0 only across processes.
      on_round: called with each round's metrics record after it is written.
    """
    host_memory.release_freed_memory()  # before JAX's threads start, where they have not
    if not isinstance(topology, Topology):
        topology = load_topology(topology)
    if rounds is not None:
        topology = topology.with_federation(cloud_rounds=rounds)
    federation = topology.federation
    if topology.buffered is not None and jax.process_count() > 1:
        raise HierflError(
            f"{topology.source}: [buffered_aggregation] is simulated in one process (each "
            f"plant's cycle on one JAX device), not across the {jax.process_count()} "
            "processes of this run; simulate it without --num-processes"
        )
    processes.check_same_run(f"{dataclasses.replace(topology, source='')!r} {chunk_size}")
    writes = processes.writes_records()
    plan = make_plan(topology)
    sim = rows_held_once(build_simulation(plan, chunk_size))
    plan = sim.plan  # the raw training rows go with the caller's plan
    model, state = sim.model, sim.initial
    evaluate = make_evaluator(model, plan.task, plan.test, plan.num_edges)
    plant_sums = make_sums_evaluator(model, plan.task, plan.test, plan.num_edges)

    def evaluate_personal(state: TrainState, scores: Scores) -> Scores | None:
        """Each plant's test examples scored by its own personalized model (before
        fine-tuning starts, the global model is every plant's: `scores`)."""
        if sim.plant_mask is None:
            return None
        if state.personal is None:
            return scores
        models = sim.plant_params(state)
        return combine_plant_sums(plan.task, [plant_sums(m)[p] for p, m in enumerate(models)])

    budget = rounds_to_run(topology, federation.cloud_rounds)
    federated_rounds = topology.personalization.federated_rounds(federation.cloud_rounds)
    if federated_rounds < 1:
        raise TopologyError(
            [
                f"personalization.rounds: {topology.personalization.rounds} fine-tuning rounds "
                f"leave none of the {federation.cloud_rounds} cloud rounds to run"
            ],
            topology.source,
        )
    run_dir = Path(out) if out is not None and writes else None
    writer = None
    if run_dir is not None:
        info = records.run_info(topology, model.name, plan.task.metric, budget)
        if plan.rows_dropped:
            info["rows_dropped"] = dict(plan.rows_dropped)
        writer = _open_run_dir(run_dir, info)
        write_census(run_dir, plan.census.describe())
    history: list[dict[str, Any]] = []
    outcomes = (
        buffered_rounds(sim, plan, chunk_size, budget)
        if topology.buffered is not None
        else sync_rounds(sim, budget, federated_rounds)
    )
    started = round_started = time.perf_counter()
    with RoundProgress(
        budget, enabled=progress and writes, title=federation.name, metric=plan.task.metric
    ) as bar:
        for outcome in outcomes:
            state = outcome.state
            scores = evaluate(parallel.local_copy(state.params))
            now = time.perf_counter()
            record = records.round_record(
                topology,
                plan.task,
                round=outcome.round,
                loss=outcome.loss,
                scores=scores,
                bytes=outcome.bytes,
                round_seconds=now - round_started,
                elapsed_seconds=now - started,
                devices=outcome.devices,
                clip_norm=float(state.clip_norm),
                rejected_updates=outcome.rejected,
                personal=evaluate_personal(state, scores),
                **outcome.fields,
            )
            history.append(record)
            if writer is not None:
                writer.write(record)
            bar.update(record)
            if on_round is not None:
                on_round(record)
            round_started = time.perf_counter()
    if writer is not None:
        writer.close()
        checkpoint.save_params(run_dir / "model.npz", parallel.local_copy(state.params))
        if sim.plant_mask is not None:
            for name, params in zip(topology.plant_names, sim.plant_params(state)):
                checkpoint.save_params(run_dir / records.plant_model_file(name), params)
    return SimulationResult(parallel.local_copy(state.params), history, model, plan, run_dir)


def sync_rounds(sim: Simulation, rounds: int, federated_rounds: int) -> Iterator[RoundOutcome]:
    """Synchronous cloud rounds 1..rounds (HierFAVG): every plant, every round; the rounds
    after `federated_rounds` fine-tune (each plant trains its own model alone, no cloud step)."""
    state, clock = sim.initial, SimulatedClock(sim.cycle_seconds)
    for r in range(1, rounds + 1):
        federated = r <= federated_rounds
        if r == federated_rounds + 1:
            state = sim.start_fine_tuning(state)
        run_round = sim.cloud_round if federated else sim.plant_round
        state, stats = run_round(state, sim.chunks, jnp.int32(r))
        yield RoundOutcome(
            r,
            state,
            float(stats.train_loss),
            int(stats.rejected_updates),
            sim.bytes_per_round if federated else plant_round_bytes(sim.bytes_per_round),
            sim.trained_devices,
            clock.sync_round(),
        )


def buffered_rounds(
    sim: Simulation, plan: Plan, chunk_size: int, applies: int
) -> Iterator[RoundOutcome]:
    """`[buffered_aggregation]`: the buffer applied `applies` times (`hierfl.sim.buffered`)."""
    schedule = BufferedSchedule(
        plan.topology,
        plan,
        sim.round_steps,
        tree_shape(plan),
        sim.spec,
        sim.algorithm,
        sim.codecs,
        sim.model_bytes,
        sim.cycle_seconds,
        chunk_size,
    )
    yield from schedule.run(sim.initial, applies)


class SimulatedClock:
    """The simulated seconds since the start (`hierfl.core.speeds`), as a round record's
    `sim_seconds` field; no field when no plant declares a speed."""

    def __init__(self, cycle_seconds: np.ndarray | None):
        self.cycle_seconds, self.seconds = cycle_seconds, 0.0

    def sync_round(self) -> dict[str, float]:
        """After one synchronous cloud round: it waited for the slowest plant."""
        if self.cycle_seconds is None:
            return {}
        self.seconds += speeds.sync_round_seconds(self.cycle_seconds)
        return {"sim_seconds": self.seconds}


def plant_round_bytes(bytes_per_round: dict[str, int]) -> dict[str, int]:
    """A fine-tuning round's traffic: as a cloud round's, but no summary goes up (the plant's
    model stays at its edge). The global model still goes down: the round starts with it,
    and each edge scores it."""
    return {tier: 0 if tier == "edge_to_cloud" else sent for tier, sent in bytes_per_round.items()}


def _open_run_dir(run_dir: Path, info: dict[str, Any]) -> MetricsWriter:
    """Creates the run directory, writes `info` to `run.json`, and opens a fresh metrics file."""
    write_run_info(run_dir, info)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return MetricsWriter(run_dir)
