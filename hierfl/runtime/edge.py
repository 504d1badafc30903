"""An edge node: one plant's server. Devices dial in to its ROUTER; it dials the cloud.

For each global model from the cloud (cloud round r) the edge runs `edge_rounds` edge
rounds: it sends its model to every live device, collects their answers until all
answered or the deadline passed, and aggregates them (fewer than
`min_device_participation` of the plant's devices leave the model unchanged); then it
sends one summary up, its change since the global model (`edge_cycle.EdgeCycle`). How a
round collects and aggregates is its `rounds` (`edge_rounds`: plain updates, or secure
aggregation's phases); how it talks to the cloud its `uplink` (`edge_uplink`: models in
and encoded summaries out, or CKKS aggregates in and encrypted summaries out). Both are
chosen once, at start-up.

Every message is checked (`protocol.parse_message`, then against the round in progress:
`update_problem`); a refused one is logged, counted and answered with `rejected`. While
the cloud is silent after a summary (`heartbeat_timeout`) the edge runs offline edge
rounds and sends them as a stale summary when it is back (not under DP). Devices join at
any time and count as gone after `heartbeat_timeout` of silence. The edge checkpoints
its last finished cloud round and its uplink's state after each summary.
"""

from __future__ import annotations

import functools
import signal
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import zmq

from hierfl.data.plan import held_out_examples, one_plant, plant_counts
from hierfl.errors import RunDirError
from hierfl.runs.live import live_status
from hierfl.runtime import census_pass, protocol
from hierfl.runtime.census_pass import PlantCensus, needs_census
from hierfl.runtime.connections import ConnectionWatch
from hierfl.runtime.curve import check_keys, start_authenticator
from hierfl.runtime.edge_cycle import COLLECTING, IDLE, STARTING, EdgeCycle, Outbox, update_problem
from hierfl.runtime.edge_pace import edge_pace
from hierfl.runtime.edge_rounds import edge_rounds
from hierfl.runtime.edge_tally import edge_variates
from hierfl.runtime.edge_uplink import FromCloud, edge_uplink
from hierfl.runtime.node import (
    Counters,
    CurveKeys,
    Membership,
    bind_router,
    check_peer_key,
    compiling_once,
    dealer,
    drain_router,
    node_logger,
    node_model,
    send_router,
    start_waiting_over,
)
from hierfl.runtime.state_files import read_arrays
from hierfl.topology import Topology

