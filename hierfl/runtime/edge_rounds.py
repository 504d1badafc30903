"""How an edge round collects its devices' answers and aggregates them: one object per mode.

`PlainRounds` takes one `update` per device into row k of a `[K, P]` stack and applies
the plant's rule (`steps.make_edge_step`). `SecureRounds` (`[privacy] secure_aggregation`)
runs the four phases of secure aggregation (`secagg_rounds.EdgeRound`) and applies the
survivors' sum as a mean-rule round (`steps.make_edge_sum_step`); a failed phase leaves
the model unchanged and counts 0 devices answered. Both jit their step once.

The edge's shell drives either the same way (`EdgeRounds`): `open` with the devices
invited, `receive` each checked message of the round in progress (MessageRejected when
it does not belong), `next_phase` when everyone answered or time is up (frames that open
another phase, or None when collecting is over), then `aggregate` if enough answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.core import steps
from hierfl.core.steps import aligned_zeros
from hierfl.errors import SecAggError
from hierfl.kernels import Codec
from hierfl.privacy.config import DpConfig
from hierfl.runtime import protocol
from hierfl.runtime.edge_tally import NoVariates, VariateSums
from hierfl.runtime.node import Counters, NodeModel
from hierfl.runtime.secagg_rounds import EdgeRound, plant_secure_aggregation
from hierfl.topology import Plant, Topology


class RoundResult(NamedTuple):
    """An aggregated edge round: the edge's new model `[P]`, the weight it counts, the loss
    sum of its devices and (adaptive clipping) the noised count of unclipped updates."""

    edge_flat: np.ndarray
    weight: float
    loss: float
    unclipped: float


class EdgeRounds(Protocol):
    """What the shell asks of a mode of collecting (see the module docstring)."""

    kinds: tuple[str, ...]  # the device message kinds it collects
    layouts: dict  # `protocol.parse_message` layouts of those that carry arrays
    expected: set[str]  # the devices asked in the phase in progress
    answered: set[str]  # those that answered (after collecting: the devices in the aggregate)

    def warm_up(self, edge_flat: jax.Array, clip_norm: np.float32) -> None: ...
    def open(self, invited: Collection[str], round: int, edge_round: int, version: int) -> None: ...
    def receive(self, message: protocol.Message) -> None: ...
    def next_phase(self) -> tuple[dict[str, list], float] | None: ...
    def variate_sum(self) -> np.ndarray: ...
    def aggregate(self, edge_flat, round: int, edge_round: int, clip_norm) -> RoundResult: ...
    def status(self, collecting: bool) -> dict: ...
    def summary_fields(self) -> dict: ...


def edge_rounds(
    topology: Topology,
    plant: Plant,
    net: NodeModel,
    variates: VariateSums | NoVariates,
    counts: Callable[[], np.ndarray],
    log: logging.Logger,
    counters: Counters,
) -> EdgeRounds:
    """The plant's mode of collecting; `counts()` gives the devices' example counts (secure
    aggregation's weight bound: the plant's own, the others' zero)."""
    index = topology.plant_names.index(plant.name)
    if topology.privacy.secure_aggregation:
        return SecureRounds(topology, plant, net, counts(), index, log, counters)
    return PlainRounds(topology, plant, net, variates, index)


def _result(outcome: steps.EdgeOutcome, loss: float) -> RoundResult:
    return RoundResult(
        np.asarray(outcome.edge_flat), float(outcome.weight), loss, float(outcome.unclipped)
    )


def _decoder(codec: Codec) -> Callable[[tuple], np.ndarray]:
    """The receiving half of the device link, jitted once; the identity codec's payload is
    the update itself."""
    if codec.name == "none":
        return lambda payload: payload[0]
    return jax.jit(steps.make_decode(codec))


class PlainRounds:
    """Edge rounds of plain `update`s: decoded into a `[K, P]` stack, the plant's rule over it."""

    kinds = (protocol.UPDATE,)

    def __init__(
        self,
        topology: Topology,
        plant: Plant,
        net: NodeModel,
        variates: VariateSums | NoVariates,
        index: int,
    ):
        devices, codec = len(plant.devices), net.codecs.device_to_edge
        self.net, self.index, self.variates = net, index, variates
        self.rows = {device.id: row for row, device in enumerate(plant.devices)}
        self.layouts = {protocol.UPDATE: (codec.name, net.device_layout)}
        dp, seed = DpConfig.of(topology), topology.federation.seed
        self.step = jax.jit(steps.make_edge_step(topology.edge_rule(plant), dp, seed))
        self.decode = _decoder(codec)
        self.deltas = aligned_zeros((devices, net.spec.size))
        self.weights = np.zeros(devices, np.float32)
        self.losses = np.zeros(devices, np.float32)
        self.unclipped = np.zeros(devices, np.float32)
        self.expected: set[str] = set()
        self.answered: set[str] = set()

    def warm_up(self, edge_flat: jax.Array, clip_norm: np.float32) -> None:
        self.aggregate(edge_flat, 0, 0, clip_norm)
        frames = self.net.device_layout.frames
        self.decode(self.net.payload(tuple(np.zeros(shape, dtype) for dtype, shape in frames)))

    def open(self, invited: Collection[str], round: int, edge_round: int, version: int) -> None:
        self.expected, self.answered = set(invited), set()
        self.weights[:] = 0
        self.unclipped[:] = 0

    def receive(self, message: protocol.Message) -> None:
        """Keeps a checked update of the round in progress; DUPLICATE for a second one."""
        if message.sender in self.answered:
            raise protocol.MessageRejected(
                protocol.DUPLICATE,
                f"second update from {message.sender} in round {message.round}.{message.edge_round}",
            )
        row = self.rows[message.sender]
        self.deltas[row] = np.asarray(self.decode(self.net.payload(message.arrays)))
        self.variates.take(row, message.arrays)
        self.weights[row] = message.header["weight"]
        self.losses[row] = message.header["loss"]
        self.unclipped[row] = protocol.header_flag(message.header, "unclipped")
        self.answered.add(message.sender)

    def next_phase(self) -> None:
        """One phase: collecting is over."""
        return None

    def variate_sum(self) -> np.ndarray:
        return self.variates.round_sum(self.weights)

    def aggregate(self, edge_flat, round: int, edge_round: int, clip_norm) -> RoundResult:
        outcome = self.step(
            edge_flat,
            self.deltas,
            self.weights,
            self.unclipped,
            jnp.int32(round),
            jnp.int32(edge_round),
            jnp.int32(self.index),
            clip_norm,
        )
        return _result(outcome, float((self.losses * self.weights).sum()))

    def status(self, collecting: bool) -> dict:
        return {}

    def summary_fields(self) -> dict:
        return {}


class SecureRounds:
    """Edge rounds under secure aggregation: four phases, then the survivors' sum.

    A failed phase (too few answers, or shares that do not reconstruct) is logged with a
    warning naming it and counted (`secagg_failed`, in every summary and status).
    """

    kinds = protocol.SECAGG_FROM_DEVICE

    def __init__(
        self,
        topology: Topology,
        plant: Plant,
        net: NodeModel,
        counts: np.ndarray,
        index: int,
        log: logging.Logger,
        counters: Counters,
    ):
        self.setting = plant_secure_aggregation(topology, plant, counts, net.spec)
        words = self.setting.encoding.words
        self.layouts = {
            protocol.SECAGG_MASKED: (protocol.MASKED_CODEC, protocol.masked_layout(words))
        }
        dp, seed = DpConfig.of(topology), topology.federation.seed
        self.step = jax.jit(steps.make_edge_sum_step(dp, seed, len(plant.devices)))
        self.plant, self.index, self.log, self.counters = plant.name, index, log, counters
        self.failed = 0
        self.round: EdgeRound | None = None
        self.total: np.ndarray | None = None
        self.expected: set[str] = set()
        self.answered: set[str] = set()

    def warm_up(self, edge_flat: jax.Array, clip_norm: np.float32) -> None:
        self.step(
            edge_flat,
            edge_flat,
            jnp.float32(1),
            jnp.int32(0),
            jnp.int32(0),
            jnp.int32(self.index),
            clip_norm,
        )

    def open(self, invited: Collection[str], round: int, edge_round: int, version: int) -> None:
        self.round = EdgeRound(self.plant, round, edge_round, version, self.setting, invited)
        self.total = None
        self.expected, self.answered = set(invited), set()

    def receive(self, message: protocol.Message) -> None:
        self.round.receive(message)
        self.answered.add(message.sender)

    def next_phase(self) -> tuple[dict[str, list], float] | None:
        """Ends the phase in progress: the frames that open the next one and its deadline, or
        None after the last phase (`answered`: the devices in the sum) or a failed one (none)."""
        round_ = self.round
        try:
            frames = round_.close()
        except SecAggError as error:
            self.failed += 1
            self.log.warning(
                "edge round %d.%d: %s; model unchanged", round_.round, round_.edge_round, error
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
            self.total, self.round = round_.total, None
            return None
        self.expected, self.answered = set(frames), set()
        return frames, self.setting.phase_deadline

    def variate_sum(self) -> np.ndarray:
        return NoVariates.EMPTY  # the topology refuses SCAFFOLD with secure aggregation

    def aggregate(self, edge_flat, round: int, edge_round: int, clip_norm) -> RoundResult:
        delta_sum, weight, loss = self.setting.encoding.decode(self.total)
        outcome = self.step(
            edge_flat,
            delta_sum,
            np.float32(weight),
            jnp.int32(round),
            jnp.int32(edge_round),
            jnp.int32(self.index),
            clip_norm,
        )
        return _result(outcome, loss)

    def status(self, collecting: bool) -> dict:
        phase = self.round.phase if self.round is not None and collecting else None
        return {"secagg_phase": phase, "secagg_failed": self.failed}

    def summary_fields(self) -> dict:
        return {"secagg_failed": self.failed}
