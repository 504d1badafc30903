"""The cloud node: drives cloud rounds for the edges that dial in to its ROUTER.

Each cloud round it sends the global model to every live edge, collects their summaries
until all live edges answered or `edge_deadline` passed, aggregates what arrived and
applies the server optimizer (`steps.make_cloud_step`). Fewer answers than
`min_edge_participation` of the plants leave the model unchanged for that round. Then it
evaluates the model on the held-out test set, checkpoints (orbax), appends the round's
record to `metrics.jsonl` and, at the end, writes `model.npz` and tells every edge to
stop. Summaries for a closed round (late, or replayed) are refused and counted. With
`publish`, every new global model also goes out as a versioned inference artifact
(version = cloud round) through a `ModelPublisher`, so edge inference servers
(`hierfl serve --subscribe`) hot-swap to it.

Under differential privacy the cloud sends the clip norm in force with each model and
records epsilon every round; it trains no more rounds than `target_epsilon` allows. A
trusted cloud (`dp = "cloud"`) noises the sum of the summaries; with adaptive clipping
it moves the clip norm from the edges' noised counts (`_adapted_clip_norm`), and the
checkpointed record carries it across a restart. With SCAFFOLD it keeps the variate `c`,
sends it with every model, adds the edges' variate sums divided by the federation's
examples and checkpoints it.

`--resume` restarts from the last checkpoint: the record of a round is written after its
checkpoint, and on resume `metrics.jsonl` is rewritten to hold exactly the checkpointed
rounds, so no round is lost or counted twice.

The cloud answers every edge heartbeat, so an edge notices when the cloud is gone and
keeps training offline (see `edge.py`). A *stale* summary (an edge's offline progress,
sent when the cloud is back) joins the aggregate of the round it arrives in with its
weight multiplied by `1 / (1 + staleness)`, staleness being how many global models
were made since the one the edge started from (`round - 1 - base_version`, at least 0;
the polynomial discount of FedAsync, Xie et al. 2019): progress made on an old model
counts, but less the older it is.

With `[privacy] homomorphic = true` the cloud holds no plaintext model at all: it opens
each round with the *encrypted* aggregate of the previous one, adds the edges' encrypted
summaries under plaintext weights, checkpoints the round and its encrypted aggregate, and
writes each round's record from the scores the edges report after decrypting it; the
final model is written by the edges (see `hierfl.runtime.encrypted`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import zmq

from hierfl.core import steps
from hierfl.core.steps import aligned_zeros
from hierfl.data.evaluation import Scores, combine_plant_sums, make_evaluator
from hierfl.data.plan import make_plan
from hierfl.errors import HierflError, HomomorphicError
from hierfl.kernels import ravel
from hierfl.privacy import privacy_record
from hierfl.privacy.config import DpConfig, rounds_to_run
from hierfl.runs import checkpoint
from hierfl.runs.metrics import METRICS_FILE, MetricsWriter, encode_record
from hierfl.runtime import protocol
from hierfl.runtime.checkpoints import CloudCheckpoints
from hierfl.runtime.curve import check_keys, start_authenticator
from hierfl.runtime.node import (
    Counters,
    CurveKeys,
    Membership,
    bind_router,
    drain_router,
    node_logger,
    node_model,
    send_router,
    start_waiting_over,
)
from hierfl.topology import Topology

CLOUD = "cloud"
STARTING, COLLECTING, DONE = "starting", "collecting", "done"


class CloudNode:
    """The cloud of `topology`, writing to `run_dir`. `run()` trains `rounds` cloud rounds (default: the file's)."""

    def __init__(
        self,
        topology: Topology,
        run_dir: Path,
        *,
        rounds: int | None = None,
        bind: str | None = None,
        resume: bool = False,
        keys: CurveKeys | None = None,
        publish: str | None = None,
        he_context: Path | None = None,
    ):
        self.topology = topology
        self.runtime = runtime = topology.runtime
        secure = check_keys(runtime, keys)
        self.dp = DpConfig.of(topology)
        requested = rounds or topology.federation.cloud_rounds
        self.rounds = rounds_to_run(topology, requested)
        self.clip_norm = np.float32(topology.privacy.clip_norm)
        self.run_dir = Path(run_dir)
        self.log = node_logger("cloud")
        if self.rounds < requested:
            self.log.warning(
                "privacy.target_epsilon %g allows %d of %d rounds",
                topology.privacy.target_epsilon,
                self.rounds,
                requested,
            )
        self.net = net = node_model(topology)
        self.edges = {name: row for row, name in enumerate(topology.plant_names)}
        # Rows 0..E-1 hold this round's summaries, rows E..2E-1 stale summaries (offline progress).
        self.weights = np.zeros(2 * len(self.edges), np.float32)
        self.elapsed_before = 0.0
        self.cipher = None
        if topology.privacy.homomorphic:
            self._setup_encrypted(he_context, publish)
        else:
            if he_context is not None:
                raise HomomorphicError(
                    "--he-context is for topologies with [privacy] homomorphic = true"
                )
            plan = make_plan(topology)
            self.evaluate = make_evaluator(net.model, plan.task, plan.test, plan.num_edges)
            self.cloud_step = jax.jit(
                steps.make_cloud_step(
                    net.algorithm,
                    net.spec,
                    topology.aggregation.cloud,
                    self.dp,
                    topology.federation.seed,
                    len(self.edges),
                )
            )
            self.ravel = jax.jit(lambda params: ravel(net.spec, params))
            self.decode = jax.jit(steps.make_decode(net.codecs.edge_to_cloud))
            self.layouts = {protocol.SUMMARY: (net.codecs.edge_to_cloud.name, net.edge_layout)}
            self.deltas = aligned_zeros((2 * len(self.edges), net.spec.size))
            self.params = net.initial_params
            self.server_state = net.algorithm.server_init(self.params)
            # SCAFFOLD: the cloud's variate c, this round's variate sums (rows as deltas) and the federation's examples.
            self.variate = np.zeros(net.spec.size if net.variates else 0, np.float32)
            self.variate_sums = aligned_zeros((2 * len(self.edges), self.variate.size))
            self.examples = np.float32(plan.shards.counts.sum())
            self.checkpoints = CloudCheckpoints(self.run_dir / "checkpoints" / "cloud")
        self.members = Membership(runtime.heartbeat_timeout)
        self.counters = Counters()
        self.late = 0
        self.round = 1
        self.resumed = resume
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._restore()
        else:
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
            write_run_info_for(self.run_dir, topology, net.model.name)
        self.writer = MetricsWriter(self.run_dir)
        self.phase = STARTING
        self.first_round = True
        self.started = time.monotonic()
        self.context = zmq.Context()
        self.auth = (
            start_authenticator(self.context, runtime.edge_keys.values()) if secure else None
        )
        self.socket = bind_router(
            self.context,
            bind or topology.cloud.address,
            max_bytes=runtime.max_message_bytes,
            keys=keys,
        )
        self.publisher = RoundPublisher(publish, net, topology) if publish else None
        self.running = True

    def _setup_encrypted(self, he_context: Path | None, publish: str | None) -> None:
        """The cloud's state under homomorphic encryption: the public CKKS context, no model, no evaluator."""
        from hierfl.runtime import encrypted

        if he_context is None:
            raise HomomorphicError(
                "privacy.homomorphic: the cloud needs the plants' public CKKS context: --he-context ckks-public.bin (`hierfl keys ckks`)"
            )
        if publish:
            raise HierflError(
                "--publish: with privacy.homomorphic the cloud holds no plaintext model to publish; the plants hold it"
            )
        self.encrypted = encrypted
        parameters = encrypted.he.CkksParameters.of(self.topology.privacy)
        problem = encrypted.layout_problem(
            self.topology, self.net.spec, self.runtime.max_message_bytes
        )
        if problem:
            raise HomomorphicError(problem)
        self.cipher = encrypted.CloudCipher(
            encrypted.load_cloud_context(he_context, self.topology),
            self.net.spec,
            parameters,
            self.topology.federation.server_learning_rate,
        )
        self.layouts = {
            protocol.HE_SUMMARY: (
                encrypted.CODEC,
                encrypted.cipher_layout(self.net.spec, parameters),
            )
        }
        self.chunks: dict[int, tuple[bytes, ...]] = {}
        self.aggregate = encrypted.Aggregate(0)
        self.history: dict[
            int, Any
        ] = {}  # the newest aggregates (CATCH_UP_BYTES), by version, for edges that fell behind
        self.pending: dict[
            int, dict[str, Any]
        ] = {}  # records waiting for the edges' evaluations, by model version
        self.plant_sums: dict[int, dict[str, Any]] = {}
        self.bytes_up = 0
        self.checkpoints = encrypted.EncryptedCheckpoints(self.run_dir / "checkpoints" / "cloud-he")
        self.log.info(
            "homomorphic encryption: CKKS key %s (public context only); the edges hold the global model",
            self.cipher.key_id,
        )

    def warm_up(self) -> None:
        """Compiles every step of a round before serving, so no round stalls on a compile."""
        if self.cipher is not None:
            return
        self.ravel(self.params)
        self.cloud_step(
            self.params, self.server_state, self.deltas, self.weights, jnp.int32(1), self.clip_norm
        )
        self.evaluate(self.params)

    def run(self) -> None:
        self.warm_up()
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        self.log.info(
            "serving %d edges on %s; rounds %d..%d",
            len(self.edges),
            self.socket.LAST_ENDPOINT.decode(),
            self.round,
            self.rounds,
        )
        self.run_started = time.perf_counter()
        try:
            while self.running and self.round <= self.rounds:
                if self.socket.poll(50, zmq.POLLIN):
                    self._drain()
                self._advance()
            if self.round > self.rounds:
                if self.cipher is None:
                    checkpoint.save_params(self.run_dir / "model.npz", self.params)
                    self.log.info(
                        "trained %d cloud rounds; model saved; stopping the edges", self.rounds
                    )
                else:
                    self._finish_encrypted()
                    self.log.info(
                        "trained %d cloud rounds; the plants hold the final model (the cloud has none); stopping the edges",
                        self.rounds,
                    )
                self._stop_edges()
        finally:
            self.writer.close()
            if self.cipher is None:
                self.checkpoints.close()
            if self.publisher is not None:
                self.publisher.close()
            self.socket.close(linger=1000)
            if self.auth:
                self.auth.stop()
            self.context.term()
            self.log.info("stopped")

    def stop(self) -> None:
        self.running = False

    def _stop_edges(self) -> None:
        frames = protocol.encode(protocol.STOP, CLOUD, round=self.rounds)
        for edge in self.edges:
            send_router(self.socket, edge, frames)
        time.sleep(0.2)

    def _advance(self) -> None:
        now = time.monotonic()
        if self.phase == STARTING:
            alive = len(self.members.alive() & set(self.edges))
            required = math.ceil(self.runtime.min_edge_participation * len(self.edges))
            if start_waiting_over(
                alive,
                len(self.edges),
                required,
                now - self.started,
                start_timeout=self.runtime.start_timeout,
                grace=self.runtime.heartbeat_timeout,
                resumed=self.resumed,
            ):
                self._open_round()
        elif self.phase == COLLECTING:
            waiting = (self.expected & self.members.alive()) - set(self.summaries)
            if not waiting or now >= self.deadline:
                self._close_round()

    def _drain(self) -> None:
        drain_router(self.socket, self._receive, self._refuse)

    def _receive(self, peer: bytes, frames: list) -> None:
        message = protocol.parse_message(
            frames,
            senders=self.edges,
            spec=self.net.spec,
            layouts=self.layouts,
            max_bytes=self.runtime.max_message_bytes,
            routing_id=peer,
        )
        joined = self.members.seen(message.sender)
        if joined:
            self.log.info("edge %s joined", message.sender)
        # Under HE an edge (re)starting says hello with the global model version it holds: first the aggregates it misses.
        started = self.cipher is not None and message.kind == protocol.HELLO
        if started:
            self._send_catch_up(message.sender, message.header["model_version"])
        if joined or started:
            self._send_open_round(message.sender)
        self._handle(message)

    def _refuse(self, peer: bytes, error: protocol.MessageRejected) -> None:
        self.counters.reject(self.log, peer, error)
        if error.reason == protocol.STALE_ROUND:
            self.late += 1
        send_router(
            self.socket,
            peer,
            protocol.encode(
                protocol.REJECTED, CLOUD, round=self.round, reason=error.reason, detail=str(error)
            ),
        )

    def _handle(self, message: protocol.Message) -> None:
        if message.kind in (protocol.HELLO, protocol.HEARTBEAT):
            send_router(
                self.socket,
                message.sender,
                protocol.encode(protocol.HEARTBEAT, CLOUD, round=self.round),
            )
            return
        if message.kind == protocol.EVALUATION and self.cipher is not None:
            self._take_evaluation(message)
            return
        if message.kind != (protocol.SUMMARY if self.cipher is None else protocol.HE_SUMMARY):
            raise protocol.MessageRejected(
                protocol.UNEXPECTED, f"edges do not send {message.kind} messages to the cloud"
            )
        if message.round < self.round or (message.round == self.round and self.phase != COLLECTING):
            raise protocol.MessageRejected(
                protocol.STALE_ROUND,
                f"summary for round {message.round}, which is closed (now {self.round})",
            )
        if message.round > self.round:
            raise protocol.MessageRejected(
                protocol.FUTURE_ROUND,
                f"summary for round {message.round}, not started (now {self.round})",
            )
        stale = message.header.get("stale") is True
        received = self.stale if stale else self.summaries
        if message.sender in received:
            raise protocol.MessageRejected(
                protocol.DUPLICATE,
                f"second {'stale ' if stale else ''}summary from {message.sender} in round {message.round}",
            )
        base = message.header.get("base_version", 0)
        if stale and (not isinstance(base, int) or isinstance(base, bool) or base < 0):
            raise protocol.MessageRejected(
                protocol.MALFORMED, f"a stale summary needs base_version >= 0, got {base!r}"
            )
        row = self.edges[message.sender] + (len(self.edges) if stale else 0)
        if self.cipher is not None:
            self.chunks[row] = self.cipher.summary_chunks(message)
            self.bytes_up += sum(len(c) for c in self.chunks[row])
        elif self.net.codecs.edge_to_cloud.name == "none":
            self.deltas[row] = message.arrays[0]
        else:
            self.deltas[row] = np.asarray(self.decode(self.net.payload(message.arrays)))
        if self.cipher is None and self.net.variates:
            self.variate_sums[row] = message.arrays[-1]
        weight = float(message.header["weight"])
        if stale:
            staleness = max(0, self.round - 1 - base)
            weight *= staleness_discount(staleness)
            message.header["staleness"] = staleness
        self.weights[row] = weight
        received[message.sender] = message.header

    def _send_open_round(self, edge: str) -> None:
        """Gives an edge that joins, or comes back (restarted, or silent too long), the open round's model.

        An edge that already works on the round ignores the repeat; one that restarted needs it.
        """
        if self.phase == COLLECTING and edge not in self.summaries:
            self.expected.add(edge)
            self.sent_to += 1
            send_router(self.socket, edge, self.model_frames)

    def _open_round(self) -> None:
        self.phase = COLLECTING
        self.round_started = time.perf_counter()
        self.expected = self.members.alive() & set(self.edges)
        self.summaries: dict[str, dict[str, Any]] = {}
        self.stale: dict[str, dict[str, Any]] = {}
        self.weights[:] = 0
        if self.cipher is None:
            self.variate_sums[:] = 0
        # In the first round after start-up the edges may still be waiting for their devices (start_timeout).
        self.deadline = (
            time.monotonic()
            + self.runtime.edge_deadline
            + (self.runtime.start_timeout if self.first_round else 0.0)
        )
        self.first_round = False
        if self.cipher is not None:
            self.chunks, self.bytes_up = {}, 0
            self.model_frames = self.cipher.aggregate_frames(self.aggregate, self.round)
        else:
            self.model_frames = protocol.encode(
                protocol.MODEL,
                CLOUD,
                round=self.round,
                model_version=self.round - 1,
                spec=self.net.spec,
                codec="none",
                arrays=[
                    np.asarray(self.ravel(self.params)),
                    *([self.variate] if self.net.variates else []),
                ],
                **({"clip_norm": float(self.clip_norm)} if self.dp else {}),
            )
        # To the edges alive when the round opened (re-asking the live set now could miss them all
        # if this process was stalled); an edge that joins later gets the model when it does.
        for edge in sorted(self.expected):
            send_router(self.socket, edge, self.model_frames)
        self.sent_to = len(self.expected)

    def _close_round(self) -> None:
        answered, total = len(self.summaries), len(self.edges)
        required = math.ceil(self.runtime.min_edge_participation * total)
        if self.cipher is not None:
            self._close_encrypted_round(answered >= required and answered > 0)
            return
        if answered >= required and answered > 0:
            self.params, self.server_state = self.cloud_step(
                self.params,
                self.server_state,
                self.deltas,
                self.weights,
                jnp.int32(self.round),
                self.clip_norm,
            )
            self.clip_norm = self._next_clip_norm()
        else:
            self.log.warning(
                "cloud round %d: %d of %d edges answered (need %d); model unchanged",
                self.round,
                answered,
                total,
                required,
            )
        # The devices have moved their variates, whatever happened to the model.
        self.variate = np.asarray(
            steps.next_cloud_variate(self.variate, self.variate_sums, self.examples)
        )
        record = self._record(self.evaluate(self.params))
        self.checkpoints.save(self.round, self.params, self.server_state, record, self.variate)
        self.writer.write(record)
        if self.publisher is not None:
            self.publisher.publish(self.round, self.params, record)
        self.log.info(
            "cloud round %d: %d/%d edges, accuracy %.4f",
            self.round,
            answered,
            total,
            record["accuracy"],
        )
        self._next_round()

    def _next_clip_norm(self) -> np.float32:
        """The clip norm after this round (`steps.next_clip_norm`: adaptive clipping moves it
        from the edges' noised counts of unclipped updates)."""
        counted = sum(protocol.header_number(h, "unclipped", 0.0) for h in self.summaries.values())
        edge_rounds, devices = self.topology.federation.edge_rounds, self.topology.num_devices
        return np.float32(
            steps.next_clip_norm(self.dp, self.clip_norm, counted, edge_rounds, devices)
        )

    def _next_round(self) -> None:
        self.round += 1
        self.phase = COLLECTING
        if self.round <= self.rounds:
            self._open_round()

    # -- homomorphic encryption: the cloud adds ciphertexts, the edges evaluate ----------------------

    def _close_encrypted_round(self, enough: bool) -> None:
        """A_round from the encrypted summaries; the round's record waits for the edges' evaluations of it."""
        down_bytes = sum(len(protocol.frame_bytes(frame)) for frame in self.model_frames[1:])
        aggregate = self.encrypted.Aggregate(self.round)
        if enough:
            labels = self.encrypted.row_labels(self.topology.plant_names)
            summaries = {labels[row]: chunks for row, chunks in self.chunks.items()}
            weights = {labels[row]: float(self.weights[row]) for row in self.chunks}
            try:
                aggregate = self.cipher.aggregate(self.round, summaries, weights)
            except (
                HomomorphicError
            ) as error:  # summaries are checked on receipt; this is a last guard
                self.log.error(
                    "cloud round %d: cannot add the encrypted summaries (%s); model unchanged",
                    self.round,
                    error,
                )
        else:
            self.log.warning(
                "cloud round %d: %d of %d edges answered; model unchanged",
                self.round,
                len(self.summaries),
                len(self.edges),
            )
        self.aggregate = aggregate
        self.history[aggregate.version] = aggregate
        kept = self.encrypted.newest_within(self.history, self.encrypted.CATCH_UP_BYTES)
        self.history = {version: self.history[version] for version in kept}
        record = self._record(None)
        record["bytes"]["edge_to_cloud"] = self.bytes_up
        record["bytes"]["cloud_to_edge"] = self.sent_to * down_bytes
        self._complete_records(
            force_before=self.round
        )  # before the checkpoint: a resume keeps every earlier record
        self.checkpoints.save(self.round, aggregate, record)
        self.pending[self.round] = record
        self.plant_sums.setdefault(self.round, {})
        self.log.info(
            "cloud round %d: %d/%d edges, encrypted aggregate %d bytes (coefficients %s)",
            self.round,
            len(self.summaries),
            len(self.edges),
            aggregate.nbytes,
            {k: round(v, 4) for k, v in aggregate.coefficients.items()},
        )
        self._next_round()

    def _send_catch_up(self, edge: str, held: int) -> None:
        """Sends an edge holding global model `held` the aggregates after it, up to the one the open round carries.

        Only as far back as `history` reaches (`encrypted.CATCH_UP_BYTES`; after a resume,
        the checkpointed aggregate alone); an edge further behind gets nothing here and
        logs the gap when the round's aggregate arrives (`encrypted.catch_up`).
        """
        missing = range(held + 1, self.aggregate.version + (1 if self.phase == DONE else 0))
        if not missing or any(version not in self.history for version in missing):
            if missing:
                self.log.warning(
                    "edge %s holds global model version %d; the aggregates since are not all kept here (%s)",
                    edge,
                    held,
                    ", ".join(map(str, sorted(self.history))) or "none",
                )
            return
        for version in missing:
            send_router(
                self.socket,
                edge,
                self.cipher.aggregate_frames(self.history[version], self.round, catch_up=True),
            )
        self.log.info(
            "edge %s holds global model version %d: sent the aggregates of versions %d..%d",
            edge,
            held,
            missing[0],
            missing[-1],
        )

    def _take_evaluation(self, message: protocol.Message) -> None:
        """An edge's test sums of global model `message.round` (it re-sends them when it gets an aggregate twice)."""
        version = message.round
        if version >= self.round:
            raise protocol.MessageRejected(
                protocol.FUTURE_ROUND,
                f"evaluation of model version {version}, not made yet (now round {self.round})",
            )
        if version in self.pending:
            self.plant_sums[version][message.sender] = self.encrypted.evaluation_sums(
                message.header
            )
            self._complete_records()

    def _complete_records(self, force_before: int = 0) -> None:
        """Writes, in round order, the pending records every live edge has evaluated (all before `force_before`, with what came)."""
        for version in sorted(self.pending):
            reported = self.plant_sums.get(version, {})
            waiting = (self.members.alive() & set(self.edges)) - set(reported)
            if version >= force_before and (waiting or not reported):
                return
            sums = [reported.get(name) for name in self.topology.plant_names]
            record = self.pending.pop(version)
            self.plant_sums.pop(version, None)
            record.update(self._score_fields(combine_plant_sums(self.net.task, sums)))
            self.writer.write(record)
            self.log.info(
                "cloud round %d: accuracy %.4f (evaluated by %s)",
                version,
                record["accuracy"],
                ", ".join(sorted(reported)) or "no plant",
            )

    def _finish_encrypted(self) -> None:
        """Sends the last aggregate (`final`): the edges apply it, evaluate, and write the final model; waits for their scores."""
        self.phase = DONE
        frames = self.cipher.aggregate_frames(self.aggregate, self.round, final=True)
        for edge in sorted(self.members.alive() & set(self.edges)):
            send_router(self.socket, edge, frames)
        deadline = time.monotonic() + self.runtime.edge_deadline
        while self.running and self.pending and time.monotonic() < deadline:
            if self.socket.poll(50, zmq.POLLIN):
                self._drain()
            self._complete_records()
        self._complete_records(force_before=self.round)

    def _score_fields(self, scores: Scores | None) -> dict[str, Any]:
        """The record's test scores (NaN until the edges report them, under homomorphic encryption)."""
        if scores is None:
            return {
                "test_loss": math.nan,
                "accuracy": math.nan,
                "plant_accuracy": {name: math.nan for name in self.topology.plant_names},
            }
        return {
            "test_loss": scores.loss,
            "accuracy": scores.score,
            "plant_accuracy": dict(zip(self.topology.plant_names, scores.per_plant)),
        }

    def _record(self, scores: Scores | None) -> dict[str, Any]:
        now = time.perf_counter()
        weight = sum(float(h["weight"]) for h in self.summaries.values())
        loss_sum = sum(float(h["loss"]) for h in self.summaries.values())
        answered = {name: list(h.get("answered", [])) for name, h in self.summaries.items()}
        codecs, model_bytes = self.net.codecs, self.net.spec.nbytes
        device_updates = sum(sum(a) for a in answered.values())
        return {
            "round": self.round,
            "loss": loss_sum / max(weight, 1.0),
            **self._score_fields(scores),
            "bytes": {
                "device_to_edge": device_updates * codecs.device_to_edge.payload_bytes,
                "edge_to_device": device_updates * model_bytes,
                "edge_to_cloud": len(self.summaries) * codecs.edge_to_cloud.payload_bytes,
                "cloud_to_edge": self.sent_to * model_bytes,
            },
            "round_seconds": now - self.round_started,
            "elapsed_seconds": self.elapsed_before + now - self.run_started,
            "devices": sum(max(a, default=0) for a in answered.values()),
            "edges_answered": sorted(self.summaries),
            "devices_answered": answered,
            "devices_expected": {p.name: p.num_devices for p in self.topology.plants},
            "rejected_messages": {
                "cloud": self.counters.snapshot(),
                **{n: h.get("rejected", {}) for n, h in self.summaries.items()},
            },
            "late_updates": self.late + sum(int(h.get("late", 0)) for h in self.summaries.values()),
            "stale_summaries": {
                name: {
                    "weight": h["weight"],
                    "staleness": h["staleness"],
                    "edge_rounds": h["edge_round"],
                }
                for name, h in self.stale.items()
            },
            **(
                {
                    "secure_aggregation_failures": {
                        n: h.get("secagg_failed", 0) for n, h in self.summaries.items()
                    }
                }
                if self.topology.privacy.secure_aggregation
                else {}
            ),
            **privacy_record(self.topology, self.round, float(self.clip_norm)),
        }

    def _restore(self) -> None:
        if self.cipher is not None:
            self._restore_encrypted()
            return
        state = self.checkpoints.latest(self.params, self.server_state, self.variate)
        if state is None:
            self.log.info("no checkpoint in %s; starting at round 1", self.checkpoints.directory)
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
            return
        self.params = jax_tree_asarray(state.params)
        self.server_state = state.server_state
        self.variate = np.asarray(state.variate, np.float32)
        self.round = state.round + 1
        self.clip_norm = np.float32(state.record.get("clip_norm", self.clip_norm))
        self.elapsed_before = float(state.record.get("elapsed_seconds", 0.0))
        reconcile_metrics(self.run_dir / METRICS_FILE, state.round, state.record)
        self.log.info("resumed from the checkpoint of cloud round %d", state.round)

    def _restore_encrypted(self) -> None:
        """Round and encrypted aggregate from the last checkpoint; its record is pending unless `metrics.jsonl` has it."""
        state = self.checkpoints.latest()
        if state is None:
            self.log.info("no checkpoint in %s; starting at round 1", self.checkpoints.directory)
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
            return
        self.round = state.round + 1
        self.aggregate = state.aggregate
        self.history = {state.aggregate.version: state.aggregate}
        self.elapsed_before = float(state.record.get("elapsed_seconds", 0.0))
        if not reconcile_metrics(self.run_dir / METRICS_FILE, state.round, None):
            self.pending[state.round] = state.record
            self.plant_sums[state.round] = {}
        self.log.info(
            "resumed from the checkpoint of cloud round %d (its encrypted aggregate)", state.round
        )


def staleness_discount(staleness: int) -> float:
    """The factor on a stale summary's weight: 1 / (1 + staleness) (1 for a summary of the current model)."""
    return 1.0 / (1.0 + staleness)


class RoundPublisher:
    """Publishes each round's global model as an inference artifact (see `hierfl.inference.publisher`).

    The model's inference function is exported once (`jax.export`; the params are its
    arguments), so each round only packs new params with a new version number.
    """

    def __init__(self, address: str, net, topology: Topology):
        from hierfl.inference.export import export_model
        from hierfl.inference.publisher import ModelPublisher

        self.template = export_model(
            net.model,
            net.initial_params,
            net.task,
            version=0,
            run={"name": topology.federation.name},
        )
        self.publisher = ModelPublisher(address)

    def publish(self, round: int, params: Any, record: dict[str, Any]) -> None:
        from hierfl.runs.checkpoint import flatten_params

        meta = dataclasses.replace(
            self.template.meta,
            version=round,
            metrics={"accuracy": record["accuracy"], "round": round},
        )
        self.publisher.publish(
            dataclasses.replace(self.template, meta=meta, params=flatten_params(params))
        )

    def close(self) -> None:
        self.publisher.close()


def reconcile_metrics(path: Path, last_round: int, last_record: dict[str, Any] | None) -> bool:
    """Rewrites `metrics.jsonl` to hold rounds 1..last_round exactly once (the checkpoint's record for the last).

    With `last_record` None (homomorphic encryption: the checkpoint's record has no scores
    yet) the file's own record of `last_round` is kept if it has one. Returns whether the
    file now holds `last_round`.
    """
    records: dict[int, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
            if (
                isinstance(record, dict)
                and isinstance(record.get("round"), int)
                and (
                    record["round"] < last_round
                    or (record["round"] == last_round and last_record is None)
                )
            ):
                records[record["round"]] = line + "\n"
    if last_record is not None:
        records[last_round] = encode_record(last_record)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(records[r] for r in sorted(records)), encoding="utf-8")
    tmp.replace(path)
    return last_round in records


def jax_tree_asarray(tree: Any) -> Any:
    import jax

    return jax.tree.map(jnp.asarray, tree)


def write_run_info_for(run_dir: Path, topology: Topology, model_name: str) -> None:
    """`run.json` for a runtime run: what `simulate` records, plus `"runtime"` settings."""
    from hierfl import __version__
    from hierfl.runs.metrics import write_run_info

    federation = topology.federation
    runtime = dataclasses.asdict(topology.runtime)
    write_run_info(
        run_dir,
        {
            "name": federation.name,
            "task": federation.task,
            "model": model_name,
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
            "compression": dataclasses.asdict(topology.compression),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hierfl_version": __version__,
            "runtime": {
                k: v for k, v in runtime.items() if not k.endswith("keys") and k != "cloud_key"
            },
        },
    )
