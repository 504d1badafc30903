"""A device node: dials its plant's edge, trains on every model it receives, sends the update up.

The device owns its examples (read from its own files, or generated from the seed as the
simulator's plan does: `hierfl.runtime.device_data`) and the error-feedback residual of
its uplink. It never binds a port: behind a plant firewall it
only dials out. It greets the edge with `hello`, sends a `heartbeat` every
`heartbeat_interval` seconds while idle, and answers each `model` message of its edge
with one `update`. When several models are queued (it was slow), only the newest is
trained. It exits on `stop`, SIGTERM or Ctrl-C.

With SCAFFOLD the device also owns its control variate `c_i`, and under `[privacy]
secure_aggregation` its result leaves only masked: both are modes of
`hierfl.runtime.device_modes`, chosen once at start-up.

A `DeviceNode` needs no process of its own: `serve` runs any number of them from one
thread, one poll over all their sockets, and a device host (`hierfl.runtime.host`) runs
many devices of a plant that way, sharing one `DeviceSetup` (the data source and the
compiled step) and one ZeroMQ context. Each keeps its own socket and routing id, so its edge sees
the same device either way.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import zmq

from hierfl.core.algorithms import DeviceData
from hierfl.core.attack import attacker_mask
from hierfl.core.steps import DeviceOutput, make_device_step
from hierfl.data import census
from hierfl.data.census import Census
from hierfl.data.loading import topology_task
from hierfl.privacy.config import DpConfig
from hierfl.runtime import census_pass, protocol
from hierfl.runtime.census_pass import needs_census
from hierfl.runtime.curve import check_keys
from hierfl.runtime.device_data import OwnFiles, PlanShards, PlantShards, device_data_source
from hierfl.runtime.device_modes import NoVariate, PlainUpload, SecureUpload, VariateMemory
from hierfl.runtime.node import (
    CurveKeys,
    NodeModel,
    compiling_once,
    connect_dealer,
    dealer,
    node_logger,
    node_model,
    node_name,
    tuning_model,
)
from hierfl.runtime.secagg_rounds import plant_secure_aggregation
from hierfl.topology import Topology

STAYED_OUT = 3
"""A device process's exit status when its data cannot be used: it logged why and stayed
out of training (the launcher tells it apart from a crash; the others train on)."""

STAYS_OUT = "stays out: "
"""How a device's log line saying why it stayed out begins (after the logger's prefix)."""


@dataclasses.dataclass(frozen=True)
class DeviceSetup:
    """What every device of a federation derives alike from the topology.

    `data` is where each device's examples come from (its own files, or the plan of a
    task that generates its data), `net` the model and its layouts, `step` the jitted
    `steps.make_device_step`, and `tune_step` the one of fine-tuning rounds (None unless
    `[personalization] method = "fine-tune"`). A device host builds one and shares it among
    its devices, so they compile one training step between them.
    """

    data: OwnFiles | PlantShards | PlanShards
    net: NodeModel
    step: Callable[..., DeviceOutput]
    dp: DpConfig | None
    tune_step: Callable[..., DeviceOutput] | None = None
    with_census: dict[float, DeviceSetup] = dataclasses.field(default_factory=dict, repr=False)

    def after_census(self, topology: Topology, found: Census) -> DeviceSetup:
        """The setup to train with once the census is in: under FedNova, the model and steps
        built with the census's effective step count (once for all devices of a host)."""
        effective = found.effective_steps
        if effective is None or topology.federation.algorithm != "fednova":
            return self
        if effective not in self.with_census:
            self.with_census[effective] = build_setup(
                topology, self.data, self.dp, effective=effective
            )
        return self.with_census[effective]


def device_setup(topology: Topology, plant: str, data: str | None = None) -> DeviceSetup:
    """Builds the data source of devices of `plant`, the model and the training steps (each
    traced on its first call, compiled once). `data` is the `--data` path template given on
    this machine, if any."""
    source = device_data_source(topology, topology_task(topology), plant, data)
    return build_setup(topology, source, DpConfig.of(topology), counts=source.counts)


