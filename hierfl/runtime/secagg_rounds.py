"""Secure aggregation over the runtime's sockets: the device's and the edge's half of an edge round.

With `[privacy] secure_aggregation = true` a plant's edge must learn only the weighted
sum of its devices' updates, so a device sends no plain `update`. After training (as
`steps.make_device_step` does without it: local update, screening, local DP if set) it
fixed-point encodes one vector of `P + 2` values,

    x_u = concat(w_u / M_p * delta_u,  [w_u / M_p],  [w_u / M_p * loss_u])

with `w_u` its weight (examples, or local DP's one vote) and `M_p` the plant's public
*normalizer*, the largest weight one of its devices can send (the largest example count
in the plan, or `secagg_max_examples`; 1 under local DP). Every coordinate of the update part stays within
`|delta_u|`, so `secagg_clip` bounds what it always bounded; the weight coordinate lies
in `[0, 1]` and the loss coordinate in `[0, LOSS_CLIP]`, each with a codec of its own
(masking adds words mod 2^32 position by position, so each position may use its own
scale). The sum of the survivors' vectors decodes to `delta_sum / M_p`, `weight / M_p`
and `loss_sum / M_p`: exactly what a mean-rule edge round needs (`steps.make_edge_sum_step`).

Then the device and the edge run the four steps of `hierfl.privacy.secagg`, a fresh
session per edge round, as protocol messages (`protocol.SECAGG_*`):

| edge phase | closes when every asked device answered, or at its deadline | then the edge sends |
|---|---|---|
| `keys` (devices train, then advertise keys) | `device_deadline` after the model went out | the roster, to every device in it |
| `shares` | `phase_deadline` after the roster | each sharer its inbox of encrypted shares |
| `masked` (one raw uint32 frame each) | `phase_deadline` | the unmasking request, to every survivor |
| `unmasking` | `phase_deadline` | nothing: it removes the masks and applies the sum |

A device that stops answering after sharing is recovered from the survivors' shares;
fewer than `t` usable answers in any phase fail the edge round (`ThresholdError` names
the phase, how many answered and how many were needed) and the model stays as it was.
`EdgeRound.receive` checks every secure-aggregation message against the phase (its
kind, its sender, lengths and device ids against the roster) and raises
`protocol.MessageRejected`, so a bad one is refused and counted like any other.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

import numpy as np

from hierfl.errors import SecAggError
from hierfl.kernels import FlatSpec
from hierfl.privacy import shamir
from hierfl.privacy.fixed_point import FixedPoint
from hierfl.privacy.secagg import (
    KEY_BYTES,
    NONCE_BYTES,
    PLAINTEXT_SHARE_BYTES,
    WORD,
    DeviceSession,
    EdgeSession,
)
from hierfl.runtime import protocol
from hierfl.topology import Plant, Topology
from hierfl.topology.schema import secagg_threshold

LOSS_CLIP = 1e4
"""Bound of a device's training loss in the sum (a larger loss is clipped: it only feeds the metrics)."""
SEALED_SHARE_BYTES = NONCE_BYTES + PLAINTEXT_SHARE_BYTES + 16  # AES-GCM: nonce, two shares, tag
EDGE_ROUND_BITS = 16

PHASES = ("keys", "shares", "masked", "unmasking")
"""The edge's phases of a secure edge round; phase i waits for `protocol.SECAGG_FROM_DEVICE[i]`."""


def session_round(round: int, edge_round: int) -> int:
    """The secagg session number of edge round `edge_round` of cloud round `round` (keys are bound to it)."""
    return (round << EDGE_ROUND_BITS) | edge_round


def phase_deadline(topology: Topology) -> float:
    """Seconds the edge waits for the answers of one crypto phase: `[runtime] secagg_deadline`, else `device_deadline`.

    The crypto steps take milliseconds to a fraction of a second (ChaCha20 over the
    model per other device) and a phase closes as soon as every live device asked has
    answered; the deadline only bounds the wait for a device that went silent without
    being declared gone (`heartbeat_timeout`). A short one keeps such a device from
    stretching the round to four device deadlines.
    """
    runtime = topology.runtime
    return runtime.device_deadline if runtime.secagg_deadline is None else runtime.secagg_deadline


