"""What every runtime node shares: the model's layout, the sockets, liveness, logs and counters.

`NodeModel` is everything a node derives from the topology before it talks to anyone:
the model and its flat spec, the algorithm, the link codecs and the payload layouts it
checks incoming frames against; it needs no training data. `Membership` tracks which
peers are alive from the time they were last heard. The socket helpers bind a ROUTER
(servers: the cloud, an edge) or connect a DEALER whose routing id is the node's name
(clients: an edge towards the cloud, a device towards its edge), with CurveZMQ when
the topology lists public keys.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import zmq
from flax import nnx

from hierfl.core import personal, rng
from hierfl.core.algorithms import Algorithm, build_algorithm
from hierfl.core.links import LinkCodecs, build_link_codecs
from hierfl.data.loading import topology_task
from hierfl.data.tasks import Task
from hierfl.data.tasks.models import Model, Params, build_model, model_shapes
from hierfl.kernels import FlatSpec, flat_spec, unravel
from hierfl.runtime import protocol
from hierfl.runtime.ports import BindError
from hierfl.topology import Topology

CACHE_ENV = "HIERFL_COMPILATION_CACHE"


def enable_compilation_cache() -> Path | None:
    """Lets every node process share compiled XLA programs through JAX's persistent cache.

    All devices of a federation compile the same training step, and a restarted node the
    same programs again; with the cache the first compile serves the rest (it halves the
    CPU time of starting a small federation). The directory is `$HIERFL_COMPILATION_CACHE`
    (`off` disables it), else `JAX_COMPILATION_CACHE_DIR` if the user set one, else
    `~/.cache/hierfl/jax`. Returns the directory used, or None.
    """
    setting = os.environ.get(CACHE_ENV)
    if setting == "off":
        return None
    if setting is None and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    directory = Path(setting) if setting else base / "hierfl" / "jax"
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory


@contextlib.contextmanager
def compiling_once(program: str) -> Iterator[None]:
    """Holds the machine-wide lock `program` of the persistent compilation cache while the
    caller compiles: nodes on one machine that compile the same programs (every device host
    its training step, every edge its aggregation and evaluation) then compile them once,
    and the others read them from the cache instead of compiling side by side. Without the
    cache (`HIERFL_COMPILATION_CACHE=off`) it holds nothing."""
    directory = jax.config.jax_compilation_cache_dir
    if not directory:
        yield
        return
    locks = Path(directory) / "hierfl-locks"  # JAX's cache only reads its own files there
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{program}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclasses.dataclass(frozen=True)
class NodeModel:
    """The model every node of a federation agrees on, and how each link encodes it.

    With control variates (SCAFFOLD) every message that carries arrays carries one more,
    last: a float32 `[P]` variate (the cloud's `c` with a model, a device's change of `c_i`
    with an update, an edge's weighted sum of those with a summary).
    """

    model: Model
    build_initial: Callable[[], Params]
    spec: FlatSpec
    task: Task
    algorithm: Algorithm
    codecs: LinkCodecs
    device_layout: protocol.Layout
    edge_layout: protocol.Layout
    model_layout: protocol.Layout

    @functools.cached_property
    def initial_params(self) -> Params:
        """The global model's initial parameters, built on first use: devices never need
        them and edges only in some modes, and building costs every process about a second
        (each initializer a small XLA program)."""
        return self.build_initial()

    def zero_params(self) -> Params:
        """Zeros in the parameters' shapes (to compile a function of them before any arrive)."""
        return unravel(self.spec, np.zeros(self.spec.size, np.float32))

    @property
    def variates(self) -> bool:
        return self.algorithm.control_variates

    def payload(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """A checked update's or summary's codec frames, without the variate frame."""
        return arrays[:-1] if self.variates else arrays


def node_model(
    topology: Topology, counts: np.ndarray | None = None, effective: float | None = None
) -> NodeModel:
    """Builds the global model (from the run's init key, as the simulator does) and its layouts.

    `counts` are the devices' example counts (the plan's), or `effective` their effective
    step count (the census's): a device passes one, since FedNova's local update rescales
    by the federation's effective steps; the edge and the cloud never run a local update,
    so they need neither.
    """
    federation = topology.federation
    task = topology_task(topology)
    name = federation.model or task.default_model
    make = task.models[name]
    model, shapes = model_shapes(name, make)
    spec = flat_spec(shapes)
    codecs = build_link_codecs(topology.compression, spec.size)
    counts = np.ones(topology.num_devices, np.int32) if counts is None else counts
    algorithm = build_algorithm(model.apply_features, task, topology, counts, effective)
    variate = protocol.model_layout(spec) if algorithm.control_variates else protocol.Layout(())
    return NodeModel(
        model,
        functools.partial(initial_params, name, make, rng.init_key(federation.seed)),
        spec,
        task,
        algorithm,
        codecs,
        protocol.codec_layout(codecs.device_to_edge) + variate,
        protocol.codec_layout(codecs.edge_to_cloud) + variate,
        protocol.model_layout(spec) + variate,
    )


def initial_params(name: str, make: Callable[[nnx.Rngs], nnx.Module], key: jax.Array) -> Params:
    return build_model(name, make, key)[1]


def tuning_model(
    topology: Topology,
    net: NodeModel,
    counts: np.ndarray | None = None,
    effective: float | None = None,
) -> NodeModel | None:
    """`net` with the local update of fine-tuning rounds (`[personalization] method =
    "fine-tune"`): devices train through `personal.frozen_apply`, so only the adapted layers
    move, as in the simulator's plant rounds. None unless the topology fine-tunes."""
    adapted = personal.fine_tune_mask(topology, net.spec)
    if adapted is None:
        return None
    frozen = personal.frozen_apply(net.model.apply_features, net.spec, adapted)
    counts = np.ones(topology.num_devices, np.int32) if counts is None else counts
    algorithm = build_algorithm(frozen, net.task, topology, counts, effective)
    return dataclasses.replace(net, algorithm=algorithm)


def runtime_problem(topology: Topology) -> str | None:
    """Why the runtime cannot run `topology` yet, or None.

    A device of a task that reads files holds only its own data. The census before round 1
    gives the cloud the federation's example count (SCAFFOLD's variate) and every device
    FedNova's effective step count, but secure aggregation's weight bound must be known to
    every device of a plant before its first masked update, so the topology declares it.
    """
    privacy = topology.privacy
    if not (topology_task(topology).reads_files and privacy.secure_aggregation):
        return None
    if privacy.enabled or privacy.secagg_max_examples is not None:
        return None
    return (
        f"{topology.source}: privacy.secagg_max_examples: secure aggregation encodes each "
        "device's weight (its example count) as a fraction of the most examples a device "
        f"holds, and each device of task {topology.federation.task!r} reads only its own "
        "files; declare that bound (e.g. secagg_max_examples = 100000) for the runtime"
    )


class Membership:
    """The peers heard from recently: `seen(peer)` on every valid message, `alive()` those within `timeout` s."""

    def __init__(self, timeout: float, clock=time.monotonic):
        self.timeout = timeout
        self._clock = clock
        self._last: dict[str, float] = {}

    def seen(self, peer: str) -> bool:
        """Records `peer` as heard now; True if it was not alive before (it joined or came back)."""
        now = self._clock()
        last = self._last.get(peer)
        self._last[peer] = now
        return last is None or now - last > self.timeout

    def alive(self) -> set[str]:
        now = self._clock()
        return {peer for peer, last in self._last.items() if now - last <= self.timeout}

    def silences(self) -> dict[str, float]:
        """Seconds since each peer was last heard."""
        now = self._clock()
        return {peer: now - last for peer, last in self._last.items()}

    def forget(self, peers: Iterable[str]) -> None:
        for peer in peers:
            self._last.pop(peer, None)


class Counters:
    """Rejected messages by reason (`protocol` reason codes), for logs and metrics, and the
    last `RECENT_REFUSALS` of them (sender, reason, detail, wall-clock time) for the live status."""

    RECENT_REFUSALS = 20

    def __init__(self) -> None:
        self.rejected: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=self.RECENT_REFUSALS
        )

    def reject(self, log: logging.Logger, peer: object, error: protocol.MessageRejected) -> None:
        self.rejected[error.reason] += 1
        sender = peer.decode("utf-8", "replace") if isinstance(peer, bytes) else str(peer)
        refusal = {"sender": sender[:120], "reason": error.reason, "detail": str(error)[:300]}
        self.recent.append({**refusal, "at": time.time()})
        log.warning("rejected message from %s: %s: %s", _printable(peer), error.reason, error)

    def snapshot(self) -> dict[str, int]:
        return dict(self.rejected)


def node_name(device_id: str) -> str:
    """A file-name-safe node name: `device-plant-a.line-1.dev-001`."""
    return "device-" + device_id.replace("/", ".")


def node_logger(name: str) -> logging.Logger:
    """A logger writing `time level message` lines to stderr (the launcher sends them to RUN_DIR/logs)."""
    log = logging.getLogger(f"hierfl.runtime.{name}")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s " + name + ": %(message)s")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


@dataclasses.dataclass(frozen=True)
class CurveKeys:
    """A node's own CurveZMQ key pair (Z85 bytes) and the public keys it accepts or dials."""

    public: bytes
    secret: bytes


CONNECTION_HEARTBEAT_MS = (1000, 10_000)
"""ZMTP heartbeats on every link: a PING each second, a connection silent for 10 s is closed.

A ROUTER refuses a second connection that claims a connected peer's routing id, so a
peer whose old connection died without closing (its host lost power, the network
split) is admitted again once the heartbeat has dropped that connection."""


def bind_router(
    context: zmq.Context, address: str, *, max_bytes: int, keys: CurveKeys | None = None
) -> zmq.Socket:
    """A ROUTER bound at `address` for many dialing peers, each known by its routing id (its name).

    A routing id belongs to its first live connection: a second connection claiming it is
    not admitted (ZMQ_ROUTER_HANDOVER off; libzmq drops its messages), so no one can cut a
    live peer off by dialing with its name. A peer that restarts dials a new connection
    once its old one is closed (by its kernel, or by the heartbeat). With `keys`, the
    socket is a CurveZMQ server: traffic is encrypted and clients must pass the context's
    authenticator (see `hierfl.runtime.curve`). HierflError if `address` cannot be bound.
    """
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.ROUTER_HANDOVER, 0)
    _set_heartbeat(socket)
    socket.setsockopt(
        zmq.MAXMSGSIZE, 2 * max_bytes
    )  # a hard guard; the exact limit is checked per message
    socket.setsockopt(zmq.LINGER, 500)
    if keys is not None:
        socket.curve_secretkey = keys.secret
        socket.curve_publickey = keys.public
        socket.curve_server = True
    try:
        socket.bind(address)
    except zmq.ZMQError as err:
        socket.close(linger=0)
        raise BindError(address, err) from None
    return socket


