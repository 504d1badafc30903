"""The edge inference server: a ZeroMQ ROUTER socket, dynamic batching, hot swap and rollback.

One serving thread owns the socket, the request queue and the served model: it receives
requests, answers malformed ones at once with an error reply, runs a batch when one is
due (`RequestQueue`), and sends each request its rows of the logits with the version of
the model that computed them. New versions are loaded, compiled and warmed up by an
`UpdateLoader` thread beside the served one; the serving thread swaps the ready model in
between two batches. So a request is answered by exactly one complete model, old or new,
and none is dropped by a swap; a client's replies switch from the old version to the new
one once. A `rollback` request serves the previous version again, the same way; it is
taken only on the control socket (`hierfl.inference.control`), never on the request socket.

The model runs on JAX's default device: the GPU when there is one, else the CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from hierfl.errors import ArtifactError, InferenceError, ProtocolError
from hierfl.inference.artifact import Artifact, decode_artifact, encode_artifact, file_checksum
from hierfl.inference.batching import MAX_WAIT_MS, RequestQueue, Waiting, split_rows
from hierfl.inference.compiled import CompiledModel, compile_artifact, describe_platform
from hierfl.inference.control import bind_control, control_path
from hierfl.inference.protocol import (
    CONTROL_KINDS,
    INFO,
    PREDICT,
    ROLLBACK,
    InputSpec,
    encode_error,
    encode_info,
    encode_prediction,
    parse_request,
    split_envelope,
)
from hierfl.inference.updates import Update, UpdateLoader, plant_of
from hierfl.inference.versions import ModelVersions

log = logging.getLogger("hierfl.inference")

IDLE_POLL_MS = 50
"""How often an idle server looks for a ready new version and for `stop()`."""
MAX_DRAIN = 256
"""Messages read per turn before a due batch runs, so a flood cannot starve the batch deadline."""


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How a server serves.

    bind: address of the ROUTER socket (tcp://HOST:PORT, tcp://HOST:* for any free port, ipc://PATH).
    max_batch: most rows run in one call; also the most rows one request may carry.
    control: the control socket's address, `ipc://PATH` in a folder private to this user (made
      0700 if missing), where `rollback` is taken; None: no control commands at all.
    max_wait_ms: longest a request waits for others to fill a batch, at most MAX_WAIT_MS. 0 (the default) runs at once
      what has arrived: requests that come in while a batch runs form the next batch, so
      batches grow with the load at no latency cost. A positive wait only pays off when many
      independent senders fire without waiting for replies (benchmarks/inference.py).
    keep_versions: loaded versions kept for rollback, the served one included.
    subscribe: a model publisher's address (`ModelPublisher`) to take new versions from.
    watch: a directory whose new `.hfl` files are new versions, checked every `watch_interval_s`.
    """

    bind: str
    control: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 0.0
    keep_versions: int = 3
    subscribe: str | None = None
    watch: str | os.PathLike | None = None
    watch_interval_s: float = 0.5

    def __post_init__(self):
        if self.max_batch < 1:
            raise InferenceError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 0 <= self.max_wait_ms <= MAX_WAIT_MS:  # also refuses NaN
            raise InferenceError(
                f"max_wait_ms must be in [0, {MAX_WAIT_MS}], got {self.max_wait_ms}"
            )
        if self.keep_versions < 1:
            raise InferenceError(f"keep_versions must be >= 1, got {self.keep_versions}")