class UpdateEncoding(NamedTuple):
    """How a device's result becomes the `size + 2` words it masks, and how the edge reads their sum."""

    size: int
    normalizer: float
    delta: FixedPoint
    weight: FixedPoint
    loss: FixedPoint

    @property
    def words(self) -> int:
        return self.size + 2

    def scaled(self, delta: np.ndarray, weight: float) -> np.ndarray:
        """The update part `w / M * delta` (float64 `[P]`), before clipping."""
        return (weight / self.normalizer) * np.asarray(delta, np.float64)

    def encode(self, delta: np.ndarray, weight: float, loss: float) -> np.ndarray:
        """A device's words: uint32 `[size + 2]`."""
        share = weight / self.normalizer
        return np.concatenate(
            [
                self.delta.encode(self.scaled(delta, weight)),
                self.weight.encode(np.array([share])),
                self.loss.encode(np.array([share * loss])),
            ]
        )

    def decode(self, words: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The sum of devices' words -> `(delta_sum float32 [P], weight, loss_sum)`, normalizer undone."""
        values = np.asarray(words, np.uint32).view(np.int32).astype(np.float64)
        delta_sum = (values[: self.size] * self.delta.step * self.normalizer).astype(np.float32)
        weight = float(values[self.size] * self.weight.step * self.normalizer)
        loss_sum = float(values[self.size + 1] * self.loss.step * self.normalizer)
        return delta_sum, weight, loss_sum


class SecureAggregation(NamedTuple):
    """A plant's secure-aggregation setting, the same at its edge and its devices."""

    threshold: int
    encoding: UpdateEncoding
    spec: FlatSpec
    phase_deadline: float


def plant_normalizer(topology: Topology, plant: Plant, counts: np.ndarray | None) -> float:
    """`M_p`: the largest weight a device of `plant` sends: 1 under DP (one vote each), else
    `privacy.secagg_max_examples` where the topology declares it, else its devices' largest
    example count in `counts` (the plan's)."""
    privacy = topology.privacy
    if privacy.enabled:
        return 1.0
    if privacy.secagg_max_examples is not None:
        return float(privacy.secagg_max_examples)
    return float(max([1, *(int(counts[device.index]) for device in plant.devices)]))


def weight_bound_problem(topology: Topology, device_id: str, count: int) -> str | None:
    """Why a device of `count` examples cannot take part in secure aggregation (its weight
    over the declared bound would not encode), or None."""
    privacy = topology.privacy
    bound = privacy.secagg_max_examples
    if not privacy.secure_aggregation or privacy.enabled or bound is None or count <= bound:
        return None
    return (
        f"device {device_id}: {count} examples, more than privacy.secagg_max_examples = {bound} "
        "(secure aggregation encodes each weight as a fraction of that bound); raise the bound"
    )


def plant_secure_aggregation(
    topology: Topology, plant: Plant, counts: np.ndarray | None, spec: FlatSpec
) -> SecureAggregation:
    """The setting of `plant` from the topology and the plan's example counts `counts` (all
    devices; None where the topology declares the bound, or under DP)."""
    privacy, devices = topology.privacy, plant.num_devices
    encoding = UpdateEncoding(
        spec.size,
        plant_normalizer(topology, plant, counts),
        FixedPoint(privacy.secagg_clip, devices),
        FixedPoint(1.0, devices),
        FixedPoint(LOSS_CLIP, devices),
    )
    return SecureAggregation(
        secagg_threshold(privacy, devices), encoding, spec, phase_deadline(topology)
    )


# -- messages ------------------------------------------------------------------------------------


def encode_message(
    message: Mapping[str, Any],
    sender: str,
    *,
    round: int,
    edge_round: int,
    model_version: int,
    spec: FlatSpec,
) -> list:
    """The frames of a secagg step's dict: its fields in the header, a masked input as one raw uint32 frame."""
    kind = message["kind"]
    fields = {name: message[name] for name in protocol.SECAGG_FIELDS[kind]}
    common = {"round": round, "edge_round": edge_round, "model_version": model_version}
    if kind == protocol.SECAGG_MASKED:
        words = np.frombuffer(message["masked"], dtype=WORD)
        return protocol.encode(
            kind, sender, **common, spec=spec, codec=protocol.MASKED_CODEC, arrays=[words]
        )
    return protocol.encode(kind, sender, **common, **fields)


def session_message(message: protocol.Message) -> dict[str, Any]:
    """A checked protocol message as the secagg dict its session takes (a masked input stays a view of its frame)."""
    fields = {name: message.header[name] for name in protocol.SECAGG_FIELDS[message.kind]}
    if message.kind == protocol.SECAGG_MASKED:
        fields["masked"] = message.arrays[0]
    if message.kind in protocol.SECAGG_FROM_DEVICE:
        fields["device"] = message.sender
    return {
        "kind": message.kind,
        "round": session_round(message.round, message.edge_round),
        **fields,
    }


# -- the device's half ---------------------------------------------------------------------------


class DeviceRound:
    """One device's side of one secure edge round: advertise, then answer the edge's three requests.

    `words` are the device's encoded result (`UpdateEncoding.encode`). `answer` raises
    SecAggError (ShareTamperedError for a forged share) when a request cannot be answered
    safely; the device then sits the round out.
    """

    def __init__(self, device: str, round: int, edge_round: int, threshold: int, words: np.ndarray):
        self.round, self.edge_round = round, edge_round
        self.words = words
        self.session = DeviceSession(
            device, session_round(round, edge_round), threshold, len(words)
        )

    def advertise(self) -> dict[str, Any]:
        return self.session.advertise()

    def matches(self, message: protocol.Message) -> bool:
        """Whether `message` is for this session's edge round (a late request of an older one is not)."""
        return (message.round, message.edge_round) == (self.round, self.edge_round)

    def answer(self, message: protocol.Message) -> dict[str, Any]:
        """The reply to a checked `secagg_roster`, `secagg_inbox` or `secagg_unmask` this session `matches`."""
        request = session_message(message)
        if message.kind == protocol.SECAGG_ROSTER:
            if not all(len(key) == KEY_BYTES for pair in request["keys"].values() for key in pair):
                raise SecAggError(f"the roster's public keys must be {KEY_BYTES} bytes each")
            return self.session.share_keys(request)
        if message.kind == protocol.SECAGG_INBOX:
            if not all(len(sealed) == SEALED_SHARE_BYTES for sealed in request["shares"].values()):
                raise SecAggError(
                    f"the inbox's encrypted shares must be {SEALED_SHARE_BYTES} bytes each"
                )
            return self.session.masked_input(request, self.words)
        if message.kind == protocol.SECAGG_UNMASK:
            return self.session.unmask(request)
        raise SecAggError(f"a device does not answer {message.kind} messages")


# -- the edge's half -----------------------------------------------------------------------------


class EdgeRound:
    """The edge's side of one secure edge round, as four phases (`PHASES`).

    `invited` are the devices sent the model. `receive` takes each checked message of the
    phase in progress (or raises MessageRejected); `close` ends the phase and returns the
    frames to send, per device, to open the next one; after the last phase `total` holds
    the sum of the survivors' words and `survivors` who is in it.
    """

    def __init__(
        self,
        plant: str,
        round: int,
        edge_round: int,
        model_version: int,
        setting: SecureAggregation,
        invited: Collection[str],
    ):
        self.plant, self.round, self.edge_round, self.model_version = (
            plant,
            round,
            edge_round,
            model_version,
        )
        self.setting = setting
        self.session = EdgeSession(
            session_round(round, edge_round), setting.threshold, setting.encoding.words
        )
        self.step = 0
        self.invited = frozenset(invited)
        self.expected: set[str] = set(invited)
        self.answered: set[str] = set()
        self.roster: set[str] = set()
        self.total: np.ndarray | None = None
        self._received: list[dict[str, Any]] = []
        self._rejections_read = 0

    @property
    def phase(self) -> str:
        return PHASES[self.step] if self.step < len(PHASES) else "done"

    @property
    def survivors(self) -> list[str]:
        return self.session.survivors if self.total is not None else []

    def receive(self, message: protocol.Message) -> None:
        """Keeps a checked secagg message of this edge round; MessageRejected if it does not belong to the phase."""
        step, sender = protocol.SECAGG_FROM_DEVICE.index(message.kind), message.sender
        if step < self.step:
            raise protocol.MessageRejected(
                protocol.STALE_ROUND,
                f"{message.kind} from {sender} after the {PHASES[step]} phase closed",
            )
        if step > self.step:
            raise protocol.MessageRejected(
                protocol.UNEXPECTED, f"{message.kind} from {sender} during the {self.phase} phase"
            )
        if sender not in self.expected:
            raise protocol.MessageRejected(
                protocol.UNEXPECTED, f"{sender} was not asked in the {self.phase} phase"
            )
        if sender in self.answered:
            raise protocol.MessageRejected(
                protocol.DUPLICATE,
                f"second {message.kind} from {sender} in round {self.round}.{self.edge_round}",
            )
        problem = self._problem(message)
        if problem is not None:
            raise protocol.MessageRejected(
                protocol.MALFORMED, f"{message.kind} from {sender}: {problem}"
            )
        self._received.append(session_message(message))
        self.answered.add(sender)

    def close(self) -> dict[str, list]:
        """Ends the phase in progress: the frames per device that open the next one (none after the last).

        Raises ThresholdError (too few usable answers: it names the phase) or SecAggError
        (shares that do not reconstruct what their owner committed to): the round failed.
        """
        received, self._received = self._received, []
        session = self.session
        if self.step == 0:
            roster = session.collect_keys(received)
            self.roster = set(roster["keys"])
            outgoing = {device: roster for device in self.roster}
        elif self.step == 1:
            outgoing = session.route_shares(received)
        elif self.step == 2:
            request = session.collect_masked(received)
            outgoing = {device: request for device in request["survivors"]}
        else:
            self.total = session.finish(received)
            outgoing = {}
        self.step += 1
        self.expected, self.answered = set(outgoing), set()
        return self._frames(outgoing)

    def rejections(self) -> list[str]:
        """What the session refused since the last call (`EdgeSession.rejected`; `receive` catches these first)."""
        new = self.session.rejected[self._rejections_read :]
        self._rejections_read = len(self.session.rejected)
        return new

    def _problem(self, message: protocol.Message) -> str | None:
        header, kind, sender = message.header, message.kind, message.sender
        if kind == protocol.SECAGG_KEYS:
            if len(header["c_pk"]) != KEY_BYTES or len(header["s_pk"]) != KEY_BYTES:
                return f"public keys must be {KEY_BYTES} bytes each"
        elif kind == protocol.SECAGG_SHARES:
            if set(header["shares"]) != self.roster - {sender}:
                return "shares must be addressed to exactly the other devices of the roster"
            if (
                any(len(sealed) != SEALED_SHARE_BYTES for sealed in header["shares"].values())
                or len(header["b_hash"]) != 32
            ):
                return (
                    f"encrypted shares must be {SEALED_SHARE_BYTES} bytes each and b_hash 32 bytes"
                )
        elif kind == protocol.SECAGG_REVEAL:
            if set(header["mask_key_shares"]) != set(self.session.dropped) or set(
                header["self_mask_shares"]
            ) != set(self.session.survivors):
                return "must hold one mask-key share per dropped device and one self-mask share per survivor"
            if any(
                len(s) != shamir.SHARE_BYTES
                for s in [*header["mask_key_shares"].values(), *header["self_mask_shares"].values()]
            ):
                return f"shares must be {shamir.SHARE_BYTES} bytes each"
        return None

    def _frames(self, outgoing: Mapping[str, Mapping[str, Any]]) -> dict[str, list]:
        encoded: dict[int, list] = {}  # a request sent to many devices is encoded once
        frames = {}
        for device, message in outgoing.items():
            if id(message) not in encoded:
                encoded[id(message)] = encode_message(
                    message,
                    self.plant,
                    round=self.round,
                    edge_round=self.edge_round,
                    model_version=self.model_version,
                    spec=self.setting.spec,
                )
            frames[device] = encoded[id(message)]
        return frames