def _set_heartbeat(socket: zmq.Socket) -> None:
    interval, timeout = CONNECTION_HEARTBEAT_MS
    socket.setsockopt(zmq.HEARTBEAT_IVL, interval)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
    socket.setsockopt(zmq.HEARTBEAT_TTL, timeout)


def connect_dealer(
    context: zmq.Context,
    address: str,
    identity: str,
    *,
    max_bytes: int,
    keys: CurveKeys | None = None,
    server_key: bytes | None = None,
) -> zmq.Socket:
    """A DEALER with routing id `identity`, dialing `address` (reconnecting by itself when the server restarts)."""
    socket = dealer(context, identity, max_bytes=max_bytes, keys=keys, server_key=server_key)
    socket.connect(address)
    return socket


def dealer(
    context: zmq.Context,
    identity: str,
    *,
    max_bytes: int,
    keys: CurveKeys | None = None,
    server_key: bytes | None = None,
) -> zmq.Socket:
    """A DEALER with routing id `identity`, not yet dialing: a peer connects when it is about to
    speak (a server takes a connection that stays silent for long for one it holds back)."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.ROUTING_ID, identity.encode())
    socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_bytes)
    socket.setsockopt(zmq.LINGER, 500)
    socket.setsockopt(zmq.RECONNECT_IVL, 100)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    _set_heartbeat(socket)
    if keys is not None:
        socket.curve_secretkey = keys.secret
        socket.curve_publickey = keys.public
        socket.curve_serverkey = server_key
    return socket


def check_peer_key(frames: list[Any], sender: str, keys: Mapping[str, str]) -> None:
    """MessageRejected unless a message of `sender` came over a connection made with the key
    `keys` binds it to (CurveZMQ: the ZAP handler gives each message its peer's public key
    as `User-Id`). Senders `keys` does not name are not bound."""
    key = keys.get(sender)
    if key is None:
        return
    used = frames[0].get("User-Id")
    if used != key:
        raise protocol.MessageRejected(
            protocol.UNKNOWN_SENDER,
            f"{sender} connects with its own key {key[:8]}..., this connection's is "
            f"{(used or 'none')[:8]}...: another peer claims its name",
        )


def recv_router(socket: zmq.Socket) -> tuple[bytes, list[Any]]:
    """One message from a ROUTER, without copying large frames: `(routing id, frames)`."""
    frames = socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
    return frames[0].bytes, frames[1:]


def drain_router(
    socket: zmq.Socket,
    handle: Callable[[bytes, list[Any]], None],
    refuse: Callable[[bytes, Exception], None],
    heard: Callable[[list[Any]], None],
) -> None:
    """Reads every message queued on a server's ROUTER: `heard(frames)` and `handle(peer, frames)`
    each, and hands a `protocol.MessageRejected` that handling raises to `refuse(peer, error)`,
    so a bad message is answered and counted and the server keeps going."""
    while True:
        try:
            peer, frames = recv_router(socket)
        except zmq.Again:
            return
        if frames:
            heard(frames)
        try:
            handle(peer, frames)
        except protocol.MessageRejected as error:
            refuse(peer, error)


def send_router(socket: zmq.Socket, peer: str | bytes, frames: list[Any]) -> None:
    """Sends to `peer` through a ROUTER; a peer that is gone is silently skipped (heartbeats tell)."""
    try:
        socket.send_multipart(
            [peer if isinstance(peer, bytes) else peer.encode(), *frames],
            copy=False,
            flags=zmq.NOBLOCK,
        )
    except zmq.Again:
        pass


def _printable(peer: object) -> str:
    if isinstance(peer, bytes):
        try:
            return repr(peer.decode())
        except UnicodeDecodeError:
            return repr(peer[:40])
    return repr(peer)


def start_waiting_over(
    alive: int,
    total: int,
    required: int,
    elapsed: float,
    *,
    start_timeout: float,
    grace: float,
    resumed: bool,
) -> bool:
    """Whether a server stops waiting for peers before its first round.

    It waits for all `total` peers up to `start_timeout` s; a resumed server (whose peers
    are mostly running already) starts once `required` of them are back after `grace` s,
    rather than holding every round for a peer that may be gone.
    """
    if alive >= total or elapsed >= start_timeout:
        return True
    return resumed and elapsed >= grace and alive >= required