CLOUD = "cloud"
__all__ = ["EdgeNode", "update_problem"]  # update_problem: the round check, in edge_cycle


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
        status_dir: Path | None = None,
        emulate_speeds: bool = False,
    ):
        self.topology, self.plant = topology, topology.plant(plant_name)
        self.index = topology.plant_names.index(plant_name)
        self.runtime = runtime = topology.runtime
        secure = check_keys(runtime, keys)
        self.log = node_logger(f"edge {plant_name}")
        self.net = net = node_model(topology)
        self.devices = frozenset(device.id for device in self.plant.devices)
        self.members, self.counters = Membership(runtime.heartbeat_timeout), Counters()
        # A bundled task's plant part, made once if a mode needs it: secure aggregation's
        # weight bound (the plant's devices' counts) and the test examples the edge evaluates on.
        part = functools.cache(lambda: one_plant(topology, self.index))
        files = net.task.reads_files
        counts = lambda: None if files else plant_counts(topology, self.index, part()[0])  # noqa: E731
        test = (lambda: held_out_examples(topology, [self.index])) if files else lambda: part()[1]
        variates = edge_variates(net, len(self.devices))
        self.rounds = edge_rounds(
            topology, self.plant, net, variates, counts, self.log, self.counters
        )
        self.uplink = edge_uplink(
            topology,
            self.plant,
            net,
            test,
            self.log,
            he_context=he_context,
            model_out=model_out,
        )
        self.state_path = (
            Path(state_dir) / f"edge-{plant_name}.npz" if state_dir is not None else None
        )
        self.late, self.resumed = 0, resume
        self.out: dict[str, str] = {}  # devices that said they stay out, and why
        self.rows_dropped: dict[str, int] = {}  # bad rows its devices dropped from their data
        self.census = PlantCensus(net.task) if needs_census(topology, net.task) else None
        self.device_layouts = dict(self.rounds.layouts)
        self.cloud_layouts = dict(self.uplink.layouts)
        if self.census is not None:
            self.device_layouts |= census_pass.layouts(net.task, part=True)
            self.cloud_layouts |= census_pass.layouts(net.task, part=False)
        finished = self._restore() if resume else 0
        self.cycle = EdgeCycle(
            topology, self.index, net.spec, self.rounds, self.uplink, variates, self.log, finished
        )
        self.deadline, self.device_bytes = 0.0, [0, 0]  # bytes from / to devices this edge round
        self.pace = edge_pace(topology, net, self.index, emulate_speeds)
        self.live = live_status(status_dir, f"edge-{plant_name}", self._live_status)
        self.started = self.cloud_seen = time.monotonic()
        self.context = zmq.Context()
        self.auth = start_authenticator(self.context, runtime.device_keys) if secure else None
        self.devices_socket = bind_router(
            self.context, bind or self.plant.address, max_bytes=runtime.max_message_bytes, keys=keys
        )
        self.cloud = dealer(
            self.context,
            plant_name,
            max_bytes=runtime.max_message_bytes,
            keys=keys,
            server_key=runtime.cloud_key.encode() if runtime.cloud_key else None,
        )
        self.running = True

    # -- the loop ---------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compiles aggregation and upload (and CKKS's plant evaluation) before the first round."""
        clip_norm = np.float32(self.topology.privacy.clip_norm)
        with compiling_once("edge"):
            self.rounds.warm_up(jnp.zeros(self.net.spec.size, jnp.float32), clip_norm)
            self.uplink.warm_up()

    def run(self) -> None:
        self.warm_up()
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        endpoint, cloud = self.devices_socket.LAST_ENDPOINT.decode(), self.topology.cloud.address
        self.log.info("serving %d devices on %s; cloud at %s", len(self.devices), endpoint, cloud)
        self.watch = ConnectionWatch(self.devices_socket, self.runtime.heartbeat_timeout, self.log)
        self.cloud.connect(cloud)
        self._send_cloud(protocol.HELLO)
        poller = zmq.Poller()
        poller.register(self.devices_socket, zmq.POLLIN)
        poller.register(self.cloud, zmq.POLLIN)
        next_beat = time.monotonic() + self.runtime.heartbeat_interval
        try:
            while self.running:
                wait = min(next_beat - time.monotonic(), 0.05 if self.cycle.phase != IDLE else 1.0)
                events = dict(poller.poll(max(0, int(wait * 1000))))
                if self.devices_socket in events:
                    drain_router(
                        self.devices_socket,
                        self._receive_device,
                        self._refuse_device,
                        self.watch.heard,
                    )
                if self.cloud in events:
                    self._drain_cloud()
                if time.monotonic() >= next_beat:
                    self._send_cloud(protocol.HEARTBEAT)
                    self.watch.check()
                    next_beat = time.monotonic() + self.runtime.heartbeat_interval
                self._advance()
                self.live.update()
        finally:
            self.running = False
            self.live.write()
            self.uplink.close()
            self.watch.close()
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
        now, runtime, cycle = time.monotonic(), self.runtime, self.cycle
        self._census_up(now)
        for kind, fields in self.pace.due(now):
            self._send_cloud(kind, **fields)
        if cycle.may_go_offline() and now - self.cloud_seen > runtime.heartbeat_timeout:
            self._post(cycle.open_offline(self._alive()))
        elif cycle.phase == STARTING:
            if start_waiting_over(
                len(self._alive()),
                len(self.devices - set(self.out)),  # no need to wait for those that stay out
                cycle.required(),
                now - self.started,
                start_timeout=runtime.start_timeout,
                grace=runtime.heartbeat_timeout,
                resumed=self.resumed,
            ):
                self._post(cycle.open(self._alive()))
        elif cycle.phase == COLLECTING:
            waiting = (self.rounds.expected & self.members.alive()) - self.rounds.answered
            if not waiting or now >= self.deadline:
                self._post(cycle.close(self._alive(), self.device_bytes, self._health))

    def _health(self) -> dict:
        """What a summary reports of the edge itself: messages rejected by reason, late ones,
        the devices that stay out (with their reasons) and bad rows its devices dropped."""
        out = {"out": dict(self.out)} if self.out else {}
        dropped = {"rows_dropped": dict(self.rows_dropped)} if self.rows_dropped else {}
        return {"rejected": self.counters.snapshot(), "late": self.late, **out, **dropped}

    def _live_status(self) -> dict:
        """What the dashboard shows of the plant and its devices (`hierfl.runs.live`)."""
        cycle, rounds, now = self.cycle, self.rounds, time.monotonic()
        silences = self.members.silences()
        devices = {
            device: {
                "silent_for": silences.get(device),
                "expected": device in rounds.expected,
                "answered": device in rounds.answered,
            }
            for device in sorted(self.devices)
        }
        return {
            "node": f"edge-{self.plant.name}",
            "running": self.running,
            "phase": cycle.phase,
            "round": cycle.round,
            "edge_round": cycle.edge_round,
            "edge_rounds": cycle.edge_rounds,
            "deadline_in": self.deadline - now if cycle.phase == COLLECTING else None,
            "offline": cycle.offline.active,
            "resumed": self.resumed,
            "cloud_silent_for": now - self.cloud_seen,
            "heartbeat_timeout": self.runtime.heartbeat_timeout,
            "devices": devices,
            "out": dict(self.out),
            "rejected": self.counters.snapshot(),
            "refusals": list(self.counters.recent),
            "late": self.late,
        }

    def _alive(self) -> set[str]:
        return self.members.alive() & self.devices

    def _post(self, outbox: Outbox) -> None:
        """Sends what a step of the cycle produced, and keeps its deadline and checkpoint."""
        for kind, fields in self.pace.hold(outbox.cloud, time.monotonic()):
            self._send_cloud(kind, **fields)
        if outbox.opened:
            self.device_bytes = [0, 0]
        if outbox.wait is not None:
            self.deadline = time.monotonic() + outbox.wait
        for device, frames in outbox.devices.items():
            if self.census is not None and self.census.result is not None:
                if device not in self.census.informed:  # the census before any model
                    self._send_census(device)
            self.device_bytes[1] += sum(len(protocol.frame_bytes(f)) for f in frames)
            send_router(self.devices_socket, device, frames)
        if outbox.checkpoint:
            self._checkpoint()

    # -- messages from devices --------------------------------------------------------------------

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
        if self.auth is not None:
            check_peer_key(frames, message.sender, self.runtime.device_key_of)
        if message.kind == protocol.OUT:  # never a member: no round waits for it
            self.out[message.sender] = message.header["reason"]
            self.log.warning("device %s stays out: %s", message.sender, message.header["reason"])
            return
        self.out.pop(message.sender, None)  # it came back (its data fixed)
        if self.members.seen(message.sender):
            self.log.info("device %s joined", message.sender)
        self._handle_device(message)

    def _refuse_device(self, peer: bytes, error: protocol.MessageRejected) -> None:
        self.counters.reject(self.log, peer, error)
        if error.reason == protocol.STALE_ROUND:
            self.late += 1
        fields = {"round": self.cycle.round, "reason": error.reason, "detail": str(error)}
        reply = protocol.encode(protocol.REJECTED, self.plant.name, **fields)
        send_router(self.devices_socket, peer, reply)

    def _handle_device(self, message: protocol.Message) -> None:
        if message.kind == protocol.HELLO and message.header.get("rows_dropped"):
            self.rows_dropped[message.sender] = message.header["rows_dropped"]
        if message.kind in (protocol.HELLO, protocol.HEARTBEAT):
            return
        if message.kind == protocol.STATUS:
            fields = {"round": self.cycle.round, **self.status()}
            reply = protocol.encode(protocol.STATUS, self.plant.name, **fields)
            send_router(self.devices_socket, message.sender, reply)
            return
        if message.kind == protocol.CENSUS:
            self.census.take(message.sender, message.header)
            if self.census.result is not None:  # a device that reports late, or rejoins
                self._send_census(message.sender)
            return
        self.cycle.receive(message)

    # -- the census ---------------------------------------------------------------------------------

    def _census_up(self, now: float) -> None:
        """Sends the plant's census part up once its devices have reported (or waiting is over)."""
        census, runtime = self.census, self.runtime
        if census is None or census.sent or census.result is not None:
            return
        expected = self.devices - set(self.out)
        reported = census.reported() & expected
        if start_waiting_over(
            len(reported),
            len(expected),
            len(expected),
            now - self.started,
            start_timeout=runtime.start_timeout,
            grace=runtime.heartbeat_timeout,
            resumed=self.resumed,
        ):
            self._send_cloud(protocol.CENSUS, **census.plant_part())
            self.log.info("census: %d of %d devices reported", len(reported), len(expected))

    def _take_census(self, message: protocol.Message) -> None:
        """The federation's census from the cloud: kept, passed on to every device, and used
        to standardize the plant's test data."""
        if self.census.result is not None:
            return
        self.census.result = census_pass.result_from(message.header)
        self.uplink.use_census(self.census.result)
        for device in sorted(self.devices):  # those not connected are skipped by ZeroMQ
            self._send_census(device)

    def _send_census(self, device: str) -> None:
        self.census.informed.add(device)
        fields = census_pass.result_fields(self.census.result)
        send_router(
            self.devices_socket, device, protocol.encode(protocol.CENSUS, self.plant.name, **fields)
        )

    def status(self) -> dict:
        """What a `status` request answers: phase, round, live devices, rejected counts."""
        alive, rejected = sorted(self.members.alive()), self.counters.snapshot()
        return {**self.cycle.status(), "alive": alive, "rejected": rejected, "late": self.late}

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
                stop = protocol.encode(protocol.STOP, self.plant.name, round=self.cycle.round)
                for device in self.devices:  # those not connected are skipped by ZeroMQ
                    send_router(self.devices_socket, device, stop)
                self.running = False
                return
            if message.kind == protocol.CENSUS:
                self._take_census(message)
            elif message.kind == protocol.REJECTED:
                self.log.warning("the cloud rejected our message: %s", message.header.get("detail"))
            elif message.kind in self.uplink.layouts:
                self._take(self.uplink.receive(message))

    def _take(self, taken: FromCloud) -> None:
        if taken.changed:
            self._checkpoint()
        for kind, fields in taken.replies:
            self._send_cloud(kind, **fields)
        if taken.model is not None:
            self.pace.started(time.monotonic())
            self._post(self.cycle.start(taken.model, self._alive()))

    # -- plumbing ---------------------------------------------------------------------------------

    def _send_cloud(self, kind: str, **fields) -> None:
        fields = {"model_version": self.cycle.model_version, **fields}
        frames = protocol.encode(kind, self.plant.name, **fields)
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
        round_ = self.cycle.finished_round
        with open(tmp, "wb") as f:
            np.savez(f, round=round_, late=self.late, **self.uplink.state())
        tmp.replace(self.state_path)

    def _restore(self) -> int:
        """Reads the checkpoint back (the late count, the uplink's state): the last finished cloud round."""
        if self.state_path is None or not self.state_path.exists():
            self.log.info("no edge checkpoint to resume from; starting fresh")
            return 0
        state = read_arrays(self.state_path, "edge state file", ("round", "late", "residual"))
        try:
            finished_round, self.late = int(state["round"]), int(state["late"])
            version = self.uplink.restore(state)
        except (TypeError, ValueError) as error:  # arrays of the wrong shape or kind
            raise RunDirError(
                f"{self.state_path}: not this edge's state ({error}); move it away to start afresh"
            ) from None
        self.log.info("resumed after cloud round %d%s", finished_round, version)
        return finished_round
