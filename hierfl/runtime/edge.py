"""An edge node: one plant's server. Devices dial in to its ROUTER; it dials the cloud.

For each global model from the cloud (cloud round r) the edge runs `edge_rounds` edge
rounds: it sends its model to every live device, collects their answers until all
answered or the deadline passed, and aggregates them (fewer than
`min_device_participation` of the plant's devices leave the model unchanged); then it
sends one summary up, its change since the global model. How a round collects and
aggregates is its `rounds` (`edge_rounds`: plain updates, or secure aggregation's
phases); how it talks to the cloud its `uplink` (`edge_uplink`: models in and encoded
summaries out, or CKKS aggregates in and encrypted summaries out). Both are chosen once.

Every message is checked (`protocol.parse_message`, then against the round in progress:
`update_problem`); a refused one is logged, counted and answered with `rejected`. While
the cloud is silent after a summary (`heartbeat_timeout`) the edge runs up to
`edge_rounds` offline rounds and sends them as a stale summary when it is back
(`edge_tally.OfflineRounds`; not under DP). Devices join at any time and count as gone
after `heartbeat_timeout` of silence. The edge checkpoints after each summary.
"""

from __future__ import annotations

import functools
import math
import signal
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import zmq

from hierfl.data.plan import make_plan
from hierfl.privacy.config import DpConfig
from hierfl.runtime import protocol
from hierfl.runtime.curve import check_keys, start_authenticator
from hierfl.runtime.edge_rounds import edge_rounds
from hierfl.runtime.edge_tally import OfflineRounds, Tally, edge_variates
from hierfl.runtime.edge_uplink import CloudModel, FromCloud, edge_uplink
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
        self.topology, self.plant = topology, topology.plant(plant_name)
        self.index = topology.plant_names.index(plant_name)
        self.runtime = runtime = topology.runtime
        secure = check_keys(runtime, keys)
        self.log = node_logger(f"edge {plant_name}")
        self.net = node_model(topology)
        self.devices = frozenset(device.id for device in self.plant.devices)
        self.edge_rounds = topology.federation.edge_rounds
        self.members, self.counters = Membership(runtime.heartbeat_timeout), Counters()
        plan = functools.cache(lambda: make_plan(topology))  # built once, if a mode needs it
        self.variates = edge_variates(self.net, len(self.devices))
        self.rounds = edge_rounds(
            topology, self.plant, self.net, self.variates, plan, self.log, self.counters
        )
        self.uplink = edge_uplink(
            topology,
            self.plant,
            self.net,
            plan,
            self.log,
            he_context=he_context,
            model_out=model_out,
        )
        offline_limit = 0 if DpConfig.of(topology) is not None else self.edge_rounds
        self.offline = OfflineRounds(offline_limit, Tally(self.variates.zeros()))
        self.clip_norm = np.float32(topology.privacy.clip_norm)
        self.state_path = (
            Path(state_dir) / f"edge-{plant_name}.npz" if state_dir is not None else None
        )
        self.late, self.finished_round = 0, 0
        self.opened_once, self.resumed = False, resume
        if resume:
            self._restore()
        self.phase, self.round, self.edge_round = IDLE, 0, 0
        self.model_version = self.uplink.version  # what hello tells the cloud
        self.deadline, self.device_bytes = 0.0, [0, 0]  # bytes from / to devices this edge round
        self.started = self.cloud_seen = time.monotonic()
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
        """Compiles aggregation and upload (and CKKS's plant evaluation) before the first round."""
        self.rounds.warm_up(jnp.zeros(self.net.spec.size, jnp.float32), self.clip_norm)
        self.uplink.warm_up()

    def run(self) -> None:
        self.warm_up()
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        endpoint = self.devices_socket.LAST_ENDPOINT.decode()
        cloud_address = self.topology.cloud.address
        self.log.info(
            "serving %d devices on %s; cloud at %s", len(self.devices), endpoint, cloud_address
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
                    drain_router(self.devices_socket, self._receive_device, self._refuse_device)
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
        now, runtime = time.monotonic(), self.runtime
        silent = now - self.cloud_seen > runtime.heartbeat_timeout
        if self.phase == IDLE and self.opened_once and self.offline.may_open() and silent:
            self._open_offline_round()
        elif self.phase == STARTING:
            alive = len(self.members.alive() & self.devices)
            required = math.ceil(runtime.min_device_participation * len(self.devices))
            if start_waiting_over(
                alive,
                len(self.devices),
                required,
                now - self.started,
                start_timeout=runtime.start_timeout,
                grace=runtime.heartbeat_timeout,
                resumed=self.resumed,
            ):
                self._open_edge_round()
        elif self.phase == COLLECTING:
            waiting = (self.rounds.expected & self.members.alive()) - self.rounds.answered
            if not waiting or now >= self.deadline:
                self._close_edge_round()

    # -- messages from devices --------------------------------------------------------------------

    def _receive_device(self, peer: bytes, frames: list) -> None:
        self.device_bytes[0] += sum(len(protocol.frame_bytes(f)) for f in frames)
        message = protocol.parse_message(
            frames,
            senders=self.devices,
            spec=self.net.spec,
            layouts=self.rounds.layouts,
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
        fields = {"round": self.round, "reason": error.reason, "detail": str(error)}
        send_router(
            self.devices_socket, peer, protocol.encode(protocol.REJECTED, self.plant.name, **fields)
        )

    def _handle_device(self, message: protocol.Message) -> None:
        if message.kind in (protocol.HELLO, protocol.HEARTBEAT):
            return
        if message.kind == protocol.STATUS:
            reply = protocol.encode(
                protocol.STATUS, self.plant.name, round=self.round, **self.status()
            )
            send_router(self.devices_socket, message.sender, reply)
            return
        if message.kind not in self.rounds.kinds:
            raise protocol.MessageRejected(protocol.UNEXPECTED, unwelcome_kind(message.kind))
        problem = update_problem(
            (message.round, message.edge_round),
            (self.round, self.edge_round),
            self.phase == COLLECTING,
            message.kind,
        )
        if problem is not None:
            raise protocol.MessageRejected(*problem)
        self.rounds.receive(message)

    def status(self) -> dict:
        """What a `status` request answers: phase, round, live devices, rejected counts."""
        return {
            "phase": self.phase,
            "edge_round_open": self.edge_round,
            "alive": sorted(self.members.alive()),
            "rejected": self.counters.snapshot(),
            "late": self.late,
            "finished_round": self.finished_round,
            **self.rounds.status(self.phase == COLLECTING),
        }

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
                    layouts=self.uplink.layouts,
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
            elif message.kind in self.uplink.layouts:
                self._take(self.uplink.receive(message))

    def _take(self, taken: FromCloud) -> None:
        if taken.changed:
            self._checkpoint()
        for kind, fields in taken.replies:
            self._send_cloud(kind, **fields)
        if taken.model is not None:
            self._start_cloud_round(taken.model)

    def _start_cloud_round(self, model: CloudModel) -> None:
        if self.offline.active:
            self._send_stale_summary(model.round)
        elif model.round < self.round or (model.round == self.round and self.phase != IDLE):
            self.log.info(
                "ignoring the cloud's model for round %d (at round %d, %s)",
                model.round,
                self.round,
                self.phase,
            )
            return
        if self.phase != IDLE:
            self.log.warning(
                "cloud round %d started before this edge finished round %d; abandoning it",
                model.round,
                self.round,
            )
        self.round, self.edge_round, self.model_version = model.round, 0, model.version
        self.clip_norm = np.float32(model.clip_norm)
        self.global_flat = self.edge_flat = np.array(model.flat)
        self.variate_frames = list(model.variate_frames)
        self.tally = Tally(self.variates.zeros())
        self.phase = COLLECTING if self.opened_once else STARTING
        if self.opened_once:
            self._open_edge_round()

    # -- edge rounds ------------------------------------------------------------------------------

    def _open_edge_round(self) -> None:
        self.opened_once, self.phase = True, COLLECTING
        invited = self.members.alive() & self.devices
        self.deadline = time.monotonic() + self.runtime.device_deadline
        self.device_bytes = [0, 0]
        self.rounds.open(invited, self.round, self.edge_round, self.model_version)
        frames = protocol.encode(
            protocol.MODEL,
            self.plant.name,
            round=self.round,
            edge_round=self.edge_round,
            model_version=self.model_version,
            spec=self.net.spec,
            codec="none",
            arrays=[self.edge_flat, *self.variate_frames],
            clip_norm=float(self.clip_norm),
        )
        self._send_devices({device: frames for device in sorted(invited)})

    def _open_offline_round(self) -> None:
        """An edge round while the cloud is silent: numbered as the next cloud round, from the edge's own model."""
        if not self.offline.active:
            self.log.warning(
                "the cloud is silent; running offline edge rounds from the plant model"
            )
            self.offline.active = True
            self.round, self.edge_round = self.finished_round + 1, 0
        self._open_edge_round()

    def _close_edge_round(self) -> None:
        phase = self.rounds.next_phase()
        if phase is not None:  # secure aggregation's next phase
            frames, seconds = phase
            self._send_devices(frames)
            self.deadline = time.monotonic() + seconds
            return
        tally = self.offline.tally if self.offline.active else self.tally
        answered, total = len(self.rounds.answered), len(self.devices)
        required = math.ceil(self.runtime.min_device_participation * total)
        tally.add_variates(self.rounds.variate_sum())
        if answered >= required and answered > 0:
            result = self.rounds.aggregate(
                self.edge_flat, self.round, self.edge_round, self.clip_norm
            )
            self.edge_flat = result.edge_flat
            tally.add(result)
        else:
            self.log.warning(
                "edge round %d.%d: %d of %d devices answered (need %d); model unchanged",
                self.round,
                self.edge_round,
                answered,
                total,
                required,
            )
        missing = sorted(self.rounds.expected - self.rounds.answered)
        self.log.info(
            "edge round %d.%d closed: %d/%d answered%s; %d bytes from devices, %d to them",
            self.round,
            self.edge_round,
            answered,
            total,
            f", missing {', '.join(missing)}" if missing else "",
            *self.device_bytes,
        )
        self.edge_round += 1
        if self.offline.active:
            self.offline.rounds += 1
            self.phase = IDLE
            return
        tally.answered.append(answered)
        if self.edge_round < self.edge_rounds:
            self._open_edge_round()
        else:
            self._send_summary()

    # -- summaries --------------------------------------------------------------------------------

    def _send_summary(self) -> None:
        tally = self.tally
        kind, payload = self.uplink.summary(
            self.edge_flat,
            self.global_flat,
            tally.weight,
            self.round,
            self.index,
            self.variates.frames(tally.variate_sum),
        )
        self._send_cloud(
            kind,
            round=self.round,
            edge_round=self.edge_rounds,
            **payload,
            weight=tally.weight,
            loss=tally.loss,
            answered=tally.answered,
            expected=len(self.devices),
            rejected=self.counters.snapshot(),
            late=self.late,
            unclipped=tally.unclipped,
            **self.rounds.summary_fields(),
        )
        self.phase = IDLE
        self.finished_round = self.round
        self.offline.summarized(self.edge_flat)
        self._checkpoint()
        self.log.info("cloud round %d: summary sent (weight %g)", self.round, tally.weight)

    def _send_stale_summary(self, cloud_round: int) -> None:
        """Sends the offline rounds' progress (since the last summary) as a stale summary for `cloud_round`."""
        offline = self.offline
        if offline.tally.weight > 0:
            kind, payload = self.uplink.summary(
                self.edge_flat,
                offline.base,
                offline.tally.weight,
                cloud_round,
                len(self.topology.plants) + self.index,  # a key apart from the round's summary
                self.variates.frames(offline.tally.variate_sum),
            )
            self._send_cloud(
                kind,
                round=cloud_round,
                edge_round=offline.rounds,
                **payload,
                weight=offline.tally.weight,
                loss=offline.tally.loss,
                stale=True,
                base_version=self.finished_round,
            )
            self.log.info(
                "the cloud is back: sent %d offline edge rounds (weight %g, from version %d) as a stale summary",
                offline.rounds,
                offline.tally.weight,
                self.finished_round,
            )
        offline.sent(self.variates.zeros())
        self.phase = IDLE

    # -- plumbing ---------------------------------------------------------------------------------

    def _send_devices(self, frames: dict[str, list]) -> None:
        """Sends each device its frames, counting the bytes."""
        for device, message in frames.items():
            self.device_bytes[1] += sum(len(protocol.frame_bytes(f)) for f in message)
            send_router(self.devices_socket, device, message)

    def _broadcast(self, frames: list) -> None:
        """Sends to every device of the plant (those not connected are skipped by ZeroMQ)."""
        for device in self.devices:
            send_router(self.devices_socket, device, frames)

    def _send_cloud(self, kind: str, **fields) -> None:
        frames = protocol.encode(kind, self.plant.name, model_version=self.model_version, **fields)
        try:
            self.cloud.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.log.warning("cloud not reachable; %s not sent", kind)

    def _checkpoint(self) -> None:
        """Writes the last finished cloud round, the late count and the uplink's state, atomically."""
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, round=self.finished_round, late=self.late, **self.uplink.state())
        tmp.replace(self.state_path)

    def _restore(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            self.log.info("no edge checkpoint to resume from; starting fresh")
            return
        with np.load(self.state_path) as state:
            self.finished_round = int(state["round"])
            self.late = int(state["late"])
            version = self.uplink.restore(state)
        self.log.info("resumed after cloud round %d%s", self.finished_round, version)


def unwelcome_kind(kind: str) -> str:
    """Why a device message of `kind` is not one this edge's rounds collect."""
    if kind in protocol.SECAGG_FROM_DEVICE:
        return f"{kind}: this plant runs no secure aggregation"
    return f"devices do not send {kind} messages"


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