@dataclasses.dataclass
class ServerStats:
    """Counters reported by `info`: what was answered, refused, loaded and swapped."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    rejected_requests: int = 0
    refused_control: int = 0
    """Control commands (rollback) sent to the request socket: refused, and counted in rejected_requests too."""
    failed_requests: int = 0
    rejected_artifacts: int = 0
    swaps: int = 0
    rollbacks: int = 0


class InferenceServer:
    """Serves a model file over ZeroMQ; see the module docstring and `hierfl.inference.protocol`.

    The constructor loads, compiles and warms up the model and binds the socket, so a
    request sent once it returns is answered without compiling. `serve_forever()` runs
    the serving loop in the calling thread until `stop()`; `start()` runs it in a
    background thread instead. Use as a context manager to stop and close it.
    """

    def __init__(self, model: str | os.PathLike | Artifact | bytes, config: ServerConfig):
        self.config = config
        self.stats = ServerStats()
        if config.control is not None:
            control_path(config.control)  # refused before the model is compiled
        first = _load_first(model, config.max_batch)
        self._versions: ModelVersions[CompiledModel] = ModelVersions(first, config.keep_versions)
        self._spec = InputSpec(first.meta.input_shape, first.meta.input_dtype, config.max_batch)
        self._queue = RequestQueue(config.max_batch, config.max_wait_ms / 1000.0)
        self._platform = describe_platform()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        # Requests above max_batch rows get an error reply; only far larger ones are cut off by ZeroMQ.
        row_bytes = int(np.prod(self._spec.shape)) * np.dtype(self._spec.dtype).itemsize
        self._socket.setsockopt(zmq.MAXMSGSIZE, max(64 << 20, 4 * config.max_batch * row_bytes))
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._control: zmq.Socket | None = None
        try:
            self._socket.bind(config.bind)
        except zmq.ZMQError as err:
            self._close_sockets()
            raise InferenceError(
                f"cannot bind the inference server to {config.bind!r}: {err}"
            ) from None
        if config.control is not None:
            try:
                self._control = bind_control(self._context, config.control)
            except InferenceError:
                self._close_sockets()
                raise
        self._loader = None
        if config.subscribe or config.watch is not None:
            self._loader = UpdateLoader(
                self._context,
                first,
                max_batch=config.max_batch,
                subscribe_to=config.subscribe,
                watch=config.watch,
                watch_interval=config.watch_interval_s,
            )

    @property
    def endpoint(self) -> str:
        """The bound address (with the real port when bound to `tcp://HOST:*`)."""
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def model(self) -> CompiledModel:
        """The model served now."""
        return self._versions.current

    def info(self) -> dict[str, Any]:
        """What the server serves and has done: the `info` reply's map (msgpack-able)."""
        meta = self.model.meta
        return {
            "task": meta.task,
            "model": meta.model,
            "version": meta.version,
            "plant": plant_of(meta),
            "versions": self._versions.history,
            "checksum": self.model.checksum,
            "class_names": list(meta.class_names),
            "input_shape": list(meta.input_shape),
            "input_dtype": meta.input_dtype,
            "output_shape": list(meta.output_shape),
            "output_names": list(meta.output_names),
            "preprocessing": _plain(meta.preprocessing),
            "metrics": _plain(meta.metrics),
            "platform": self._platform,
            "max_batch": self.config.max_batch,
            "max_wait_ms": self.config.max_wait_ms,
            "control": self.config.control,
            "subscribe": self.config.subscribe,
            "watch": None if self.config.watch is None else str(self.config.watch),
            "stats": dataclasses.asdict(self.stats),
        }

    def serve_forever(self) -> None:
        """Serves until `stop()`; requests still queued then are answered before it returns."""
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        if self._control is not None:
            poller.register(self._control, zmq.POLLIN)
        if self._loader is not None:
            self._loader.start()
        try:
            while not self._stopping.is_set():
                self._apply_updates()
                wait = self._queue.wait_time(time.monotonic())
                timeout = (
                    IDLE_POLL_MS if wait is None else min(IDLE_POLL_MS, math.ceil(wait * 1000))
                )
                ready = dict(poller.poll(timeout))
                if self._control in ready:
                    self._receive_control()
                if self._socket in ready:
                    self._receive()
                if self._queue.due(time.monotonic()):
                    self._run_batch()
            while len(self._queue):
                self._run_batch()
        finally:
            if self._loader is not None:
                self._loader.stop()
            self._close_sockets()

    def start(self) -> InferenceServer:
        """Runs `serve_forever` in a background thread; returns self."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="hierfl-inference-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Asks the serving loop to finish (within IDLE_POLL_MS); joins it if `start` ran it."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> InferenceServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._thread is None:
            self._close_sockets()

    # The serving thread's steps.

    def _receive(self) -> None:
        """Every request already waiting (up to MAX_DRAIN, or until a batch is full), without blocking.

        The socket's EVENTS say whether another message is there: cheaper than a
        non-blocking receive that ends in `zmq.Again`.
        """
        for _ in range(MAX_DRAIN):
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames, time.monotonic())
            if self._queue.rows >= self.config.max_batch:
                return
            if not self._socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return

    def _handle(self, frames: list, now: float) -> None:
        """One message from the request socket: a prediction is queued, info answered, the rest refused."""
        envelope, message = split_envelope(frames)
        version = self.model.meta.version
        try:
            request = parse_request(message, self._spec)
            if request.kind in CONTROL_KINDS:
                self.stats.refused_control += 1
                raise ProtocolError(self._control_refusal(request.kind), request_id=request.id)
        except ProtocolError as err:
            self.stats.rejected_requests += 1
            log.warning("refused request %s: %s", err.request_id, err)
            self._send(envelope, encode_error(err.request_id, version, str(err)))
            return
        if request.kind == PREDICT:
            self._queue.add(Waiting(request.x, now, (envelope, request.id)))
        elif request.kind == INFO:
            self._send(envelope, encode_info(request.id, version, self.info()))

    def _control_refusal(self, kind: str) -> str:
        where = (
            f"send it to the control socket {self.config.control}"
            if self.config.control
            else "this server has none: start it with --control ipc://DIR/NAME (DIR private to its user)"
        )
        return f"{kind!r} is a control command, taken only on the server's control socket, not on the request socket; {where}"

    def _receive_control(self) -> None:
        """Every message waiting on the control socket: info and rollback are answered, predictions refused."""
        for _ in range(MAX_DRAIN):
            try:
                frames = self._control.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            envelope, message = split_envelope(frames)
            version = self.model.meta.version
            try:
                request = parse_request(message, self._spec)
                if request.kind == PREDICT:
                    raise ProtocolError(
                        f"the control socket takes {', '.join((INFO, *CONTROL_KINDS))}; "
                        f"send predictions to {self.endpoint}",
                        request_id=request.id,
                    )
            except ProtocolError as err:
                self.stats.rejected_requests += 1
                log.warning("refused control request %s: %s", err.request_id, err)
                self._send(envelope, encode_error(err.request_id, version, str(err)), self._control)
                continue
            if request.kind == ROLLBACK:
                self._rollback(envelope, request.id)
            else:
                self._send(envelope, encode_info(request.id, version, self.info()), self._control)

    def _rollback(self, envelope: list, request_id: int) -> None:
        old = self.model.meta.version
        try:
            self._versions.rollback()
        except InferenceError as err:
            self._send(envelope, encode_error(request_id, old, str(err)), self._control)
            return
        self.stats.rollbacks += 1
        log.info("rolled back: serving version %d again (was %d)", self.model.meta.version, old)
        self._send(
            envelope, encode_info(request_id, self.model.meta.version, self.info()), self._control
        )

    def _run_batch(self) -> None:
        batch = self._queue.take()
        model = self.model
        x = batch[0].x if len(batch) == 1 else np.concatenate([w.x for w in batch])
        try:
            y = model.predict(x)
        except Exception as err:  # e.g. device out of memory: answer, log, keep serving
            log.exception(
                "model version %d failed on a batch of %d rows", model.meta.version, len(x)
            )
            self.stats.failed_requests += len(batch)
            for waiting in batch:
                envelope, request_id = waiting.reply_to
                self._send(
                    envelope,
                    encode_error(
                        request_id,
                        model.meta.version,
                        f"the model failed: {type(err).__name__}: {err}",
                    ),
                )
            return
        self.stats.requests += len(batch)
        self.stats.rows += len(x)
        self.stats.batches += 1
        for waiting, rows in zip(batch, split_rows(y, [len(w.x) for w in batch])):
            envelope, request_id = waiting.reply_to
            self._send(envelope, encode_prediction(request_id, model.meta.version, rows))

    def _apply_updates(self) -> None:
        if self._loader is None:
            return
        while True:
            try:
                update: Update = self._loader.updates.get_nowait()
            except queue.Empty:
                return
            if update.model is None:
                self.stats.rejected_artifacts += 1
                log.warning("refused a new model from %s: %s", update.source, update.error)
                continue
            old = self._versions.swap(update.model)
            self.stats.swaps += 1
            log.info(
                "now serving version %d (was %d) from %s",
                update.model.meta.version,
                old.meta.version,
                update.source,
            )

    def _send(self, envelope: list, frames: list, socket: zmq.Socket | None = None) -> None:
        """Sends a reply on `socket` (the request socket by default)."""
        try:
            (socket or self._socket).send_multipart([*envelope, *frames], copy=False)
        except zmq.ZMQError as err:  # the peer is gone or its queue is full: it will time out
            log.warning("could not send a reply: %s", err)

    def _close_sockets(self) -> None:
        for socket in (self._socket, self._control):
            if socket is not None and not socket.closed:
                socket.close()
        if not self._context.closed:
            self._context.term()


def _load_first(model: str | os.PathLike | Artifact | bytes, max_batch: int) -> CompiledModel:
    """The server's initial model, compiled and warmed up, from a path, an Artifact or file bytes."""
    if isinstance(model, Artifact):
        data = encode_artifact(model)
        artifact = model
    else:
        if isinstance(model, (str, os.PathLike)):
            try:
                data = Path(model).read_bytes()
            except OSError as err:
                raise ArtifactError(
                    f"{model}: cannot read model file ({err.strerror or err})"
                ) from None
            source = str(model)
        else:
            data, source = model, "<bytes>"
        artifact = decode_artifact(data, source)
    return compile_artifact(artifact, checksum=file_checksum(data), max_batch=max_batch)


def _plain(value: Any) -> Any:
    """`value` with tuples as lists and non-msgpack leaves as strings, for the info reply."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