def build_setup(
    topology: Topology,
    data: OwnFiles | PlantShards | PlanShards,
    dp: DpConfig | None,
    *,
    counts: np.ndarray | None = None,
    effective: float | None = None,
) -> DeviceSetup:
    """The model and steps for `data`, from the plan's `counts` or the census's `effective` steps."""
    net = node_model(topology, counts, effective)
    tuning = tuning_model(topology, net, counts, effective)
    tune_step = None if tuning is None else device_step(topology, tuning, dp)
    return DeviceSetup(data, net, device_step(topology, net, dp), dp, tune_step)


def device_step(
    topology: Topology, net: NodeModel, dp: DpConfig | None
) -> Callable[..., DeviceOutput]:
    """The jitted `steps.make_device_step` of `net`'s algorithm."""
    return jax.jit(
        make_device_step(
            net.algorithm,
            net.spec,
            net.codecs.device_to_edge,
            topology.federation.seed,
            dp,
            topology.attack,
            attacker_mask(topology),
        )
    )


class DeviceNode:
    """One device of `topology`, by id `plant/line/name`. `run()` serves until stopped.

    `setup` (default: built here) and `context` (default: a context of its own) let a
    device host share both among its devices. `state_dir` holds its SCAFFOLD variate
    (read back with `resume`). `examples` are the device's `(x, y, count)` when read
    already (default: read from `setup.data` here; DataError if they cannot be used).
    """

    def __init__(
        self,
        topology: Topology,
        device_id: str,
        *,
        keys: CurveKeys | None = None,
        state_dir: Path | None = None,
        resume: bool = False,
        setup: DeviceSetup | None = None,
        context: zmq.Context | None = None,
        examples: tuple[np.ndarray, np.ndarray, int] | None = None,
    ):
        self.topology = topology
        self.device = topology.device(device_id)
        self.plant = topology.plant(self.device.plant)
        self.runtime = topology.runtime
        check_keys(self.runtime, keys)
        self.log = node_logger(device_id)
        self.setup = setup = setup or device_setup(topology, self.device.plant)
        self.net, self.step, self.dp = setup.net, setup.step, setup.dp
        self.tune_step = setup.tune_step
        x, y, count = examples or setup.data.examples(self.device)
        self.rows_dropped = setup.data.rows_dropped(self.device)
        steps = jnp.int32(topology.device_steps[self.device.index])
        x_train = self.net.model.features(x)  # once, not at every step
        self.data = DeviceData(jnp.asarray(x_train), jnp.asarray(y), jnp.int32(count), steps)
        codec = self.net.codecs.device_to_edge
        self.residual = jnp.zeros((codec.residual_size,), jnp.float32)
        self.layouts = {protocol.MODEL: ("none", self.net.model_layout)}
        # With a census, the device reports its part and trains once the result is in.
        self.raw_x = x if needs_census(topology, self.net.task) else None
        if self.raw_x is not None:
            self.layouts |= census_pass.layouts(self.net.task, part=False)
        state_path = Path(state_dir) / f"{node_name(device_id)}.npy" if state_dir else None
        self.variate = (
            VariateMemory(self.net.spec.size, state_path, resume, self.log)
            if self.net.variates
            else NoVariate()
        )
        self.upload = self._upload_mode(topology, setup.data.counts)
        self.owns_context = context is None
        self.context = zmq.Context() if context is None else context
        server_key = self.runtime.edge_keys.get(self.plant.name, "").encode() or None
        self.socket = dealer(
            self.context,
            device_id,
            max_bytes=self.runtime.max_message_bytes,
            keys=keys,
            server_key=server_key,
        )
        self.running = True
        self.model_version = 0

    def warm_up(self) -> None:
        """Compiles the training steps before joining, so the first round is not late."""
        with compiling_once("device"):
            for step in (self.step, self.tune_step):
                if step is not None:
                    self._warm_up(step)

    def _warm_up(self, step: Callable[..., DeviceOutput]) -> None:
        flat = np.zeros(self.net.spec.size, np.float32)
        step(
            flat,
            self.data,
            self.residual,
            jnp.int32(0),
            jnp.int32(0),
            jnp.int32(self.device.index),
            self._clip_norm({}),
            self.variate.value,
            flat if self.net.variates else None,
        )

    def run(self) -> None:
        self.warm_up()
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        serve([self])

    def stop(self) -> None:
        self.running = False

    def join(self) -> None:
        """Greets the edge (with its census part, when there is a census); the edge sends
        this device the model from the next edge round on."""
        self.socket.connect(self.plant.address)
        if self.rows_dropped:
            self.log.warning(
                'dropped %d bad rows of its data (on_bad_rows = "drop")', self.rows_dropped
            )
            self._send(protocol.HELLO, rows_dropped=self.rows_dropped)
        else:
            self._send(protocol.HELLO)
        if self.raw_x is not None:
            count = int(self.data.count)
            steps = self.topology.device_steps[self.device.index]
            fednova = self.topology.federation.algorithm == "fednova"
            part = census.part_of(
                self.raw_x[:count], self.net.task.standardize, steps if fednova else None
            )
            self._send(protocol.CENSUS, **census_pass.part_fields(part))
        self.log.info(
            "joined %s at %s (%d examples)",
            self.plant.name,
            self.plant.address,
            int(self.data.count),
        )

    def heartbeat(self) -> None:
        self._send(protocol.HEARTBEAT)

    def handle_messages(self) -> None:
        """Handles what is queued on the socket (call it when the socket polls readable)."""
        self._handle_queue()

    def close(self) -> None:
        self.socket.close(linger=200)
        if self.owns_context:
            self.context.term()
        self.log.info("stopped")

    def _handle_queue(self) -> None:
        """Reads every queued message; trains on the newest model among them."""
        latest = None
        while True:
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                message = protocol.parse_message(
                    frames,
                    senders={self.plant.name},
                    spec=self.net.spec,
                    layouts=self.layouts,
                    max_bytes=self.runtime.max_message_bytes,
                )
            except protocol.MessageRejected as error:
                self.log.warning("rejected message from the edge: %s: %s", error.reason, error)
                continue
            if message.kind == protocol.STOP:
                self.log.info("the edge says stop")
                self.running = False
                return
            if message.kind == protocol.CENSUS:
                self._take_census(message)
            elif message.kind == protocol.MODEL:
                latest = message
            elif message.kind in protocol.SECAGG_FROM_EDGE:
                self.upload.answer(message, self.model_version)
        if latest is not None and self.raw_x is not None:
            self.log.info("round %d: no census result yet; model skipped", latest.round)
        elif latest is not None:
            self._train(latest)

    def _take_census(self, message: protocol.Message) -> None:
        """The federation's census: examples standardized with it, training may start."""
        if self.raw_x is None:
            return  # had it already (the edge sends it again to devices that rejoin)
        found = census_pass.result_from(message.header)
        x = self.net.model.features(found.standardize(self.raw_x))
        self.data = self.data._replace(x=jnp.asarray(x))
        self.raw_x = None
        setup = self.setup.after_census(self.topology, found)
        self.net, self.step, self.tune_step = setup.net, setup.step, setup.tune_step
        self.log.info("census: %d examples in the federation", found.examples)

    def _train(self, message: protocol.Message) -> None:
        """Trains from the message's model (through the fine-tuning step where it is marked
        `fine_tune` and this topology fine-tunes) and sends the result up."""
        started = time.perf_counter()
        tuning = protocol.header_flag(message.header, "fine_tune")
        step = self.tune_step if tuning and self.tune_step is not None else self.step
        out = step(
            message.arrays[0],
            self.data,
            self.residual,
            jnp.int32(message.round),
            jnp.int32(message.edge_round),
            jnp.int32(self.device.index),
            self._clip_norm(message.header),
            self.variate.value,
            self.variate.cloud_variate(message),
        )
        self.residual = out.residual
        variate = self.variate.frames(out)
        self.model_version = int(message.header["model_version"])
        if not bool(out.ok):
            self.log.warning(
                "round %d.%d: local training diverged (non-finite); sending weight 0",
                message.round,
                message.edge_round,
            )
        self.upload.upload(message, out, variate, self.model_version)
        self.log.info(
            "round %d.%d: trained in %.3f s, loss %.4f",
            message.round,
            message.edge_round,
            time.perf_counter() - started,
            float(out.loss),
        )

    def _upload_mode(
        self, topology: Topology, counts: np.ndarray | None
    ) -> PlainUpload | SecureUpload:
        """How this device's results leave: plainly, or masked by secure aggregation."""
        if topology.privacy.secure_aggregation:
            secure = plant_secure_aggregation(topology, self.plant, counts, self.net.spec)
            return SecureUpload(self.device.id, self.net.spec, secure, self._send_frames, self.log)
        codec = self.net.codecs.device_to_edge.name
        return PlainUpload(
            self.device.id, self.net.spec, codec, self.dp is not None, self._send_frames, self.log
        )

    def _clip_norm(self, header: dict) -> np.float32:
        """The DP clip norm the edge's model message carries (adaptive clipping moves it), else the file's."""
        return np.float32(
            protocol.header_number(header, "clip_norm", self.topology.privacy.clip_norm)
        )

    def _send(self, kind: str, **fields) -> None:
        frames = protocol.encode(kind, self.device.id, model_version=self.model_version, **fields)
        self._send_frames(frames, kind)

    def _send_frames(self, frames: list, kind: str) -> None:
        try:
            self.socket.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.log.warning("edge not reachable; %s not sent", kind)


