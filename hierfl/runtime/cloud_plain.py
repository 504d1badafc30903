"""The cloud holding the global model: decoded summaries into a stack, one jitted server step.

Each round the edges' summaries are decoded into rows of a `[2E, P]` stack (rows E..2E-1
hold stale summaries, an edge's offline progress) and `steps.make_cloud_step` applies the
aggregation rule and the server optimizer (and, with `dp = "cloud"`, noises the sum). The
clip norm moves by `steps.next_clip_norm` (adaptive clipping, from the edges' noised counts)
and SCAFFOLD's variate `c` by `steps.next_cloud_variate`; both go out with every model and
are checkpointed (orbax) with it. The cloud holds no data: each round's record waits for
the edges' evaluations of the model it made (`hierfl.runtime.evaluations`), and, with
`publish`, that model then goes out as a versioned inference artifact (`RoundPublisher`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.core import personal, steps
from hierfl.core.steps import aligned_zeros
from hierfl.data.census import Census
from hierfl.data.plan import make_plan
from hierfl.kernels import ravel
from hierfl.privacy.config import DpConfig
from hierfl.runs import checkpoint
from hierfl.runs.metrics import METRICS_FILE
from hierfl.runs.records import reconcile_metrics, unscored
from hierfl.runtime import protocol
from hierfl.runtime.checkpoints import CloudCheckpoints
from hierfl.runtime.cloud_modes import CLOUD, Closing, CloudShell, Resumed
from hierfl.runtime.evaluations import PendingScores, evaluation_layout
from hierfl.runtime.node import NodeModel
from hierfl.runtime.publishing import RoundPublisher
from hierfl.topology import Topology


class PlainAggregation:
    """The cloud's global model, server state, clip norm and variate, and the step that moves them."""

    summary_kind = protocol.SUMMARY

    def __init__(
        self,
        topology: Topology,
        net: NodeModel,
        run_dir: Path,
        shell: CloudShell,
        publish: str | None,
    ):
        self.topology, self.net, self.run_dir, self.shell = topology, net, run_dir, shell
        self.dp = DpConfig.of(topology)
        edges = len(topology.plants)
        self.step = jax.jit(
            steps.make_cloud_step(
                net.algorithm,
                net.spec,
                topology.aggregation.cloud,
                self.dp,
                topology.federation.seed,
                edges,
                personal_mask=personal.topology_mask(topology, net.spec),
            )
        )
        self.ravel = jax.jit(lambda params: ravel(net.spec, params))
        self.decode = jax.jit(steps.make_decode(net.codecs.edge_to_cloud))
        self.layouts = {
            protocol.SUMMARY: (net.codecs.edge_to_cloud.name, net.edge_layout),
            protocol.EVALUATION: (
                protocol.SUMS,
                evaluation_layout(net.task),
            ),
        }
        self.scores = PendingScores(
            net.task, topology.plant_names, self._write, topology.personalization.enabled
        )
        self.models: dict[int, Any] = {}  # models whose record awaits scores, for the publisher
        self.deltas = aligned_zeros((2 * edges, net.spec.size))
        self.weights = np.zeros(2 * edges, np.float32)
        self.params = net.initial_params
        self.server_state = net.algorithm.server_init(self.params)
        self.clip_norm = np.float32(topology.privacy.clip_norm)
        # SCAFFOLD: the cloud's variate c, this round's variate sums (rows as deltas), the federation's examples.
        self.variate = np.zeros(net.spec.size if net.variates else 0, np.float32)
        self.variate_sums = aligned_zeros((2 * edges, self.variate.size))
        # SCAFFOLD's c moves by the federation's examples: the plan's count, or, for a task
        # whose devices alone read their files, the census's (`use_census`, before round 1).
        variates_of_plan = net.variates and not net.task.reads_files
        self.examples = np.float32(
            make_plan(topology).shards.counts.sum() if variates_of_plan else 0
        )
        self.checkpoints = CloudCheckpoints(run_dir / "checkpoints" / "cloud")
        self.publisher = RoundPublisher(publish, net, topology) if publish else None
        self.restored_record: dict[str, Any] = {}  # the checkpoint's record, once restored
        # `[personalization] method = "fine-tune"`: the rounds after these run at the edges alone.
        self.federated_rounds = topology.personalization.federated_rounds(shell.rounds)

    def warm_up(self) -> None:
        self.ravel(self.params)
        self.step(
            self.params, self.server_state, self.deltas, self.weights, jnp.int32(1), self.clip_norm
        )

    def restore(self) -> Resumed | None:
        state = self.checkpoints.latest(self.params, self.server_state, self.variate)
        if state is None:
            self.shell.log.info(
                "no checkpoint in %s; starting at round 1", self.checkpoints.directory
            )
            return None
        self.params = jax.tree.map(jnp.asarray, state.params)
        self.server_state = state.server_state
        self.variate = np.asarray(state.variate, np.float32)
        self.clip_norm = np.float32(state.record.get("clip_norm", self.clip_norm))
        self.restored_record = state.record
        # The checkpoint's record has no scores: they come from the edges' evaluations of
        # its model, which the next round's model message asks for, unless the file has them.
        if not reconcile_metrics(self.run_dir / METRICS_FILE, state.round, None):
            self.scores.add(state.round, state.record)
            self.models[state.round] = self.params
        self.shell.log.info("resumed from the checkpoint of cloud round %d", state.round)
        return Resumed(state.round + 1, float(state.record.get("elapsed_seconds", 0.0)))

    def open_round(self, round: int) -> list:
        self.weights[:] = 0
        self.variate_sums[:] = 0
        return self._model_frames(round, **({"fine_tune": True} if self._tunes(round) else {}))

    def _tunes(self, round: int) -> bool:
        """Whether cloud round `round` is a fine-tuning round: each edge trains its plant's
        model, sends `tuned` instead of a summary, and the global model stays as it is."""
        return round > self.federated_rounds

    def _model_frames(self, round: int, **fields: Any) -> list:
        """A `model` message of the global model, which cloud round `round` starts from."""
        return protocol.encode(
            protocol.MODEL,
            CLOUD,
            round=round,
            model_version=round - 1,
            spec=self.net.spec,
            codec="none",
            arrays=[
                np.asarray(self.ravel(self.params)),
                *([self.variate] if self.net.variates else []),
            ],
            **({"clip_norm": float(self.clip_norm)} if self.dp else {}),
            **fields,
        )

    def take(self, row: int, message: protocol.Message, weight: float) -> None:
        tunes = self._tunes(message.round)
        if (message.kind == protocol.TUNED) != tunes:
            expected = protocol.TUNED if tunes else protocol.SUMMARY
            raise protocol.MessageRejected(
                protocol.UNEXPECTED,
                f"{message.kind} in cloud round {message.round}, which takes {expected} messages",
            )
        if tunes:
            return  # statistics only: the plant's model stays at its edge
        if self.net.codecs.edge_to_cloud.name == "none":
            self.deltas[row] = message.arrays[0]
        else:
            self.deltas[row] = np.asarray(self.decode(self.net.payload(message.arrays)))
        if self.net.variates:
            self.variate_sums[row] = message.arrays[-1]
        self.weights[row] = weight

    def close_round(self, closing: Closing) -> None:
        if closing.enough and not self._tunes(closing.round):
            self.params, self.server_state = self.step(
                self.params,
                self.server_state,
                self.deltas,
                self.weights,
                jnp.int32(closing.round),
                self.clip_norm,
            )
            self.clip_norm = self._next_clip_norm(closing.summaries)
        # The devices have moved their variates, whatever happened to the model.
        self.variate = np.asarray(
            steps.next_cloud_variate(self.variate, self.variate_sums, self.examples)
        )
        record = closing.record(
            unscored(self.net.task, len(self.topology.plants)), float(self.clip_norm)
        )
        # Before the checkpoint: a resume keeps every earlier record.
        self.scores.complete(self.shell.alive_edges(), force_before=closing.round)
        self.checkpoints.save(closing.round, self.params, self.server_state, record, self.variate)
        self.scores.add(closing.round, record)
        if self.publisher is not None:
            self.models[closing.round] = self.params
        self.shell.log.info(
            "cloud round %d: %d/%d edges%s",
            closing.round,
            len(closing.summaries),
            closing.edges,
            " fine-tuned their plants' models (no cloud step)"
            if self._tunes(closing.round)
            else "",
        )

    def _write(self, record: dict[str, Any], version: int, reporters: list[str]) -> None:
        """Round `version`'s record, now scored by the plants in `reporters`."""
        self.shell.write(record)
        if self.publisher is not None:
            metric = self.net.task.metric.name
            metrics = {metric: record[metric]}
            self.publisher.publish(version, self.models.pop(version, self.params), metrics)
        metric = self.net.task.metric.name
        self.shell.log.info(
            "cloud round %d: %s %.4f (evaluated by %s)",
            version,
            metric,
            record[metric],
            ", ".join(reporters) or "no plant",
        )

    def _next_clip_norm(self, summaries: Mapping[str, Mapping[str, Any]]) -> np.float32:
        """The clip norm after this round (`steps.next_clip_norm`: adaptive clipping moves it
        from the edges' noised counts of unclipped updates)."""
        counted = sum(protocol.header_number(h, "unclipped", 0.0) for h in summaries.values())
        edge_rounds, devices = self.topology.federation.edge_rounds, self.topology.num_devices
        return np.float32(
            steps.next_clip_norm(self.dp, self.clip_norm, counted, edge_rounds, devices)
        )

    def use_census(self, found: Census) -> None:
        """The census: the examples SCAFFOLD's variate needs; published models standardize."""
        if self.net.variates and self.net.task.reads_files:
            self.examples = np.float32(found.examples)
        if self.publisher is not None:
            self.publisher.use_census(found)

    def hello(self, edge: str, held: int, round: int, done: bool) -> bool:
        return False

    def evaluation(self, message: protocol.Message, round: int) -> None:
        """An edge's test sums of global model `message.round`."""
        self.scores.take(message, round)
        self.scores.complete(self.shell.alive_edges())

    def finish(self, round: int) -> None:
        """Saves the final model, sends it to the edges to evaluate (`final`: no round
        starts from it) and waits for their scores of it, then the last record is written."""
        checkpoint.save_params(self.run_dir / "model.npz", self.params)
        frames = self._model_frames(round, final=True)
        for edge in sorted(self.shell.alive_edges()):
            self.shell.send(edge, frames)
        alive = self.shell.alive_edges
        self.shell.serve(lambda: self.scores.complete(alive()), self.topology.runtime.edge_deadline)
        self.scores.complete(alive(), force_before=round)
        self.shell.log.info("trained %d cloud rounds; model saved; stopping the edges", round - 1)

    def close(self) -> None:
        self.checkpoints.close()
        if self.publisher is not None:
            self.publisher.close()
