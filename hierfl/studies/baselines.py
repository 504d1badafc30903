"""The references a federation is judged against: each plant alone, all data pooled, flat FedAvg.

A hierarchical federation is worth what it gains over training without it, and costs what
it sends. This module trains the two reference models with the federation's own model,
initialisation, data plan and budget, and compares edge->cloud traffic with flat FedAvg:

* **centralized**: the training data of every plant pooled in one place and one model
  trained with SGD. Not allowed in practice (the data may not leave the plants): the upper
  bound.
* **local-only**: each plant trains its own model on its own devices' data, pooled inside
  the plant. A plant owns its lines and its fast internal network, so a plant going alone
  would pool its data rather than federate its devices; pooling is also the stronger of
  the two, so the federation's gain over it is not inflated, and it makes local-only and
  centralized the same computation on different pools. Each plant's model is evaluated on
  the test data of *all* plants (what a model from one plant is worth at the others); the
  mean over plants summarises local-only.
* **flat FedAvg**: every device reports straight to the cloud after each round of local
  training (`flat_fedavg` gives the topology to pass to `hierfl.simulate`); its
  edge->cloud traffic is every device's update every round.

Same budget
-----------
A baseline computes as many example gradients as the devices it stands for, at the same
batch size and learning rate. In one cloud round every device of the federation takes
``edge_rounds x local_steps`` SGD steps of ``batch_size`` examples, so a pool holding the
data of ``D`` devices gets ``D x edge_rounds x local_steps`` steps of ``batch_size`` per
round, for ``cloud_rounds`` rounds (`Budget`). Centralized training therefore processes as
many examples as the whole federation (as many epochs over the pooled data), and the
local-only models together as many too; their steps are sequential where the devices' run
in parallel. Histories have one record per cloud round, so curves line up by examples
processed. Flat FedAvg gets the same device steps: ``cloud_rounds x edge_rounds`` rounds of
``local_steps`` (`flat_fedavg`).

How a pool trains
-----------------
Steps are taken in segments of ``local_steps`` by the federation's own device update
(FedAvg's ``local_update``: mini-batches walk a fresh random permutation of the pool), and
segment ``s`` of round ``r`` is keyed like device 0 in edge round ``s`` of a federation,
``rng.device_key(seed, r, s, 0)``. So a pool of one device's data trains exactly as that
device does in a one-device federation. One round of a pool is one jitted call, compiled
once for every pool of a plan (pools are padded to the plan's total training examples and
the segment count is an argument). Baselines always train with mini-batch SGD; they are
meant for ``fedavg`` federations.

Scores
------
Records carry the task's metrics under their own names (`hierfl.data.evaluation.metric_fields`):
``accuracy`` and ``plant_accuracy`` for classification, e.g. ``rmse``/``plant_rmse`` and
``mae``/``plant_mae`` for regression. Functions that compare scores take the task's
deciding ``metric`` (accuracy by default), so "reaching a target" means an error at most
the target for a lower-is-better metric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.core import rng
from hierfl.core.algorithms import DeviceData, fedavg
from hierfl.data.evaluation import Scores, make_evaluator, metric_fields
from hierfl.data.plan import Plan
from hierfl.data.scoring import ACCURACY, Metric
from hierfl.data.tasks.models import Model, Params
from hierfl.runs.progress import RoundProgress
from hierfl.sim.engine import init_global_model
from hierfl.topology import Federation, Topology

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Budget:
    """The SGD work a pool of data gets: what its devices would compute in the federation.

    Attributes:
      rounds: cloud rounds (one history record each).
      segments_per_round: segments of ``segment_steps`` per round: devices x edge_rounds.
      segment_steps: SGD steps per segment: the federation's ``local_steps``.
      batch_size: examples per step.
      learning_rate: SGD learning rate, the devices'.
    """

    rounds: int
    segments_per_round: int
    segment_steps: int
    batch_size: int
    learning_rate: float

    @property
    def steps_per_round(self) -> int:
        return self.segments_per_round * self.segment_steps

    @property
    def steps(self) -> int:
        """SGD steps over all rounds."""
        return self.rounds * self.steps_per_round

    @property
    def examples(self) -> int:
        """Examples processed (example gradients computed) over all rounds."""
        return self.steps * self.batch_size


def pool_budget(federation: Federation, num_devices: int) -> Budget:
    """The budget of a pool holding the data of ``num_devices`` devices (see the module docstring)."""
    return Budget(
        rounds=federation.cloud_rounds,
        segments_per_round=num_devices * federation.edge_rounds,
        segment_steps=federation.local_steps,
        batch_size=federation.batch_size,
        learning_rate=federation.learning_rate,
    )


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    """One baseline model: whose data it pooled, its budget, its history and final params.

    ``history`` has one record per cloud round: ``round``, ``steps`` and ``examples_seen``
    (cumulative), ``loss`` (mean training loss of the round's steps), ``test_loss``,
    ``accuracy`` (on the test data of all plants) and ``plant_accuracy`` (plant name ->
    accuracy on that plant's test data), the keys of `hierfl.simulate`'s records where
    they mean the same (a regression task's metrics instead of accuracy: ``rmse``, ...).
    """

    name: str
    plants: tuple[str, ...]
    train_examples: int
    budget: Budget
    history: tuple[Record, ...]
    params: Params

    @property
    def final(self) -> Record:
        return self.history[-1]


class Baselines(NamedTuple):
    """Centralized and one local-only result per plant (in topology order)."""

    centralized: BaselineResult
    local_only: tuple[BaselineResult, ...]


def train_baselines(plan: Plan, *, progress: bool = False) -> Baselines:
    """Trains centralized and every plant's local-only model, compiling once for all.

    ``plan`` is ``hierfl.make_plan(topology)``: the very shards `hierfl.simulate` trains on.
    """
    trainer = _PoolTrainer.build(plan)
    return Baselines(_centralized(trainer, progress), _local_only(trainer, progress))


def train_centralized(plan: Plan, *, progress: bool = False) -> BaselineResult:
    """All plants' training data pooled, one model, the whole federation's budget."""
    return _centralized(_PoolTrainer.build(plan), progress)


def train_local_only(plan: Plan, *, progress: bool = False) -> tuple[BaselineResult, ...]:
    """One model per plant on its own devices' data, each evaluated on all plants' test data."""
    return _local_only(_PoolTrainer.build(plan), progress)


def mean_final_accuracy(results: Sequence[BaselineResult], metric: str = "accuracy") -> float:
    """The mean over models of their final accuracy (or ``metric``) on all plants' test data
    (local-only's summary)."""
    return float(np.mean([result.final[metric] for result in results]))


def pool_shards(plan: Plan, plants: Sequence[int], capacity: int) -> tuple[DeviceData, int]:
    """The training examples of the devices of ``plants``, in device order, padded to ``capacity``.

    Returns ``(DeviceData(x [capacity, ...], y [capacity], count), devices)``: numpy arrays
    whose first ``count`` rows are real, and how many devices contributed.
    """
    shards = plan.shards
    devices = np.flatnonzero(np.isin(plan.device_edge, plants))
    x = np.concatenate([shards.x[d, : shards.counts[d]] for d in devices])
    y = np.concatenate([shards.y[d, : shards.counts[d]] for d in devices])
    count = len(y)
    x = np.concatenate([x, np.zeros((capacity - count, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros((capacity - count, *y.shape[1:]), y.dtype)])
    return DeviceData(x, y, np.int32(count)), len(devices)


def make_pool_round(
    local_update: Callable[[Params, DeviceData, jax.Array], Any], seed: int
) -> Callable:
    """``pool_round(params, pool, round, segments) -> (params, mean loss)``, jitted.

    Runs ``segments`` segments of ``local_update`` in sequence on ``pool``, segment ``s``
    keyed ``rng.device_key(seed, round, s, 0)``; ``segments`` is traced, so pools of any
    number of devices share one compilation.
    """

    def pool_round(params: Params, pool: DeviceData, cloud_round: jax.Array, segments: jax.Array):
        def segment(s, carry):
            params, loss_sum = carry
            result = local_update(params, pool, rng.device_key(seed, cloud_round, s, 0))
            return jax.tree.map(jnp.add, params, result.delta), loss_sum + result.loss

        params, loss_sum = jax.lax.fori_loop(0, segments, segment, (params, jnp.float32(0)))
        return params, loss_sum / jnp.maximum(segments, 1)

    return jax.jit(pool_round)


# --- flat FedAvg vs the hierarchy: edge->cloud bytes at equal accuracy ----------------------


def flat_fedavg(topology: Topology) -> Topology:
    """The topology as flat FedAvg with the same device work, to pass to `hierfl.simulate`.

    ``edge_rounds = 1``: after every ``local_steps`` the devices' updates are averaged over
    the whole federation (with one edge round, the simulator's edge-then-cloud weighted
    mean is exactly FedAvg's mean over all devices), for ``cloud_rounds x edge_rounds``
    rounds, so every device takes as many steps as in the hierarchical run. Every device
    then talks to the cloud directly: see `flat_uplink_bytes`.
    """
    federation = topology.federation
    return topology.with_federation(
        name=f"{federation.name}-flat",
        edge_rounds=1,
        cloud_rounds=federation.cloud_rounds * federation.edge_rounds,
    )


def model_bytes(params: Params) -> int:
    """Payload bytes of one model (or update) message: the sum of the leaves' sizes."""
    return sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(params))


def flat_uplink_bytes(record: Record, message_bytes: int) -> int:
    """Bytes flat FedAvg sends to the cloud in one round: every trained device's update."""
    return int(record["devices"]) * message_bytes


@dataclasses.dataclass(frozen=True)
class UplinkAtAccuracy:
    """Edge->cloud bytes each run sent until its test score first reached ``target``
    (accuracy at least, or an error at most, the target).

    A run that never reached it has ``None`` for its round and bytes (and ``saving`` is None).
    """

    target: float
    hierarchical_round: int | None
    hierarchical_bytes: int | None
    flat_round: int | None
    flat_bytes: int | None

    @property
    def saving(self) -> float | None:
        """How many times more bytes flat FedAvg sent to the cloud than the hierarchy."""
        if self.hierarchical_bytes is None or self.flat_bytes is None:
            return None
        return self.flat_bytes / self.hierarchical_bytes


def uplink_at_equal_accuracy(
    hierarchical: Sequence[Record],
    flat: Sequence[Record],
    message_bytes: int,
    target: float | None = None,
    metric: Metric = ACCURACY,
) -> UplinkAtAccuracy:
    """Compares the edge->cloud bytes of two `hierfl.simulate` histories at one score.

    Args:
      hierarchical: the hierarchical run's records; its per-round ``bytes.edge_to_cloud``
        is what its edges sent.
      flat: the flat FedAvg run's records (from `flat_fedavg`); each round costs
        `flat_uplink_bytes`.
      message_bytes: bytes of one model update (`model_bytes`).
      target: the score both runs are compared at; by default the best score both reach
        (the worse of the two runs' best), so both rounds exist.
      metric: the task's deciding metric (``task.metric``): which record key, which direction.
    """
    name = metric.name
    if target is None:
        best = [
            run[metric.best_index([r[name] for r in run])][name] for run in (hierarchical, flat)
        ]
        target = metric.worst_of(best)
    hier_sent = np.cumsum([int(r["bytes"]["edge_to_cloud"]) for r in hierarchical])
    flat_sent = np.cumsum([flat_uplink_bytes(r, message_bytes) for r in flat])
    hier_at = _first_reaching(hierarchical, target, metric)
    flat_at = _first_reaching(flat, target, metric)
    return UplinkAtAccuracy(
        target=float(target),
        hierarchical_round=None if hier_at is None else int(hierarchical[hier_at]["round"]),
        hierarchical_bytes=None if hier_at is None else int(hier_sent[hier_at]),
        flat_round=None if flat_at is None else int(flat[flat_at]["round"]),
        flat_bytes=None if flat_at is None else int(flat_sent[flat_at]),
    )


def _first_reaching(history: Sequence[Record], target: float, metric: Metric) -> int | None:
    """Index of the first record whose score reaches target, or None."""
    for i, record in enumerate(history):
        if metric.reaches(record[metric.name], target):
            return i
    return None


# --- training a pool ---------------------------------------------------------------------


class _PoolTrainer(NamedTuple):
    """What every baseline of one plan shares: the model, its start, one compiled round, the evaluator."""

    plan: Plan
    model: Model
    init_params: Params
    pool_round: Callable
    evaluate: Callable[[Params], Scores]
    capacity: int

    @classmethod
    def build(cls, plan: Plan) -> _PoolTrainer:
        federation = plan.topology.federation
        model, params = init_global_model(plan)
        sgd = fedavg(
            model.apply,
            plan.task.example_loss,
            local_steps=federation.local_steps,
            batch_size=federation.batch_size,
            learning_rate=federation.learning_rate,
        )
        evaluate = make_evaluator(model, plan.task, plan.test, plan.num_edges)
        capacity = int(plan.shards.counts.sum())
        return cls(
            plan,
            model,
            params,
            make_pool_round(sgd.local_update, federation.seed),
            evaluate,
            capacity,
        )


def _centralized(trainer: _PoolTrainer, progress: bool) -> BaselineResult:
    return _train_pool(trainer, "centralized", range(trainer.plan.num_edges), progress)


def _local_only(trainer: _PoolTrainer, progress: bool) -> tuple[BaselineResult, ...]:
    names = trainer.plan.topology.plant_names
    return tuple(
        _train_pool(trainer, f"local-only {name}", [p], progress) for p, name in enumerate(names)
    )


def _train_pool(
    trainer: _PoolTrainer, name: str, plants: Sequence[int], progress: bool
) -> BaselineResult:
    """Trains one model on the pooled data of ``plants`` with their devices' budget."""
    plan = trainer.plan
    topology = plan.topology
    plants = list(plants)
    pool, devices = pool_shards(plan, plants, trainer.capacity)
    budget = pool_budget(topology.federation, devices)
    pool = jax.device_put(pool)
    segments = jnp.int32(budget.segments_per_round)
    params = trainer.init_params
    history: list[Record] = []
    with RoundProgress(budget.rounds, enabled=progress, title=name, metric=plan.task.metric) as bar:
        for r in range(1, budget.rounds + 1):
            params, loss = trainer.pool_round(params, pool, jnp.int32(r), segments)
            scores = trainer.evaluate(params)
            record = {
                "round": r,
                "steps": r * budget.steps_per_round,
                "examples_seen": r * budget.steps_per_round * budget.batch_size,
                "loss": float(loss),
                "test_loss": scores.loss,
                **metric_fields(plan.task, scores, topology.plant_names),
            }
            history.append(record)
            bar.update(record)
    return BaselineResult(
        name=name,
        plants=tuple(topology.plant_names[p] for p in plants),
        train_examples=int(pool.count),
        budget=budget,
        history=tuple(history),
        params=params,
    )
