"""Publishing new model versions to edge inference servers over ZeroMQ PUB/SUB.

The cloud (or `hierfl publish`) binds a PUB socket; every `hierfl serve --subscribe ADDR`
connects a SUB socket to it. A publication is three frames:

    1. topic     b"hierfl.model"  (subscribers filter on it)
    2. header    msgpack map {"kind": "model", "protocol": 1, "version": <cloud round>,
                 "plant": <plant name, or nil for a global model>,
                 "task": str, "model": str, "nbytes": <len of frame 3>,
                 "checksum": <hex SHA-256 stored at the end of frame 3>}
    3. artifact  the bytes of a `.hfl` file, exactly as `encode_artifact` writes them,
                 sent without a copy

A subscriber checks frames 1-2 and the length of 3 (`decode_publication`) before it
reads the artifact, which then checks itself (format version, checksum). PUB/SUB drops
messages for subscribers that are not connected yet or are too slow, so a publisher may
publish the same artifact again (e.g. every few seconds): servers load each artifact
(by checksum) at most once, so repeats cost them nothing, and a server that joins late
still gets the latest version. The runtime's cloud calls `ModelPublisher.publish` after
each checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import zmq

from hierfl.errors import ArtifactError, ProtocolError
from hierfl.inference.artifact import Artifact, encode_artifact, file_checksum, read_header
from hierfl.inference.protocol import PROTOCOL_VERSION, frame_view

TOPIC = b"hierfl.model"
MAX_ARTIFACT_BYTES = 1 << 30
"""Largest artifact a subscriber accepts (1 GiB); larger messages are dropped by ZeroMQ itself."""


class Publication(NamedTuple):
    """A checked publication: its header and the artifact's bytes (a view of the received frame)."""

    header: dict[str, Any]
    data: memoryview


class ModelPublisher:
    """A PUB socket announcing model versions; see the module docstring for the message format.

    Use as a context manager or call `close`. Not thread-safe (one ZeroMQ socket).
    """

    def __init__(self, bind: str, *, context: zmq.Context | None = None, send_hwm: int = 4):
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(
            zmq.SNDHWM, send_hwm
        )  # a slow server misses old versions; the cloud never waits
        self._socket.setsockopt(zmq.LINGER, 1000)
        try:
            self._socket.bind(bind)
        except zmq.ZMQError as err:
            self.close()
            raise ProtocolError(f"cannot bind the model publisher to {bind!r}: {err}") from None

    @property
    def endpoint(self) -> str:
        """The address subscribers connect to (with the real port when bound to port `*`)."""
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish(
        self, source: Artifact | bytes | bytearray | memoryview | str | os.PathLike
    ) -> dict[str, Any]:
        """Sends one artifact (an `Artifact`, a `.hfl` file's bytes, or its path); returns the header sent.

        The bytes are checked (`read_header`) first, so a corrupt file is never published:
        `ArtifactError` instead.
        """
        if isinstance(source, Artifact):
            data: Any = encode_artifact(source)
            name = "artifact"
        elif isinstance(source, (str, os.PathLike)):
            name = str(source)
            try:
                data = Path(source).read_bytes()
            except OSError as err:
                raise ArtifactError(
                    f"{name}: cannot read model file ({err.strerror or err})"
                ) from None
        else:
            data, name = source, "artifact"
        header = publication_header(data, name)
        self._socket.send_multipart([TOPIC, msgpack.packb(header), data], copy=False)
        return header

    def close(self) -> None:
        self._socket.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> ModelPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def publication_header(
    data: bytes | bytearray | memoryview, source: str = "artifact"
) -> dict[str, Any]:
    """The header announcing the model file `data` (checked with `read_header`)."""
    meta = read_header(data, source)
    run = meta.get("run")
    return {
        "kind": "model",
        "protocol": PROTOCOL_VERSION,
        "version": meta.get("version"),
        "plant": run.get("plant") if isinstance(run, dict) else None,
        "task": meta.get("task"),
        "model": meta.get("model"),
        "nbytes": len(memoryview(data).cast("B")),
        "checksum": file_checksum(data),
    }


def subscribe(
    context: zmq.Context, address: str, max_bytes: int = MAX_ARTIFACT_BYTES
) -> zmq.Socket:
    """A SUB socket connected to a model publisher at `address`, filtering on TOPIC."""
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    socket.setsockopt(zmq.RCVHWM, 4)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, TOPIC)
    try:
        socket.connect(address)
    except zmq.ZMQError as err:
        socket.close()
        raise ProtocolError(
            f"cannot subscribe to model publications at {address!r}: {err}"
        ) from None
    return socket


def decode_publication(frames: list, max_bytes: int = MAX_ARTIFACT_BYTES) -> Publication:
    """Checks a publication's frames (topic, header, length and checksum of the artifact).

    Raises `ProtocolError` naming the problem; the artifact's own checks come later,
    when it is decoded.
    """
    if len(frames) != 3:
        raise ProtocolError(
            f"a model publication is [topic, header, artifact], got {len(frames)} frames"
        )
    topic, header_frame, data_frame = (frame_view(f) for f in frames)
    if bytes(topic) != TOPIC:
        raise ProtocolError(f"publication topic {bytes(topic)[:40]!r}, expected {TOPIC!r}")
    if len(header_frame) > 4096:
        raise ProtocolError(f"publication header is {len(header_frame)} bytes; at most 4096")
    try:
        header = msgpack.unpackb(header_frame, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise ProtocolError(
            f"publication header is not msgpack ({type(err).__name__}: {err})"
        ) from None
    if (
        not isinstance(header, dict)
        or header.get("kind") != "model"
        or header.get("protocol") != PROTOCOL_VERSION
    ):
        raise ProtocolError(
            f"not a model publication of protocol version {PROTOCOL_VERSION}: {header!r}"[:300]
        )
    nbytes, checksum = header.get("nbytes"), header.get("checksum")
    if not isinstance(nbytes, int) or nbytes != len(data_frame) or nbytes > max_bytes:
        raise ProtocolError(
            f"publication says {nbytes!r} bytes, artifact frame has {len(data_frame)} (limit {max_bytes})"
        )
    if len(data_frame) < 32 or checksum != file_checksum(data_frame):
        raise ProtocolError(
            f"publication checksum {checksum!r} does not match the artifact it carries"
        )
    return Publication(header, data_frame)
