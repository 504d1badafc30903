"""An edge node: one plant's server. Devices dial in to its ROUTER; it dials the cloud.

For every global model the cloud sends (cloud round r), the edge runs `edge_rounds`
edge rounds: it sends its current model to every live device, collects their updates
until all of them answered or `device_deadline` passed, and applies the mean of what
arrived (`steps.make_edge_step`). A round with fewer answers than
`min_device_participation` of the plant's devices leaves the model unchanged. After the
last edge round it sends one summary up (`steps.make_edge_upload`: its model's change
since the global model, weighted by the examples aggregated over its edge rounds).

Every incoming message is checked (`protocol.parse_message`) and then against the
round in progress: updates for a closed round (late or replayed), for a future round,
or twice from one device are refused. A refused message is logged, counted and
answered with a `rejected` message naming the reason; the edge keeps running.

If the cloud goes silent (no answer to the edge's heartbeats for `heartbeat_timeout`
seconds) after a summary, the edge keeps training its plant: it runs up to `edge_rounds`
*offline* edge rounds from its own model. When the cloud is back and sends a model, the
edge first sends that offline progress as a *stale* summary (its model's change since
its last summary, weighted by the examples of the offline rounds, tagged with the model
version it started from); the cloud discounts it by its staleness (see `cloud.py`). Then
the edge starts the new round from the new global model. Under differential privacy the
edge does not train offline: those rounds would release updates the accountant does not
count.

With SCAFFOLD the edge forwards the cloud's variate `c` with every model, adds up its
devices' variate changes weighted by their examples (`sum_i n_i delta_c_i`, every edge
round, whether or not the round changed the model: the devices have moved their `c_i`)
and sends that sum up with its summary (offline rounds' with the stale summary).

Under central DP (`[privacy] dp = "edge"` or `"cloud"`) the devices clip (to the clip norm
the cloud sends with each model, which adaptive clipping moves) and the edge divides the
sum by the expected number of devices; a trusted edge also noises the sum and, with
adaptive clipping, its count of unclipped updates, which goes up in the summary
(`steps.make_edge_step`).

With `[privacy] secure_aggregation`, an edge round runs the four steps of secure
aggregation as phases (keys, shares, masked, unmasking; `hierfl.runtime.secagg_rounds`): the
edge never sees one device's update, only the weighted sum of the survivors', which it
applies as a mean-rule round. Too few devices in any phase fail the round safely (model
unchanged, a warning naming the phase; the round counts 0 devices answered).

Devices join at any time (any valid message admits them; they get the model at the
next edge round) and count as gone after `heartbeat_timeout` seconds of silence, so a
crashed device stops holding up rounds. The edge checkpoints its uplink residual and
last finished cloud round after each summary (`--resume` reads it back).

With `[privacy] homomorphic = true` the edge holds the global model: the cloud sends
encrypted aggregates instead of models, the edge decrypts each one onto its copy of the
global model, reports its plant's test scores, and sends its summary encrypted; it also
checkpoints the decrypted global model and its version, and writes the final model
(`--model-out`). See `hierfl.runtime.encrypted`.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import zmq

from hierfl.core.steps import (
    aligned_zeros,
    make_decode,
    make_edge_step,
    make_edge_sum_step,
    make_edge_upload,
)
from hierfl.data.plan import Plan, make_plan
from hierfl.errors import HomomorphicError, SecAggError
from hierfl.kernels import unravel
from hierfl.privacy.config import DpConfig
from hierfl.runtime import protocol
from hierfl.runtime.curve import check_keys, start_authenticator
from hierfl.runtime.node import (
    Counters,
    CurveKeys,
    Membership,
    bind_router,
    connect_dealer,
    drain_router,
    node_logger,
    node_model,
    send_router,
    start_waiting_over,
)
from hierfl.runtime.secagg_rounds import EdgeRound, plant_secure_aggregation
from hierfl.topology import Topology

IDLE, STARTING, COLLECTING = "idle", "starting", "collecting"
CLOUD = "cloud"


class EdgeNode:
    """The edge server of plant `plant_name`. `run()` serves until the cloud says stop (or SIGTERM)."""

    def __init__(
        self,
        topology: Topology,
        plant_name: str,
        *,
        bind: str | None = None,
        state_dir: Path | None = None,
        resume: bool = False,
        keys: CurveKeys | None = None,
        he_context: Path | None = None,
        model_out: Path | None = None,
    ):
        self.topology = topology
        self.plant = topology.plant(plant_name)
        self.index = topology.plant_names.index(plant_name)
        self.runtime = runtime = topology.runtime
        secure = check_keys(runtime, keys)
        self.log = node_logger(f"edge {plant_name}")
        self.net = net = node_model(topology)
        self.devices = {device.id: row for row, device in enumerate(self.plant.devices)}
        self.edge_rounds = topology.federation.edge_rounds
        seed = topology.federation.seed
        self.dp = DpConfig.of(topology)
        self.edge_step = jax.jit(make_edge_step(topology.edge_rule(self.plant), self.dp, seed))
        self.clip_norm = np.float32(topology.privacy.clip_norm)
        self.decode = jax.jit(make_decode(net.codecs.device_to_edge))
        self.upload = jax.jit(make_edge_upload(net.codecs.edge_to_cloud, seed))
        self.device_layouts = {protocol.UPDATE: (net.codecs.device_to_edge.name, net.device_layout)}
        # Secure aggregation's normalizer needs the plan's example counts, CKKS the plant's test examples: built once.
        plan = (
            make_plan(topology)
            if topology.privacy.secure_aggregation or topology.privacy.homomorphic
            else None
        )
        self.secure = None
        if topology.privacy.secure_aggregation:
            self.secure = plant_secure_aggregation(
                topology, self.plant, plan.shards.counts, net.spec
            )
            self.device_layouts = {
                protocol.SECAGG_MASKED: (
                    protocol.MASKED_CODEC,
                    protocol.masked_layout(self.secure.encoding.words),
                )
            }
        self.secure_round: EdgeRound | None = None
        self.sum_step = jax.jit(make_edge_sum_step(self.dp, seed, len(self.devices)))
        self.secagg_failed = 0
        self.device_bytes = [0, 0]  # received from / sent to devices since the edge round opened
        self.cloud_layouts = {protocol.MODEL: ("none", net.model_layout)}
        self.deltas = aligned_zeros((len(self.devices), net.spec.size))
        self.weights = np.zeros(len(self.devices), np.float32)
        self.losses = np.zeros(len(self.devices), np.float32)
        self.unclipped = np.zeros(len(self.devices), np.float32)
        # SCAFFOLD: the devices' variate changes of this edge round, and their weighted sums to send up.
        self.variate_changes = (
            aligned_zeros((len(self.devices), net.spec.size)) if net.variates else None
        )
        self.variate_sum = self.pending_variate_sum = np.zeros(
            net.spec.size if net.variates else 0, np.float32
        )
        self.residual = np.zeros(net.codecs.edge_to_cloud.residual_size, np.float32)
        self.members = Membership(runtime.heartbeat_timeout)
        self.counters = Counters()
        self.late = 0
        self.state_path = (
            Path(state_dir) / f"edge-{plant_name}.npz" if state_dir is not None else None
        )
        self.finished_round = 0
        self.opened_once = False
        self.resumed = resume
        self.offline = False
        self.offline_rounds = 0
        self.pending_weight, self.pending_loss = 0.0, 0.0
        self.summary_base: np.ndarray | None = None
        self.cloud_seen = time.monotonic()
        self.cipher = None
        if topology.privacy.homomorphic:
            self._setup_encrypted(he_context, model_out, plan)
        elif he_context is not None or model_out is not None:
            raise HomomorphicError(
                "--he-context and --model-out are for topologies with [privacy] homomorphic = true"
            )
        if resume:
            self._restore()
        self.phase = IDLE
        self.round = 0
        self.edge_round = 0
        self.model_version = (
            self.global_version if self.cipher is not None else 0
        )  # what hello tells the cloud
        self.started = time.monotonic()
        self.context = zmq.Context()
        self.auth = start_authenticator(self.context, runtime.device_keys) if secure else None
        self.devices_socket = bind_router(
            self.context, bind or self.plant.address, max_bytes=runtime.max_message_bytes, keys=keys
        )
        self.cloud = connect_dealer(
            self.context,
            topology.cloud.address,
            plant_name,
            max_bytes=runtime.max_message_bytes,
            keys=keys,
            server_key=runtime.cloud_key.encode() if runtime.cloud_key else None,
        )
        self.running = True

    # -- the loop ---------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compiles aggregation and upload before the first round."""
        flat = jnp.zeros(self.net.spec.size, jnp.float32)
        self.edge_step(
            flat,
            self.deltas,
            self.weights,
            self.unclipped,
            jnp.int32(0),
            jnp.int32(0),
            jnp.int32(self.index),
            self.clip_norm,
        )
        self.upload(flat, flat, jnp.float32(0), self.residual, jnp.int32(0), jnp.int32(self.index))
        if self.secure is not None:
            self.sum_step(
                flat,
                flat,
                jnp.float32(1),
                jnp.int32(0),
                jnp.int32(0),
                jnp.int32(self.index),
                self.clip_norm,
            )
        codec = self.net.codecs.device_to_edge
        if codec.name != "none":
            self.decode(
                self.net.payload(
                    tuple(np.zeros(shape, dtype) for dtype, shape in self.net.device_layout.frames)
                )
            )
        if self.cipher is not None:
            self.plant_evaluate(self.net.initial_params)

    def run(self) -> None:
        self.warm_up()
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        self.log.info(
            "serving %d devices on %s; cloud at %s",
            len(self.devices),
            self.devices_socket.LAST_ENDPOINT.decode(),
            self.topology.cloud.address,
        )
        self._send_cloud(protocol.HELLO)
        poller = zmq.Poller()
        poller.register(self.devices_socket, zmq.POLLIN)
        poller.register(self.cloud, zmq.POLLIN)
        next_beat = time.monotonic() + self.runtime.heartbeat_interval
        try:
            while self.running:
                wait = min(next_beat - time.monotonic(), 0.05 if self.phase != IDLE else 1.0)
                events = dict(poller.poll(max(0, int(wait * 1000))))
                if self.devices_socket in events:
                    self._drain_devices()
                if self.cloud in events:
                    self._drain_cloud()
                if time.monotonic() >= next_beat:
                    self._send_cloud(protocol.HEARTBEAT)
                    next_beat = time.monotonic() + self.runtime.heartbeat_interval
                self._advance()
        finally:
            self.devices_socket.close(linger=500)
            self.cloud.close(linger=500)
            if self.auth:
                self.auth.stop()
            self.context.term()
            self.log.info("stopped")

    def stop(self) -> None:
        self.running = False

    def _advance(self) -> None:
        """Moves the round on when its waiting is over: everyone joined/answered, or time is up."""
        now = time.monotonic()
        if (
            self.phase == IDLE
            and self.opened_once
            and self.offline_rounds < self.edge_rounds
            and self.dp is None
            and now - self.cloud_seen > self.runtime.heartbeat_timeout
        ):
            self._open_offline_round()
        elif self.phase == STARTING:
            alive = len(self.members.alive() & set(self.devices))
            required = math.ceil(self.runtime.min_device_participation * len(self.devices))
            if start_waiting_over(
                alive,
                len(self.devices),
                required,
                now - self.started,
                start_timeout=self.runtime.start_timeout,
                grace=self.runtime.heartbeat_timeout,
                resumed=self.resumed,
            ):
                self._open_edge_round()
        elif self.phase == COLLECTING:
            waiting = (self.expected & self.members.alive()) - self.answered
            if not waiting or now >= self.deadline:
                self._close_edge_round()

    # -- messages from devices --------------------------------------------------------------------

    def _drain_devices(self) -> None:
        drain_router(self.devices_socket, self._receive_device, self._refuse_device)

    def _receive_device(self, peer: bytes, frames: list) -> None:
        self.device_bytes[0] += sum(len(protocol.frame_bytes(f)) for f in frames)
        message = protocol.parse_message(
            frames,
            senders=self.devices,
            spec=self.net.spec,
            layouts=self.device_layouts,
            max_bytes=self.runtime.max_message_bytes,
            routing_id=peer,
        )
        if self.members.seen(message.sender):
            self.log.info("device %s joined", message.sender)
        self._handle_device(message)

    def _refuse_device(self, peer: bytes, error: protocol.MessageRejected) -> None:
        self.counters.reject(self.log, peer, error)
        if error.reason == protocol.STALE_ROUND:
            self.late += 1
        send_router(
            self.devices_socket,
            peer,
            protocol.encode(
                protocol.REJECTED,
                self.plant.name,
                round=self.round,
                reason=error.reason,
                detail=str(error),
            ),
        )

    def _handle_device(self, message: protocol.Message) -> None:
        if message.kind in (protocol.HELLO, protocol.HEARTBEAT):
            return
        if message.kind == protocol.STATUS:
            send_router(
                self.devices_socket,
                message.sender,
                protocol.encode(
                    protocol.STATUS, self.plant.name, round=self.round, **self.status()
                ),
            )
            return
        if message.kind in protocol.SECAGG_FROM_DEVICE:
            if self.secure is None:
                raise protocol.MessageRejected(
                    protocol.UNEXPECTED, f"{message.kind}: this plant runs no secure aggregation"
                )
            problem = update_problem(
                (message.round, message.edge_round),
                (self.round, self.edge_round),
                self.phase == COLLECTING,
                message.kind,
            )
            if problem is not None:
                raise protocol.MessageRejected(*problem)
            self.secure_round.receive(message)
            self.answered.add(message.sender)
            return
        if message.kind != protocol.UPDATE:
            raise protocol.MessageRejected(
                protocol.UNEXPECTED, f"devices do not send {message.kind} messages"
            )
        problem = update_problem(
            (message.round, message.edge_round),
            (self.round, self.edge_round),
            self.phase == COLLECTING,
        )
        if problem is not None:
            raise protocol.MessageRejected(*problem)
        if message.sender in self.answered:
            raise protocol.MessageRejected(
                protocol.DUPLICATE,
                f"second update from {message.sender} in round {message.round}.{message.edge_round}",
            )
        row = self.devices[message.sender]
        if self.net.codecs.device_to_edge.name == "none":
            self.deltas[row] = message.arrays[0]
        else:
            self.deltas[row] = np.asarray(self.decode(self.net.payload(message.arrays)))
        if self.net.variates:
            self.variate_changes[row] = message.arrays[-1]
        self.weights[row] = message.header["weight"]
        self.losses[row] = message.header["loss"]
        self.unclipped[row] = protocol.header_flag(message.header, "unclipped")
        self.answered.add(message.sender)

    def status(self) -> dict:
        """What a `status` request answers: phase, round, live devices, rejected counts."""
        status = {
            "phase": self.phase,
            "edge_round_open": self.edge_round,
            "alive": sorted(self.members.alive()),
            "rejected": self.counters.snapshot(),
            "late": self.late,
            "finished_round": self.finished_round,
        }
        if self.secure is not None:
            status["secagg_phase"] = (
                self.secure_round.phase
                if self.secure_round is not None and self.phase == COLLECTING
                else None
            )
            status["secagg_failed"] = self.secagg_failed
        return status

    # -- messages from the cloud ------------------------------------------------------------------

    def _drain_cloud(self) -> None:
        while True:
            try:
                frames = self.cloud.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = protocol.parse_message(
                    frames,
                    senders={CLOUD},
                    spec=self.net.spec,
                    layouts=self.cloud_layouts,
                    max_bytes=self.runtime.max_message_bytes,
                )
            except protocol.MessageRejected as error:
                self.counters.reject(self.log, CLOUD, error)
                continue
            self.cloud_seen = time.monotonic()
            if message.kind == protocol.STOP:
                self.log.info("the cloud says stop")
                self._broadcast(protocol.encode(protocol.STOP, self.plant.name, round=self.round))
                self.running = False
                return
            if message.kind == protocol.REJECTED:
                self.log.warning("the cloud rejected our message: %s", message.header.get("detail"))
            elif message.kind == protocol.MODEL:
                self._start_cloud_round(
                    message.round,
                    int(message.header["model_version"]),
                    message.arrays[0],
                    clip_norm=protocol.header_number(
                        message.header, "clip_norm", self.topology.privacy.clip_norm
                    ),
                    cloud_variate=message.arrays[1] if self.net.variates else None,
                )
            elif message.kind == protocol.HE_AGGREGATE:
                self._take_aggregate(message)

    def _start_cloud_round(
        self,
        r: int,
        model_version: int,
        global_flat: np.ndarray,
        *,
        clip_norm: float | None = None,
        cloud_variate: np.ndarray | None = None,
    ) -> None:
        if self.offline:
            self._send_stale_summary(r)
        elif r < self.round or (r == self.round and self.phase != IDLE):
            self.log.info(
                "ignoring the cloud's model for round %d (at round %d, %s)",
                r,
                self.round,
                self.phase,
            )
            return
        if self.phase != IDLE:
            self.log.warning(
                "cloud round %d started before this edge finished round %d; abandoning it",
                r,
                self.round,
            )
        self.round, self.edge_round = r, 0
        self.model_version = model_version
        self.clip_norm = np.float32(
            self.topology.privacy.clip_norm if clip_norm is None else clip_norm
        )
        self.global_flat = np.array(global_flat)
        self.cloud_variate = None if cloud_variate is None else np.array(cloud_variate)
        self.variate_sum = np.zeros_like(self.variate_sum)
        self.edge_flat = self.global_flat
        self.total_weight, self.loss_sum, self.unclipped_sum, self.answered_per_round = (
            0.0,
            0.0,
            0.0,
            [],
        )
        self.answered = set()
        self.phase = STARTING if not self.opened_once else COLLECTING
        if self.opened_once:
            self._open_edge_round()

    # -- edge rounds ------------------------------------------------------------------------------

    def _open_edge_round(self) -> None:
        self.opened_once = True
        self.phase = COLLECTING
        self.expected = self.members.alive() & set(self.devices)
        self.answered = set()
        self.weights[:] = 0
        self.unclipped[:] = 0
        self.deadline = time.monotonic() + self.runtime.device_deadline
        self.device_bytes = [0, 0]
        if self.secure is not None:
            self.secure_round = EdgeRound(
                self.plant.name,
                self.round,
                self.edge_round,
                self.model_version,
                self.secure,
                self.expected,
            )
        frames = protocol.encode(
            protocol.MODEL,
            self.plant.name,
            round=self.round,
            edge_round=self.edge_round,
            model_version=self.model_version,
            spec=self.net.spec,
            codec="none",
            arrays=[self.edge_flat, *self._cloud_variate()],
            clip_norm=float(self.clip_norm),
        )
        self._send_devices({device: frames for device in sorted(self.expected)})

    def _open_offline_round(self) -> None:
        """An edge round while the cloud is silent: numbered as the next cloud round, from the edge's own model."""
        if not self.offline:
            self.log.warning(
                "the cloud is silent; running offline edge rounds from the plant model"
            )
            self.offline = True
            self.round, self.edge_round = self.finished_round + 1, 0
        self._open_edge_round()

    def _close_edge_round(self) -> None:
        if self.secure_round is not None and not self._close_secure_phase():
            return
        answered, total = len(self.answered), len(self.devices)
        required = math.ceil(self.runtime.min_device_participation * total)
        if (
            self.net.variates
        ):  # devices that answered have moved their variates, whatever happens to the model
            round_sum = self.weights @ self.variate_changes
            if self.offline:
                self.pending_variate_sum = self.pending_variate_sum + round_sum
            else:
                self.variate_sum = self.variate_sum + round_sum
        if answered >= required and answered > 0:
            if self.secure_round is not None:
                delta_sum, weight, loss = self.secure.encoding.decode(self.secure_round.total)
                outcome = self.sum_step(
                    self.edge_flat,
                    delta_sum,
                    np.float32(weight),
                    jnp.int32(self.round),
                    jnp.int32(self.edge_round),
                    jnp.int32(self.index),
                    self.clip_norm,
                )
            else:
                outcome = self.edge_step(
                    self.edge_flat,
                    self.deltas,
                    self.weights,
                    self.unclipped,
                    jnp.int32(self.round),
                    jnp.int32(self.edge_round),
                    jnp.int32(self.index),
                    self.clip_norm,
                )
                loss = float((self.losses * self.weights).sum())
            self.edge_flat = np.asarray(outcome.edge_flat)
            weight = float(outcome.weight)
            self.unclipped_sum += float(outcome.unclipped)
            if self.offline:
                self.pending_weight += weight
                self.pending_loss += loss
            else:
                self.total_weight += weight
                self.loss_sum += loss
        else:
            self.log.warning(
                "edge round %d.%d: %d of %d devices answered (need %d); model unchanged",
                self.round,
                self.edge_round,
                answered,
                total,
                required,
            )
        missing = sorted(self.expected - self.answered)
        self.log.info(
            "edge round %d.%d closed: %d/%d answered%s; %d bytes from devices, %d to them",
            self.round,
            self.edge_round,
            answered,
            total,
            f", missing {', '.join(missing)}" if missing else "",
            *self.device_bytes,
        )
        self.secure_round = None
        self.edge_round += 1
        if self.offline:
            self.offline_rounds += 1
            self.phase = IDLE
            return
        self.answered_per_round.append(answered)
        if self.edge_round < self.edge_rounds:
            self._open_edge_round()
        else:
            self._send_summary()

    def _close_secure_phase(self) -> bool:
        """Ends the secure-aggregation phase in progress; True when the edge round is over.

        Opens the next phase (its requests out, a fresh deadline) and returns False; after
        the last phase leaves `answered` = the devices in the sum, after a failed phase none.
        """
        round_ = self.secure_round
        try:
            frames = round_.close()
        except SecAggError as error:
            self.secagg_failed += 1
            self.log.warning(
                "edge round %d.%d: %s; model unchanged", self.round, self.edge_round, error
            )
            frames = None
        for rejection in round_.rejections():
            self.counters.reject(
                self.log,
                "secure aggregation",
                protocol.MessageRejected(protocol.MALFORMED, rejection),
            )
        if frames is None or round_.total is not None:
            self.expected, self.answered = set(round_.invited), set(round_.survivors)
            return True
        self._send_devices(frames)
        self.expected, self.answered = set(frames), set()
        self.deadline = time.monotonic() + self.secure.phase_deadline
        return False

    def _send_devices(self, frames: dict[str, list]) -> None:
        """Sends each device its frames, counting the bytes."""
        for device, message in frames.items():
            self.device_bytes[1] += sum(len(protocol.frame_bytes(f)) for f in message)
            send_router(self.devices_socket, device, message)

    # -- homomorphic encryption: the edge holds the global model ----------------------------------------

    def _setup_encrypted(self, he_context: Path | None, model_out: Path | None, plan: Plan) -> None:
        """The plants' secret CKKS context, the global model (version 0: the initial one) and the plant's test examples."""
        from hierfl.data.evaluation import make_plant_evaluator
        from hierfl.kernels import ravel
        from hierfl.runtime import encrypted

        if he_context is None:
            raise HomomorphicError(
                "privacy.homomorphic: an edge needs the plants' secret CKKS context: --he-context ckks-secret.bin (`hierfl keys ckks`)"
            )
        self.encrypted = encrypted
        parameters = encrypted.he.CkksParameters.of(self.topology.privacy)
        problem = encrypted.layout_problem(
            self.topology, self.net.spec, self.runtime.max_message_bytes
        )
        if problem:
            raise HomomorphicError(problem)
        self.cipher = encrypted.PlantCipher(
            encrypted.load_plant_context(he_context, self.topology), self.net.spec, parameters
        )
        self.cloud_layouts = {
            protocol.HE_AGGREGATE: (
                encrypted.CODEC,
                encrypted.cipher_layout(self.net.spec, parameters, allow_empty=True),
            )
        }
        self.global_flat = np.asarray(ravel(self.net.spec, self.net.initial_params))
        self.global_version = 0
        self.evaluation: tuple[int, dict] | None = None
        self.model_out = Path(model_out) if model_out is not None else None
        self.plant_evaluate = make_plant_evaluator(
            self.net.model, self.net.task, plan.test, self.index
        )
        self.log.info(
            "homomorphic encryption: CKKS key %s; summaries leave encrypted", self.cipher.key_id
        )

    def _take_aggregate(self, message: protocol.Message) -> None:
        """Decrypts the cloud's aggregate onto the global model (once per version), reports its scores, then starts the round.

        An aggregate under another key, or one this edge cannot catch up to, ends the edge
        with HomomorphicError: it could never contribute again, and an edge that keeps
        sending heartbeats would hold up every cloud round until its deadline.
        """
        version = int(message.header["model_version"])
        catching_up = message.header.get("catch_up") is True
        try:
            self.cipher.check_key(message)
            if self.encrypted.catch_up(self.global_version, version).apply:
                self.global_flat = self.global_flat + self.cipher.decrypt(message)
                self.global_version = version
                if not catching_up:
                    self.evaluation = (
                        version,
                        self.encrypted.release_evaluation(
                            self.plant_evaluate(unravel(self.net.spec, self.global_flat))
                        ),
                    )
                self._checkpoint()
        except (
            HomomorphicError
        ) as error:  # this edge can never take part again: it stops, naming why (exit status 2)
            self.log.error(
                "cannot use the cloud's aggregate for round %d: %s", message.round, error
            )
            raise HomomorphicError(
                f"plant {self.plant.name}: cannot use the cloud's aggregate for round {message.round}: {error}"
            ) from None
        if catching_up:
            self.log.info("caught up to global model version %d", version)
            return
        if self.evaluation is not None and self.evaluation[0] == version:
            self._send_cloud(protocol.EVALUATION, round=version, **self.evaluation[1])
        if message.header.get("final") is True:
            self._write_final_model()
            return
        self._start_cloud_round(message.round, version, self.global_flat)

    def _write_final_model(self) -> None:
        if self.model_out is None:
            self.log.warning(
                "final global model (version %d) not written: no --model-out", self.global_version
            )
            return
        from hierfl.runs.checkpoint import save_params

        save_params(self.model_out, unravel(self.net.spec, self.global_flat))
        self.log.info(
            "final global model (version %d) written to %s", self.global_version, self.model_out
        )

    def _summary_fields(
        self,
        edge_flat: np.ndarray,
        base_flat: np.ndarray,
        weight: float,
        round: int,
        key_index: int,
        variate_sum: np.ndarray,
    ) -> tuple[str, dict]:
        """The kind and payload fields of a summary of `edge_flat - base_flat`: encrypted, or through the uplink's codec
        (with SCAFFOLD's `variate_sum` after the payload)."""
        if self.cipher is not None:
            delta = np.asarray(edge_flat, np.float32) - np.asarray(base_flat, np.float32)
            return protocol.HE_SUMMARY, self.cipher.summary_fields(delta, weight, round)
        payload, residual = self.upload(
            edge_flat,
            base_flat,
            jnp.float32(weight),
            self.residual,
            jnp.int32(round),
            jnp.int32(key_index),
        )
        self.residual = np.asarray(residual)
        arrays = [*(np.asarray(a) for a in payload), *self._variate_frames(variate_sum)]
        return protocol.SUMMARY, {
            "spec": self.net.spec,
            "codec": self.net.codecs.edge_to_cloud.name,
            "arrays": arrays,
        }

    def _send_summary(self) -> None:
        kind, payload = self._summary_fields(
            self.edge_flat,
            self.global_flat,
            self.total_weight,
            self.round,
            self.index,
            self.variate_sum,
        )
        self._send_cloud(
            kind,
            round=self.round,
            edge_round=self.edge_rounds,
            **payload,
            weight=self.total_weight,
            loss=self.loss_sum,
            answered=self.answered_per_round,
            expected=len(self.devices),
            rejected=self.counters.snapshot(),
            late=self.late,
            unclipped=self.unclipped_sum,
            **({"secagg_failed": self.secagg_failed} if self.secure is not None else {}),
        )
        self.phase = IDLE
        self.finished_round = self.round
        self.summary_base = self.edge_flat
        self.offline_rounds = 0
        self._checkpoint()
        self.log.info("cloud round %d: summary sent (weight %g)", self.round, self.total_weight)

    def _send_stale_summary(self, cloud_round: int) -> None:
        """Sends the offline rounds' progress (since the last summary) as a stale summary for `cloud_round`."""
        if self.pending_weight > 0:
            key_index = (
                len(self.topology.plants) + self.index
            )  # a key apart from this round's own summary
            kind, payload = self._summary_fields(
                self.edge_flat,
                self.summary_base,
                self.pending_weight,
                cloud_round,
                key_index,
                self.pending_variate_sum,
            )
            self._send_cloud(
                kind,
                round=cloud_round,
                edge_round=self.offline_rounds,
                **payload,
                weight=self.pending_weight,
                loss=self.pending_loss,
                stale=True,
                base_version=self.finished_round,
            )
            self.log.info(
                "the cloud is back: sent %d offline edge rounds (weight %g, from version %d) as a stale summary",
                self.offline_rounds,
                self.pending_weight,
                self.finished_round,
            )
        self.offline, self.offline_rounds = False, 0
        self.pending_weight, self.pending_loss = 0.0, 0.0
        self.pending_variate_sum = np.zeros_like(self.pending_variate_sum)
        self.phase = IDLE

    # -- plumbing ---------------------------------------------------------------------------------

    def _broadcast(self, frames: list) -> None:
        """Sends to every device of the plant (those not connected are skipped by ZeroMQ)."""
        for device in self.devices:
            send_router(self.devices_socket, device, frames)

    def _cloud_variate(self) -> list[np.ndarray]:
        """The frames a model message adds under SCAFFOLD: the cloud's variate `c` (none otherwise)."""
        return [self.cloud_variate] if self.net.variates else []

    def _variate_frames(self, variate_sum: np.ndarray) -> list[np.ndarray]:
        """The frames a summary adds under SCAFFOLD: `sum_i n_i delta_c_i` over its edge rounds (none otherwise)."""
        return [variate_sum] if self.net.variates else []

    def _send_cloud(self, kind: str, **fields) -> None:
        frames = protocol.encode(kind, self.plant.name, model_version=self.model_version, **fields)
        try:
            self.cloud.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.log.warning("cloud not reachable; %s not sent", kind)

    def _checkpoint(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        encrypted = (
            {"global_flat": self.global_flat, "global_version": self.global_version}
            if self.cipher is not None
            else {}
        )
        with open(tmp, "wb") as f:
            np.savez(
                f, round=self.finished_round, residual=self.residual, late=self.late, **encrypted
            )
        tmp.replace(self.state_path)

    def _restore(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            self.log.info("no edge checkpoint to resume from; starting fresh")
            return
        with np.load(self.state_path) as state:
            self.finished_round = int(state["round"])
            self.residual = np.array(state["residual"], np.float32)
            self.late = int(state["late"])
            if self.cipher is not None and "global_version" in state:
                self.global_flat = np.array(state["global_flat"], np.float32)
                self.global_version = int(state["global_version"])
        version = (
            f" (global model version {self.global_version})" if self.cipher is not None else ""
        )
        self.log.info("resumed after cloud round %d%s", self.finished_round, version)


def update_problem(
    update: tuple[int, int], current: tuple[int, int], open_: bool, kind: str = protocol.UPDATE
) -> tuple[str, str] | None:
    """Why an update (or another device message of `kind`) for `(round, edge_round)` is not welcome now, or None.

    Returns `(reason code, message)`. `current` is the edge's (cloud round, edge round);
    `open_` whether it collects updates.
    """
    if update < current or (update == current and not open_):
        return (
            protocol.STALE_ROUND,
            f"{kind} for round {update[0]}.{update[1]}, which is closed (now {current[0]}.{current[1]})",
        )
    if update > current:
        return (
            protocol.FUTURE_ROUND,
            f"{kind} for round {update[0]}.{update[1]}, not started (now {current[0]}.{current[1]})",
        )
    return None