def stay_out(
    topology: Topology,
    device_id: str,
    reason: str,
    *,
    keys: CurveKeys | None = None,
    context: zmq.Context | None = None,
) -> None:
    """Logs why device `device_id` stays out of training and tells its edge (an `out`
    message, which the edge reports up with its summaries: the metrics name the device).

    Waits for the message to leave at most the start timeout (the edge may still be
    starting), capped at a minute.
    """
    log = node_logger(device_id)
    log.error("%s%s", STAYS_OUT, reason)
    plant = topology.plant(topology.device(device_id).plant)
    runtime = topology.runtime
    own = context is None
    context = zmq.Context() if own else context
    server_key = runtime.edge_keys.get(plant.name, "").encode() or None
    socket = connect_dealer(
        context,
        plant.address,
        device_id,
        max_bytes=runtime.max_message_bytes,
        keys=keys,
        server_key=server_key,
    )
    reason = reason[: protocol.MAX_REASON]
    socket.send_multipart(protocol.encode(protocol.OUT, device_id, reason=reason))
    socket.close(linger=int(1000 * min(runtime.start_timeout, 60.0)))
    if own:
        context.term()


def serve(nodes: Sequence[DeviceNode]) -> None:
    """Serves `nodes` from this thread until each has stopped (its edge said stop, or `stop()`).

    One poll over all their sockets: a readable device handles its queue (training on the
    newest model), one device after the other, since they share this process's CPU. Every
    `heartbeat_interval` each live device sends a heartbeat, also between two devices'
    training, so devices waiting their turn behind many others are not taken for gone.
    Closes each device's socket once it stopped, and all that are left on the way out.
    """
    live = {node.socket: node for node in nodes}
    poller = zmq.Poller()
    for node in nodes:
        node.join()
        poller.register(node.socket, zmq.POLLIN)
    interval = min(node.runtime.heartbeat_interval for node in nodes)
    next_beat = time.monotonic() + interval

    def beat_if_due() -> None:
        nonlocal next_beat
        if time.monotonic() >= next_beat:
            for node in live.values():
                node.heartbeat()
            next_beat = time.monotonic() + interval

    try:
        while live:
            for socket, _ in poller.poll(max(0, int((next_beat - time.monotonic()) * 1000))):
                live[socket].handle_messages()
                beat_if_due()
            beat_if_due()
            for socket in [s for s, node in live.items() if not node.running]:
                poller.unregister(socket)
                live.pop(socket).close()
    finally:
        for node in live.values():
            node.close()
