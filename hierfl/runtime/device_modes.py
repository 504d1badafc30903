"""What a device does besides training, one small object per mode, chosen once at start-up.

- The control-variate memory: `VariateMemory` keeps SCAFFOLD's `c_i` (in `--state DIR`,
  written after every update, read back with `--resume`); `NoVariate` for every other
  algorithm.
- How the result leaves: `PlainUpload` sends one `update` message; `SecureUpload` encodes
  it as fixed-point words and runs the four secure-aggregation steps with the edge
  (`hierfl.runtime.secagg_rounds.DeviceRound`, a fresh session per edge round). A request
  it cannot answer safely is logged and the device sits that round out.

Both uploads take the device's `send(frames, kind)` and logger, so they hold no socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hierfl.core.steps import DeviceOutput
from hierfl.errors import RunDirError, SecAggError
from hierfl.kernels import FlatSpec
from hierfl.runtime import protocol
from hierfl.runtime.secagg_rounds import DeviceRound, SecureAggregation, encode_message
from hierfl.runtime.state_files import read_array

Send = Callable[[list, str], None]


class NoVariate:
    """No control variate: nothing to train with, send or keep."""

    value = None

    def cloud_variate(self, message: protocol.Message):
        return None

    def frames(self, out: DeviceOutput) -> list[np.ndarray]:
        return []


class VariateMemory:
    """SCAFFOLD's `c_i` of one device, flat float32 `[P]`, kept in `path` (None: memory only).

    An update the edge drops (late) has still moved `c_i`: the cloud's variate then lags
    this device's until SCAFFOLD's next rounds pull them together.
    """

    def __init__(self, size: int, path: Path | None, resume: bool, log: logging.Logger):
        self.path = path
        self.value = np.zeros(size, np.float32)
        if resume and path is not None and path.exists():
            stored = read_array(path, "control variate file")
            if stored.shape != (size,) or stored.dtype != np.float32:
                raise RunDirError(
                    f"{path}: a control variate of {stored.dtype} {list(stored.shape)}, "
                    f"the model needs float32 [{size}]"
                )
            self.value = stored
            log.info("restored its control variate from %s", path)

    def cloud_variate(self, message: protocol.Message) -> np.ndarray:
        """The cloud's `c`, the last frame of a model message."""
        return message.arrays[1]

    def frames(self, out: DeviceOutput) -> list[np.ndarray]:
        """Moves `c_i` by the step's change, keeps it, and returns the change to send."""
        change = np.asarray(out.variate_change)
        self.value = self.value + change
        self._save()
        return [change]

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, self.value)
        tmp.replace(self.path)


class PlainUpload:
    """The result leaves as one `update` message (codec payload, variate change, weight, loss)."""

    def __init__(self, device_id: str, spec: FlatSpec, codec: str, dp: bool, send: Send, log):
        self.device_id, self.spec, self.codec, self.dp = device_id, spec, codec, dp
        self.send, self.log = send, log

    def upload(
        self, message: protocol.Message, out: DeviceOutput, variate: list, version: int
    ) -> None:
        frames = protocol.encode(
            protocol.UPDATE,
            self.device_id,
            model_version=version,
            round=message.round,
            edge_round=message.edge_round,
            spec=self.spec,
            codec=self.codec,
            arrays=[*(np.asarray(a) for a in out.payload), *variate],
            weight=float(out.weight),
            loss=float(out.loss),
            **({"unclipped": bool(out.unclipped)} if self.dp else {}),
        )
        self.send(frames, protocol.UPDATE)

    def answer(self, message: protocol.Message, version: int) -> None:
        """A secure-aggregation request, though this plant runs none: ignored."""
        self.log.warning(
            "round %d.%d: %s outside this device's secure-aggregation session; ignored",
            message.round,
            message.edge_round,
            message.kind,
        )


class SecureUpload:
    """The result leaves only masked, through one secure-aggregation session per edge round."""

    def __init__(self, device_id: str, spec: FlatSpec, secure: SecureAggregation, send: Send, log):
        self.device_id, self.spec, self.secure, self.send, self.log = (
            device_id,
            spec,
            secure,
            send,
            log,
        )
        self.session: DeviceRound | None = None

    def upload(
        self, message: protocol.Message, out: DeviceOutput, variate: list, version: int
    ) -> None:
        """Encodes the result as fixed-point words and advertises this round's keys."""
        delta, weight, loss = np.asarray(out.payload[0]), float(out.weight), float(out.loss)
        encoding = self.secure.encoding
        where = (message.round, message.edge_round)
        clipped = encoding.delta.clipped(encoding.scaled(delta, weight))
        if clipped:
            self.log.warning(
                "round %d.%d: %d coordinates of the update clipped to secagg_clip = %g",
                *where,
                clipped,
                encoding.delta.clip,
            )
        if weight > encoding.normalizer:
            self.log.warning(
                "round %d.%d: weight %g above the plant's normalizer %g; clipped",
                *where,
                weight,
                encoding.normalizer,
            )
        words = encoding.encode(delta, weight, loss)
        self.session = DeviceRound(self.device_id, *where, self.secure.threshold, words)
        self._reply(self.session.advertise(), message, version)

    def answer(self, message: protocol.Message, version: int) -> None:
        """Answers the edge's roster, inbox or unmasking request of the session in progress."""
        where = (message.round, message.edge_round)
        if self.session is None or not self.session.matches(message):
            self.log.warning(
                "round %d.%d: %s outside this device's secure-aggregation session; ignored",
                *where,
                message.kind,
            )
            return
        try:
            reply = self.session.answer(message)
        except SecAggError as error:
            self.log.warning(
                "round %d.%d: secure aggregation: %s; sitting this round out", *where, error
            )
            self.session = None
            return
        self._reply(reply, message, version)

    def _reply(self, reply: dict, message: protocol.Message, version: int) -> None:
        frames = encode_message(
            reply,
            self.device_id,
            round=message.round,
            edge_round=message.edge_round,
            model_version=version,
            spec=self.spec,
        )
        self.send(frames, reply["kind"])
