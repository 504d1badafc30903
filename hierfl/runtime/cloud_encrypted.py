"""The cloud under homomorphic encryption: it adds ciphertexts and holds no plaintext model.

It opens each round with the encrypted aggregate of the previous one, adds the edges'
encrypted summaries under plaintext weights (`encrypted.CloudCipher`), checkpoints the round
and its aggregate, and writes each round's record once the edges have reported their
evaluations of the model it made (pending until then). An edge that restarts behind gets the
aggregates it misses first (catch-up). The final model is written by the edges. The scheme
and its protocol are `hierfl.runtime.encrypted`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hierfl.data.census import Census
from hierfl.errors import HierflError, HomomorphicError
from hierfl.runs.metrics import METRICS_FILE
from hierfl.runs.records import reconcile_metrics, unscored
from hierfl.runtime import encrypted, protocol
from hierfl.runtime.cloud_modes import Closing, CloudShell, Resumed
from hierfl.runtime.evaluations import PendingScores, evaluation_layout
from hierfl.runtime.node import NodeModel
from hierfl.topology import Topology


class EncryptedAggregation:
    """The encrypted aggregate of each round, the newest ones for catch-up, and the records awaiting scores."""

    summary_kind = protocol.HE_SUMMARY

    def __init__(
        self,
        topology: Topology,
        net: NodeModel,
        run_dir: Path,
        shell: CloudShell,
        he_context: Path | None,
        publish: str | None,
    ):
        if he_context is None:
            raise HomomorphicError(
                "privacy.homomorphic: the cloud needs the plants' public CKKS context: --he-context ckks-public.bin (`hierfl keys ckks`)"
            )
        if publish:
            raise HierflError(
                "--publish: with privacy.homomorphic the cloud holds no plaintext model to publish; the plants hold it"
            )
        self.topology, self.net, self.run_dir, self.shell = topology, net, run_dir, shell
        parameters = encrypted.he.CkksParameters.of(topology.privacy)
        problem = encrypted.layout_problem(topology, net.spec, topology.runtime.max_message_bytes)
        if problem:
            raise HomomorphicError(problem)
        self.cipher = encrypted.CloudCipher(
            encrypted.load_cloud_context(he_context, topology),
            net.spec,
            parameters,
            topology.federation.server_learning_rate,
        )
        self.layouts = {
            protocol.HE_SUMMARY: (encrypted.CODEC, encrypted.cipher_layout(net.spec, parameters)),
            protocol.EVALUATION: (
                protocol.SUMS,
                evaluation_layout(net.task),
            ),
        }
        self.labels = encrypted.row_labels(topology.plant_names)
        self.weights = np.zeros(len(self.labels), np.float32)
        self.chunks: dict[int, tuple[bytes, ...]] = {}
        self.bytes_up = 0
        self.frames: list = []
        self.aggregate = encrypted.Aggregate(0)
        # The newest aggregates (CATCH_UP_BYTES), by version, for edges that fell behind.
        self.history: dict[int, encrypted.Aggregate] = {}
        self.scores = PendingScores(net.task, topology.plant_names, self._write)
        self.checkpoints = encrypted.EncryptedCheckpoints(run_dir / "checkpoints" / "cloud-he")
        shell.log.info(
            "homomorphic encryption: CKKS key %s (public context only); the edges hold the global model",
            self.cipher.key_id,
        )

    def warm_up(self) -> None:
        pass  # nothing to compile: the cloud only adds ciphertexts

    def restore(self) -> Resumed | None:
        """Round and encrypted aggregate from the last checkpoint; its record is pending unless `metrics.jsonl` has it."""
        state = self.checkpoints.latest()
        if state is None:
            self.shell.log.info(
                "no checkpoint in %s; starting at round 1", self.checkpoints.directory
            )
            return None
        self.aggregate = state.aggregate
        self.history = {state.aggregate.version: state.aggregate}
        if not reconcile_metrics(self.run_dir / METRICS_FILE, state.round, None):
            self.scores.add(state.round, state.record)
        self.shell.log.info(
            "resumed from the checkpoint of cloud round %d (its encrypted aggregate)", state.round
        )
        return Resumed(state.round + 1, float(state.record.get("elapsed_seconds", 0.0)))

    def open_round(self, round: int) -> list:
        self.weights[:] = 0
        self.chunks, self.bytes_up = {}, 0
        self.frames = self.cipher.aggregate_frames(self.aggregate, round)
        return self.frames

    def take(self, row: int, message: protocol.Message, weight: float) -> None:
        self.chunks[row] = self.cipher.summary_chunks(message)
        self.bytes_up += sum(len(c) for c in self.chunks[row])
        self.weights[row] = weight

    def close_round(self, closing: Closing) -> None:
        """A_round from the encrypted summaries; the round's record waits for the edges' evaluations of it."""
        down_bytes = sum(len(protocol.frame_bytes(frame)) for frame in self.frames[1:])
        aggregate = encrypted.Aggregate(closing.round)
        if closing.enough:
            aggregate = self._add(closing.round)
        self.aggregate = aggregate
        self.history[aggregate.version] = aggregate
        kept = encrypted.newest_within(self.history, encrypted.CATCH_UP_BYTES)
        self.history = {version: self.history[version] for version in kept}
        record = closing.record(
            unscored(self.net.task, len(self.topology.plants)),
            float(np.float32(self.topology.privacy.clip_norm)),  # as the simulator records it
        )
        record["bytes"]["edge_to_cloud"] = self.bytes_up
        record["bytes"]["cloud_to_edge"] = closing.models_sent * down_bytes
        # Before the checkpoint: a resume keeps every earlier record.
        self._complete_records(force_before=closing.round)
        self.checkpoints.save(closing.round, aggregate, record)
        self.scores.add(closing.round, record)
        self.shell.log.info(
            "cloud round %d: %d/%d edges, encrypted aggregate %d bytes (coefficients %s)",
            closing.round,
            len(closing.summaries),
            closing.edges,
            aggregate.nbytes,
            {k: round(v, 4) for k, v in aggregate.coefficients.items()},
        )

    def _add(self, version: int) -> encrypted.Aggregate:
        """The weighted sum of this round's encrypted summaries (no change if they cannot be added)."""
        summaries = {self.labels[row]: chunks for row, chunks in self.chunks.items()}
        weights = {self.labels[row]: float(self.weights[row]) for row in self.chunks}
        try:
            return self.cipher.aggregate(version, summaries, weights)
        except HomomorphicError as error:  # summaries are checked on receipt; this is a last guard
            self.shell.log.error(
                "cloud round %d: cannot add the encrypted summaries (%s); model unchanged",
                version,
                error,
            )
            return encrypted.Aggregate(version)

    def use_census(self, found: Census) -> None:
        pass  # the edges standardize their data; the cloud holds no model to publish

    def hello(self, edge: str, held: int, round: int, done: bool) -> bool:
        """Sends an edge holding global model `held` the aggregates after it, up to the one the open round carries.

        Only as far back as `history` reaches (`encrypted.CATCH_UP_BYTES`; after a resume,
        the checkpointed aggregate alone); an edge further behind gets nothing here and
        logs the gap when the round's aggregate arrives (`encrypted.catch_up`). The edge
        needs the open round's aggregate again in any case.
        """
        missing = range(held + 1, self.aggregate.version + (1 if done else 0))
        if not missing or any(version not in self.history for version in missing):
            if missing:
                self.shell.log.warning(
                    "edge %s holds global model version %d; the aggregates since are not all kept here (%s)",
                    edge,
                    held,
                    ", ".join(map(str, sorted(self.history))) or "none",
                )
            return True
        for version in missing:
            self.shell.send(
                edge, self.cipher.aggregate_frames(self.history[version], round, catch_up=True)
            )
        self.shell.log.info(
            "edge %s holds global model version %d: sent the aggregates of versions %d..%d",
            edge,
            held,
            missing[0],
            missing[-1],
        )
        return True

    def evaluation(self, message: protocol.Message, round: int) -> None:
        """An edge's test sums of global model `message.round` (it re-sends them when it gets an aggregate twice)."""
        self.scores.take(message, round)
        self._complete_records()

    def _complete_records(self, force_before: int = 0) -> bool:
        """Writes, in round order, the pending records every live edge has evaluated (all before
        `force_before`, with what came); whether none is left pending."""
        return self.scores.complete(self.shell.alive_edges(), force_before)

    def _write(self, record: dict[str, Any], version: int, reporters: list[str]) -> None:
        self.shell.write(record)
        metric = self.net.task.metric.name
        self.shell.log.info(
            "cloud round %d: %s %.4f (evaluated by %s)",
            version,
            metric,
            record[metric],
            ", ".join(reporters) or "no plant",
        )

    def finish(self, round: int) -> None:
        """Sends the last aggregate (`final`): the edges apply it, evaluate, and write the final model; waits for their scores."""
        frames = self.cipher.aggregate_frames(self.aggregate, round, final=True)
        for edge in sorted(self.shell.alive_edges()):
            self.shell.send(edge, frames)
        self.shell.serve(self._complete_records, self.topology.runtime.edge_deadline)
        self._complete_records(force_before=round)
        self.shell.log.info(
            "trained %d cloud rounds; the plants hold the final model (the cloud has none); stopping the edges",
            round - 1,
        )

    def close(self) -> None:
        pass  # the checkpoints are plain files, each written whole
