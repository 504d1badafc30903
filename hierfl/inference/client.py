"""A small client for `hierfl serve`: predict, ask what is served, roll back.

Needs only numpy and pyzmq (no JAX), so it runs on a weak line PC or a PLC gateway:

    from hierfl.inference import Client
    with Client("tcp://edge-a:5600") as client:
        prediction = client.predict(windows)      # windows: [n, 2048, 1] float32
        prediction.labels, prediction.version
    with Client("ipc:///run/hierfl/control") as control:  # the server's --control socket
        control.rollback()

One DEALER socket, one request in flight at a time: use one `Client` per thread.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import zmq

from hierfl.errors import InferenceError, ProtocolError
from hierfl.inference.protocol import (
    ERROR,
    INFO,
    PREDICT,
    ROLLBACK,
    Reply,
    encode_request,
    parse_reply,
)


class Prediction(NamedTuple):
    """Logits `[n, classes]` and the `version` of the model that computed them.

    A regression model's `logits` are its predicted values `[n, H]` (`class_names` empty).
    """

    logits: np.ndarray
    version: int
    class_names: tuple[str, ...]

    @property
    def classes(self) -> np.ndarray:
        """Index of the most likely class of each example, `[n]`."""
        return np.argmax(self.logits, axis=-1)

    @property
    def labels(self) -> list[str]:
        """Name of the most likely class of each example."""
        return [self.class_names[i] for i in self.classes]

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, `[n, classes]`."""
        z = self.logits - self.logits.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)


class ServerInfo(NamedTuple):
    """What a server serves (`version`), what it holds for rollback (`versions`), and its counters."""

    task: str
    model: str
    version: int
    versions: tuple[int, ...]
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    input_dtype: str
    platform: str
    max_batch: int
    max_wait_ms: float
    metrics: dict[str, Any]
    stats: dict[str, int]
    checksum: str
    output_names: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    """The named input columns, in order, when the model was trained on named columns."""

    @classmethod
    def from_reply(cls, info: dict[str, Any]) -> ServerInfo:
        try:
            return cls(
                task=info["task"],
                model=info["model"],
                version=info["version"],
                versions=tuple(info["versions"]),
                class_names=tuple(info["class_names"]),
                input_shape=tuple(info["input_shape"]),
                input_dtype=info["input_dtype"],
                platform=info["platform"],
                max_batch=info["max_batch"],
                max_wait_ms=info["max_wait_ms"],
                metrics=info.get("metrics") or {},
                stats=info.get("stats") or {},
                checksum=info.get("checksum", ""),
                output_names=tuple(info.get("output_names") or ()),
                features=tuple((info.get("preprocessing") or {}).get("features") or ()),
            )
        except (KeyError, TypeError) as err:
            raise InferenceError(f"malformed info reply (missing {err})") from None


class Client:
    """Talks to one inference server at `address`; every call waits at most `timeout` seconds."""

    def __init__(self, address: str, *, timeout: float = 10.0, context: zmq.Context | None = None):
        self.address = address
        self.timeout = timeout
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._ids = itertools.count(1)
        self._class_names: tuple[str, ...] | None = None
        try:
            self._socket.connect(address)
        except zmq.ZMQError as err:
            self.close()
            raise InferenceError(
                f"cannot connect to an inference server at {address!r}: {err}"
            ) from None

    def predict(self, x: np.ndarray) -> Prediction:
        """Logits for `x` `[n, *input_shape]` in the server's dtype (`info().input_dtype`).

        Raises `InferenceError` with the server's reason if it refuses the request (wrong
        shape or dtype, too many rows, non-finite values), or if no reply comes in time.
        """
        if self._class_names is None:
            self._class_names = self.info().class_names
        reply = self._call(PREDICT, np.asarray(x))
        return Prediction(reply.y, reply.version, self._class_names)

    def info(self) -> ServerInfo:
        """What the server serves now."""
        info = ServerInfo.from_reply(self._call(INFO).header.get("info") or {})
        self._class_names = info.class_names
        return info

    def rollback(self) -> ServerInfo:
        """Asks the server to serve its previous version again; returns what it serves then.

        Only a client of the server's control socket (`hierfl serve --control`) may: the
        request socket refuses it. `InferenceError` if refused, or if the server holds no
        previous version.
        """
        return ServerInfo.from_reply(self._call(ROLLBACK).header.get("info") or {})

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, kind: str, x: np.ndarray | None = None) -> Reply:
        request_id = next(self._ids)
        self._socket.send_multipart(encode_request(kind, request_id, x), copy=False)
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(max(1, int(remaining * 1000))):
                raise InferenceError(
                    f"no reply from {self.address} within {self.timeout:g} s ({kind} request {request_id}); "
                    "is `hierfl serve` running there?"
                )
            reply = self._receive()
            if reply.id == request_id or (reply.kind == ERROR and reply.id is None):
                break  # anything else answers an earlier request that timed out
        if reply.kind == ERROR:
            raise InferenceError(
                f"{self.address} refused {kind} request {request_id}: {reply.header.get('error')} "
                f"(serving version {reply.version})"
            )
        return reply

    def _receive(self) -> Reply:
        frames: Sequence[Any] = self._socket.recv_multipart(copy=False)
        try:
            return parse_reply(frames)
        except ProtocolError as err:
            raise InferenceError(f"malformed reply from {self.address}: {err}") from None
