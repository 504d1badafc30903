"""The cloud round in progress at an edge: its edge rounds, the edge's model, and what goes up.

An `EdgeCycle` moves idle -> starting (before the first edge round: waiting for the
devices) -> collecting (an edge round open; `edge_rounds` of them) -> idle (the summary
sent). While the cloud is silent after a summary it runs offline edge rounds from its
own model and sends them as a stale summary when the cloud is back (`OfflineRounds`).
It touches no socket: each step returns an `Outbox`, which the shell sends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import numpy as np

from hierfl.core import personal
from hierfl.kernels import FlatSpec
from hierfl.privacy.config import DpConfig
from hierfl.runtime import protocol
from hierfl.runtime.edge_rounds import EdgeRounds
from hierfl.runtime.edge_tally import NoVariates, OfflineRounds, Tally, VariateSums
from hierfl.runtime.edge_uplink import CloudModel, Uplink
from hierfl.topology import Topology

IDLE, STARTING, COLLECTING = "idle", "starting", "collecting"


class Outbox(NamedTuple):
    """What the shell does after a step: send `cloud` messages (`(kind, fields)`) up and each
    device its frames (an edge round `opened`: its byte counts start over), close the phase
    after `wait` seconds at the latest, and checkpoint."""

    devices: Mapping[str, list] = {}
    cloud: tuple[tuple[str, dict[str, Any]], ...] = ()
    wait: float | None = None
    opened: bool = False
    checkpoint: bool = False


class EdgeCycle:
    """Edge rounds of plant `index` with `rounds` (collecting), `uplink` (summaries) and `variates`."""

    def __init__(
        self,
        topology: Topology,
        index: int,
        spec: FlatSpec,
        rounds: EdgeRounds,
        uplink: Uplink,
        variates: VariateSums | NoVariates,
        log: logging.Logger,
        finished_round: int = 0,
    ):
        self.plant = topology.plant_names[index]
        self.index, self.stale_key_index = index, len(topology.plants) + index
        self.num_devices = len(topology.plants[index].devices)
        self.edge_rounds = topology.federation.edge_rounds
        self.runtime = topology.runtime
        self.spec, self.log = spec, log
        self.rounds, self.uplink, self.variates = rounds, uplink, variates
        self.phase, self.round, self.edge_round = IDLE, 0, 0
        self.clip_norm = np.float32(topology.privacy.clip_norm)
        self.global_flat = self.edge_flat = np.zeros(spec.size, np.float32)  # set by `start`
        self.variate_frames: list[np.ndarray] = []
        self.tally = Tally(variates.zeros())
        self.model_version = uplink.version  # what hello tells the cloud
        self.finished_round, self.opened_once = finished_round, False
        # Under DP no offline rounds: they would release updates the accountant does not count;
        # under buffered aggregation none either: the cloud answers each summary with a model.
        self.buffered = topology.buffered is not None
        offline = DpConfig.of(topology) is None and not self.buffered
        offline_limit = self.edge_rounds if offline else 0
        self.offline = OfflineRounds(offline_limit, Tally(variates.zeros()))
        # Fine-tuning (`[personalization] method = "fine-tune"`): the layers its rounds adapt.
        self.adapted = personal.fine_tune_mask(topology, spec)
        self.tuning = False

    def may_go_offline(self) -> bool:
        """Whether an offline edge round may open now (if the cloud is silent); never while
        fine-tuning, whose rounds make the plant's model, not a summary."""
        return (
            self.phase == IDLE and self.opened_once and not self.tuning and self.offline.may_open()
        )

    def receive(self, message: protocol.Message) -> None:
        """Takes a checked device message for the edge round in progress; MessageRejected
        (unexpected, stale-round, future-round, or the mode's own reasons) if it does not belong."""
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
        """The cycle's part of a `status` answer."""
        return {
            "phase": self.phase,
            "edge_round_open": self.edge_round,
            "finished_round": self.finished_round,
            **self.rounds.status(self.phase == COLLECTING),
        }

    def start(self, model: CloudModel, invited: Collection[str]) -> Outbox:
        """Cloud round `model.round` from `model` (after sending the offline rounds up); an
        older one, or the one in progress, is ignored."""
        stale = ()
        if self.offline.active:
            stale = self._stale_summary(model.round)
        elif self._ignores(model.round):
            self.log.info(
                "ignoring the cloud's model for round %d (at round %d, %s)",
                model.round,
                self.round,
                self.phase,
            )
            return Outbox()
        if self.phase != IDLE:
            self.log.warning(
                "cloud round %d started before this edge finished round %d; abandoning it",
                model.round,
                self.round,
            )
        self.round, self.edge_round, self.model_version = model.round, 0, model.version
        self.tuning = model.fine_tune
        self.clip_norm = np.float32(model.clip_norm)
        self.global_flat = self.edge_flat = np.array(model.flat)
        self.variate_frames = list(model.variate_frames)
        self.tally = Tally(self.variates.zeros())
        if not self.opened_once:
            self.phase = STARTING
            return Outbox(cloud=stale)
        return self.open(invited)._replace(cloud=stale)

    def _ignores(self, round: int) -> bool:
        """Whether a model for cloud round `round` is old news: one before the round in progress
        or the round itself while it runs. Under buffered aggregation the cloud numbers each
        edge's cycles and an idle edge takes any model (after a cloud's resume it may number
        from an earlier cycle), while a busy one finishes its cycle first."""
        if self.buffered:
            return self.phase != IDLE and round <= self.round
        return round < self.round or (round == self.round and self.phase != IDLE)

    def open(self, invited: Collection[str]) -> Outbox:
        """Opens an edge round: the model to every device `invited`."""
        self.opened_once, self.phase = True, COLLECTING
        self.rounds.open(invited, self.round, self.edge_round, self.model_version)
        frames = protocol.encode(
            protocol.MODEL,
            self.plant,
            round=self.round,
            edge_round=self.edge_round,
            model_version=self.model_version,
            spec=self.spec,
            codec="none",
            arrays=[self.edge_flat, *self.variate_frames],
            clip_norm=float(self.clip_norm),
            **({"fine_tune": True} if self.tuning else {}),
        )
        devices = {device: frames for device in sorted(invited)}
        return Outbox(devices, wait=self.runtime.device_deadline, opened=True)

    def open_offline(self, invited: Collection[str]) -> Outbox:
        """An edge round while the cloud is silent: numbered as the next cloud round, from the edge's own model."""
        if not self.offline.active:
            self.log.warning(
                "the cloud is silent; running offline edge rounds from the plant model"
            )
            self.offline.active = True
            self.round, self.edge_round = self.finished_round + 1, 0
        return self.open(invited)

    def close(
        self, invited: Collection[str], device_bytes: list[int], health: Callable[[], dict]
    ) -> Outbox:
        """Ends the phase in progress: the next phase, the next edge round, or the summary
        (with `health()`: the edge's rejected and late counts as they are then)."""
        phase = self.rounds.next_phase()
        if phase is not None:  # secure aggregation's next phase
            return Outbox(phase[0], wait=phase[1])
        tally = self.offline.tally if self.offline.active else self.tally
        answered, required = len(self.rounds.answered), self.required()
        tally.add_variates(self.rounds.variate_sum())
        if answered >= required and answered > 0:
            result = self.rounds.aggregate(
                self.edge_flat, self.round, self.edge_round, self.clip_norm
            )
            self.edge_flat = self._adapted(result.edge_flat)
            tally.add(result)
        else:
            self.log.warning(
                "edge round %d.%d: %d of %d devices answered (need %d); model unchanged",
                self.round,
                self.edge_round,
                answered,
                self.num_devices,
                required,
            )
        self._log_closed(answered, device_bytes)
        self.edge_round += 1
        if self.offline.active:
            self.offline.rounds += 1
            self.phase = IDLE
            return Outbox()
        tally.answered.append(answered)
        if self.edge_round < self.edge_rounds:
            return self.open(invited)
        return self._summary(health)

    def _adapted(self, edge_flat: np.ndarray) -> np.ndarray:
        """The edge's model after an edge round: in a fine-tuning round only the adapted
        layers move (`personal.keep_adapted`: a lossy codec's decoded update need not be
        zero outside them)."""
        if not self.tuning:
            return edge_flat
        return np.asarray(personal.keep_adapted(edge_flat, self.edge_flat, self.adapted))

    def required(self) -> int:
        return math.ceil(self.runtime.min_device_participation * self.num_devices)

    def _log_closed(self, answered: int, device_bytes: list[int]) -> None:
        missing = sorted(self.rounds.expected - self.rounds.answered)
        self.log.info(
            "edge round %d.%d closed: %d/%d answered%s; %d bytes from devices, %d to them",
            self.round,
            self.edge_round,
            answered,
            self.num_devices,
            f", missing {', '.join(missing)}" if missing else "",
            *device_bytes,
        )

    def _summary(self, health: Callable[[], dict]) -> Outbox:
        """The cloud round's summary: the edge's change since the global model."""
        tally = self.tally
        kind, payload = self.uplink.summary(
            self.edge_flat,
            self.global_flat,
            tally.weight,
            self.round,
            self.index,
            self.variates.frames(tally.variate_sum),
        )
        fields = {
            "round": self.round,
            "edge_round": self.edge_rounds,
            **payload,
            "weight": tally.weight,
            "loss": tally.loss,
            "answered": tally.answered,
            "expected": self.num_devices,
            **health(),
            "unclipped": tally.unclipped,
            **self.rounds.summary_fields(),
        }
        self.phase, self.finished_round = IDLE, self.round
        self.offline.summarized(self.edge_flat)
        self.log.info("cloud round %d: %s sent (weight %g)", self.round, kind, tally.weight)
        return Outbox(cloud=((kind, fields),), checkpoint=True)

    def _stale_summary(self, cloud_round: int) -> tuple[tuple[str, dict[str, Any]], ...]:
        """The offline rounds' progress since the last summary, for `cloud_round` (none without any)."""
        offline, sent = self.offline, ()
        if offline.tally.weight > 0:
            kind, payload = self.uplink.summary(
                self.edge_flat,
                offline.base,
                offline.tally.weight,
                cloud_round,
                self.stale_key_index,  # a key apart from the round's own summary
                self.variates.frames(offline.tally.variate_sum),
            )
            fields = {
                "model_version": self.model_version,
                "round": cloud_round,
                "edge_round": offline.rounds,
                **payload,
                "weight": offline.tally.weight,
                "loss": offline.tally.loss,
                "stale": True,
                "base_version": self.finished_round,
            }
            sent = ((kind, fields),)
            self.log.info(
                "the cloud is back: sent %d offline edge rounds (weight %g, from version %d) as a stale summary",
                offline.rounds,
                offline.tally.weight,
                self.finished_round,
            )
        offline.sent(self.variates.zeros())
        self.phase = IDLE
        return sent


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
