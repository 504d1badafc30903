"""Hostile peers against live runtime nodes: hypothesis-made messages over raw ZeroMQ.

Real `hierfl cloud` and `hierfl edge` processes on ipc:// sockets, and raw DEALER
sockets that dial them as their peers would: with the routing ids of peers the node
knows but that no real process holds (two devices of the edge's plant, another plant's
edge at the cloud) and of strangers. Every message is built broken, or mistimed, by
construction, each kind of breakage naming the refusal reasons it may get independently
of the node's checks: random bytes, a truncated, deeply nested, oversized or non-map
header, a missing or wrongly typed field, a kind the node does not take, a wrong array
spec or codec, weights and losses outside float32 (1e39, nan, -1), frames of the wrong
count, length or dtype, values that are not finite or overflow once weighted, an
evaluation or an `out` with wrong fields, a stranger's routing id, and well-formed
updates, summaries and evaluations for rounds long closed or far ahead.

Properties: every message gets a `rejected` reply with one of its reasons, both nodes
keep running, and what they count (the edge's `status`, the cloud's log) is exactly what
was sent. In a round driven by the test, duplicate, replayed and mistimed updates and
summaries are refused and a peer's routing id taken by a second connection gets nothing
in, so the global model stays exactly what the valid (zero) updates make it. Last, a
whole `hierfl launch` under fire from strangers and impostors trains the same model as
a clean run of the same seed.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierfl.data.loading import load_topology
from hierfl.runs.checkpoint import load_params
from hierfl.runtime import protocol
from hierfl.runtime.launch import Launch, node_env
from hierfl.runtime.node import node_model
from hierfl.sim.engine import simulate

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 240.0
"""Seconds for a node process to import JAX and compile, on a loaded CI machine."""
REPLY_TIMEOUT = 30.0
MAX_BYTES = 1 << 17
"""The nodes' `max_message_bytes`: a 9,610-parameter model fits; larger messages are refused
(up to twice this, beyond which ZeroMQ drops the connection)."""

TOPOLOGY = """
[federation]
name = "{name}"
task = "digits"
model = "mlp"
cloud_rounds = {rounds}
edge_rounds = {edge_rounds}
local_steps = 2
batch_size = 16
learning_rate = 0.1
seed = 7

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
device_deadline = 60.0
edge_deadline = 60.0
heartbeat_interval = 0.3
heartbeat_timeout = 600.0
start_timeout = 600.0
max_message_bytes = {max_bytes}
devices_per_process = "plant"

[[plants]]
name = "plant-a"
address = "ipc://{dir}/a.ipc"
[[plants.lines]]
name = "line-1"
devices = 2
{more}"""

GHOST_PLANTS = """
[[plants]]
name = "plant-b"
address = "ipc://{dir}/b.ipc"
[[plants.lines]]
name = "line-1"
devices = 1

[[plants]]
name = "plant-c"
address = "ipc://{dir}/c.ipc"
[[plants.lines]]
name = "line-1"
devices = 1
"""
"""Plants whose edges no process runs: the test speaks for plant-b (and for plant-c only
to open a round), so the cloud waits for plant-c (`start_timeout`) until the test lets it start."""

DEV1, DEV2 = b"plant-a/line-1/dev-001", b"plant-a/line-1/dev-002"
KNOWN = {"edge": (DEV1, DEV2), "cloud": (b"plant-b",)}
"""Routing ids each node knows that no real process holds: the hostile peers speak as them."""
STRANGERS = {
    "edge": (b"plant-a/line-1/dev-009", b"plant-b/line-1/dev-001", b"plant-a", b"\xff\xfe\x80"),
    "cloud": (b"plant-z", DEV1, b"cloud", b"\xff\xfe\x80"),
}
EXAMPLES_PER_WAY = 8
"""Hypothesis examples for each way of breaking a message: 184 messages in all."""
MISTIMED = (protocol.STALE_ROUND, protocol.FUTURE_ROUND)
FAR_ROUNDS = st.integers(1000, protocol.MAX_COUNT)
"""Rounds no node of these tests reaches; with round 0 (before any), mistimed at any time."""


def write_topology(folder: Path, *, name: str, rounds: int, edge_rounds: int, more: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(
        TOPOLOGY.format(
            name=name,
            rounds=rounds,
            edge_rounds=edge_rounds,
            dir=folder,
            max_bytes=MAX_BYTES,
            more=more.format(dir=folder),
        )
    )
    return path


def checkout_env() -> dict[str, str]:
    """The launcher's node environment, importing this checkout's `hierfl`."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**node_env(os.environ), "PYTHONPATH": path}


def start_node(folder: Path, name: str, *args: str) -> subprocess.Popen:
    """`python -m hierfl ARGS`, its output in `folder/name.log`."""
    with open(folder / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "hierfl", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=checkout_env(),
        )


def stop_node(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_log(process: subprocess.Popen, log: Path, text: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        if text in content:
            return
        assert process.poll() is None, f"{log.name} exited:\n{content[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in {log.name}:\n{log.read_text()[-3000:]}")


class Peer:
    """A raw DEALER with routing id `identity` dialing `address`: what a hostile peer holds.

    While it waits for an answer it calls `watch()`, which fails if a node died (so a dead
    node fails the test at once, not after the reply timeout).
    """

    def __init__(
        self, context: zmq.Context, address: str, identity: bytes, watch: Callable[[], None]
    ):
        self.identity, self.watch = identity, watch
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.ROUTING_ID, identity)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def receive(self, kinds: tuple[str, ...], timeout: float = REPLY_TIMEOUT) -> list[bytes] | None:
        """The next message of one of `kinds` (others, such as models a node sends a peer
        it takes for alive, are passed over), or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(int(min(left, 0.2) * 1000)):
                self.watch()
                continue
            frames = self.socket.recv_multipart()
            if msgpack.unpackb(frames[0])["kind"] in kinds:
                return frames
        return None

    def refusal(self) -> str:
        """The reason of the `rejected` reply this peer's last message must get."""
        frames = self.receive((protocol.REJECTED,))
        assert frames is not None, f"no reply to {self.identity!r} in {REPLY_TIMEOUT} s"
        return msgpack.unpackb(frames[0])["reason"]


def header(kind: str, sender: str, round: int, edge_round: int = 0, **fields: Any) -> dict:
    """A message header as peers write it (`protocol.encode` builds the same map)."""
    return {
        "protocol": 1,
        "kind": kind,
        "sender": sender,
        "round": round,
        "edge_round": edge_round,
        "model_version": 0,
        **fields,
    }


def packed_map(items: list[tuple[str, bytes]]) -> bytes:
    """A msgpack map of already packed values (a value nested deeper than msgpack.packb allows)."""
    return (
        b"\xde" + len(items).to_bytes(2, "big") + b"".join(msgpack.packb(k) + v for k, v in items)
    )


def deeply_nested(depth: int) -> bytes:
    """A msgpack list nested `depth` levels deep, packed by hand."""
    return b"\x91" * depth + b"\xc0"


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
"""Any msgpack value, nested a little."""
not_numbers = values.filter(lambda v: isinstance(v, bool) or not isinstance(v, (int, float)))
not_counts = values.filter(
    lambda v: not (type(v) is int and 0 <= v <= protocol.MAX_COUNT)  # bool is not `type` int
)
not_finite = st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1e39, 3.5e38, 1e300])


class Hostile(NamedTuple):
    """A message built to be refused: where to (`edge` or `cloud`), from which routing id,
    its frames, the reasons it may be refused for, and what is wrong (for a failure's message)."""

    target: str
    identity: bytes
    frames: list[bytes]
    reasons: frozenset[str]
    what: str

    def __repr__(self) -> str:
        sizes = [len(f) for f in self.frames]
        return f"Hostile({self.what}, frames of {sizes} bytes, refused as one of {sorted(self.reasons)})"


class Base(NamedTuple):
    """A message a peer of the target sends, mistimed: header, array frames, and the reasons
    it gets as it is (an empty set: it would be taken, so it is only ever sent broken)."""

    header: dict[str, Any]
    frames: list[bytes]
    as_is: frozenset[str]


EDGE_KINDS = (protocol.UPDATE, protocol.OUT, protocol.STATUS)
"""What devices send their edge; the cloud takes summaries and evaluations from edges."""


def base(draw, kind: str, sender: str, spec: dict, size: int, classes: int) -> Base:
    """A `kind` message as a peer sends it, for a round no node is in."""
    model = [np.zeros(size, np.float32).tobytes()]
    arrays = {"spec": spec, "codec": "none", "weight": 10.0, "loss": 0.5}
    round_ = draw(st.just(0) | FAR_ROUNDS)
    if kind == protocol.UPDATE:
        fields = header(kind, sender, round_, draw(st.integers(0, 3)), **arrays)
        return Base(fields, model, frozenset(MISTIMED))
    if kind == protocol.OUT:
        return Base(header(kind, sender, 0, reason="no data"), [], frozenset())
    if kind == protocol.STATUS:
        return Base(header(kind, sender, 0), [], frozenset())
    if kind == protocol.SUMMARY:
        stale = draw(st.sampled_from([{}, {"stale": True, "base_version": 0}]))
        statistics = {"answered": [2], "expected": 1, "rejected": {}, "late": 0, **stale}
        fields = header(kind, sender, round_, 1, **arrays, **statistics)
        return Base(fields, model, frozenset(MISTIMED))
    fields = header(
        protocol.EVALUATION,
        sender,
        draw(FAR_ROUNDS),  # the version evaluated: one made before now would be taken
        count=classes,
        loss_sum=2.0,
        metric_sums={"accuracy": 1.0},
        confusion=np.eye(classes, dtype=int).tolist(),
        histogram=[],
    )
    return Base(fields, [], frozenset({protocol.FUTURE_ROUND}))


ANY = EDGE_KINDS + (protocol.SUMMARY, protocol.EVALUATION)
ARRAYS = (protocol.UPDATE, protocol.SUMMARY)
WAYS = {
    **dict.fromkeys(["random bytes", "not a map", "truncated", "nested", "long string"], ANY),
    **dict.fromkeys(["oversized", "field type", "missing field", "unknown kind", "sender"], ANY),
    "wrong kind": ANY,
    **dict.fromkeys(["spec", "codec", "weight", "loss", "frame count", "frame length"], ARRAYS),
    "values": ARRAYS,
    "summary field": (protocol.SUMMARY,),
    "evaluation field": (protocol.EVALUATION,),
    "reason": (protocol.OUT,),
    "extra frame": (protocol.OUT, protocol.STATUS, protocol.EVALUATION),
    "mistimed": (protocol.UPDATE, protocol.SUMMARY, protocol.EVALUATION),
}
"""The ways of breaking a message, and the kinds of message each applies to."""


HEADER_FIELDS = ("protocol", "kind", "sender", "round", "edge_round", "model_version")
WRONG_KINDS = {
    "edge": (protocol.MODEL, protocol.SUMMARY, protocol.STOP, protocol.REJECTED)
    + (protocol.EVALUATION, protocol.HE_SUMMARY, protocol.HE_AGGREGATE)
    + protocol.SECAGG_FROM_DEVICE
    + protocol.SECAGG_FROM_EDGE,
    "cloud": (protocol.MODEL, protocol.UPDATE, protocol.STOP, protocol.REJECTED, protocol.STATUS)
    + (protocol.OUT, protocol.HE_SUMMARY, protocol.HE_AGGREGATE)
    + protocol.SECAGG_FROM_DEVICE
    + protocol.SECAGG_FROM_EDGE,
}
"""Kinds of the protocol a node does not take from that peer (hello and heartbeat it does)."""
MALFORMED, NON_FINITE, OVERSIZED, UNKNOWN = (
    frozenset({protocol.MALFORMED}),
    frozenset({protocol.NON_FINITE}),
    frozenset({protocol.OVERSIZED}),
    frozenset({protocol.UNKNOWN_SENDER}),
)


HEADER_WAYS = ("random bytes", "not a map", "truncated", "nested", "long string", "oversized")
HEADER_WAYS += ("field type", "missing field", "unknown kind", "sender")
"""Ways found before the sender is known: a stranger's message gets their reasons too."""


class Breakage(NamedTuple):
    """A message broken on purpose: what is wrong, its frames, the reasons it may be refused for."""

    what: str
    frames: list[bytes]
    reasons: frozenset[str]


def broken(draw, way: str, base: Base, sender: str, spec: dict, size: int) -> Breakage:
    """`base` broken `way`."""
    if way in HEADER_WAYS:
        return broken_header(draw, way, base, sender)
    return broken_body(draw, way, base, spec, size)


def broken_header(draw, way: str, base: Base, sender: str) -> Breakage:
    """`base` with its header, its size or its sender wrong."""
    fields, frames, packed = dict(base.header), list(base.frames), msgpack.packb
    if way == "random bytes":
        extra = draw(st.lists(st.binary(max_size=64), max_size=2))
        return Breakage(way, [draw(st.binary(max_size=200)), *extra], MALFORMED)
    if way == "not a map":
        value = draw(values.filter(lambda v: not isinstance(v, dict)))
        return Breakage(f"header {value!r}", [packed(value), *frames], MALFORMED)
    if way == "truncated":  # msgpack is prefix-free: a cut map is never a whole one
        raw = packed(fields)
        return Breakage(way, [raw[: draw(st.integers(0, len(raw) - 1))], *frames], MALFORMED)
    if way == "nested":
        depth = draw(st.integers(protocol.MAX_HEADER_DEPTH, 5000))
        items = [(k, packed(v)) for k, v in fields.items()] + [("x", deeply_nested(depth))]
        return Breakage(f"{way} {depth}", [packed_map(items), *frames], MALFORMED)
    if way == "long string":
        room = MAX_BYTES - sum(map(len, frames)) - 4096
        text = "x" * draw(st.integers(protocol.MAX_STR_BYTES + 1, room))
        return Breakage(way, [packed({**fields, "note": text}), *frames], MALFORMED)
    if way == "oversized":  # over the node's limit, under ZeroMQ's (twice it)
        padding = bytes(draw(st.integers(MAX_BYTES + 1, 2 * MAX_BYTES - 4096)))
        return Breakage(way, [packed(fields), *frames, padding], OVERSIZED)
    if way == "field type":
        name = draw(st.sampled_from(HEADER_FIELDS))
        wrong = draw(wrong_header_value(name, sender))
        fields[name] = wrong
        if name == "sender" and isinstance(wrong, str):
            return Breakage(f"sender {wrong!r}", [packed(fields), *frames], UNKNOWN)
        return Breakage(f"{name} = {wrong!r}", [packed(fields), *frames], MALFORMED)
    if way == "missing field":
        name = draw(st.sampled_from(HEADER_FIELDS))
        del fields[name]
        return Breakage(f"no {name}", [packed(fields), *frames], MALFORMED)
    if way == "unknown kind":
        fields["kind"] = draw(st.text(max_size=16).filter(lambda k: k not in protocol.KINDS))
        return Breakage(f"kind {fields['kind']!r}", [packed(fields), *frames], MALFORMED)
    if way == "sender":  # a known routing id, another sender in the header
        fields["sender"] = draw(st.sampled_from(["plant-a/line-1/dev-002", "plant-c", "cloud"]))
        fields["sender"] = fields["sender"] if fields["sender"] != sender else "plant-a"
        return Breakage(f"sender {fields['sender']}", [packed(fields), *frames], UNKNOWN)
    raise AssertionError(way)


def broken_body(draw, way: str, base: Base, spec: dict, size: int) -> Breakage:
    """`base` with a body that is wrong for its kind, or as it is (mistimed)."""
    fields, frames, kind = dict(base.header), list(base.frames), base.header["kind"]
    packed = msgpack.packb
    if way == "wrong kind":
        fields["kind"] = draw(st.sampled_from(WRONG_KINDS[target_of(kind)]))
        reasons = frozenset({protocol.MALFORMED, protocol.UNEXPECTED})
        return Breakage(f"kind {fields['kind']}", [packed(fields), *frames], reasons)
    if way == "spec":
        fields["spec"] = draw(wrong_specs(spec))
        reasons = frozenset({protocol.WRONG_SPEC})
        return Breakage(f"spec {fields['spec']!r:.80}", [packed(fields), *frames], reasons)
    if way == "codec":
        fields["codec"] = draw(values.filter(lambda v: v != "none"))
        reasons = frozenset({protocol.WRONG_SPEC})
        return Breakage(f"codec {fields['codec']!r}", [packed(fields), *frames], reasons)
    if way in ("weight", "loss"):
        value, reasons = draw(weight_or_loss(way))
        fields[way] = value
        return Breakage(f"{way} {value!r}", [packed(fields), *frames], reasons)
    if way == "frame count":
        count = draw(st.sampled_from([0, 2, 3]))
        return Breakage(f"{count} frames", [packed(fields), *(frames * 3)[:count]], MALFORMED)
    if way == "frame length":
        dtype = draw(st.sampled_from(["float64", "float16", "int8", "float32"]))
        cut = draw(st.integers(-16, 16).filter(bool)) if dtype == "float32" else 0
        data = np.zeros(size, dtype).tobytes()
        data = data[:cut] if cut < 0 else data + bytes(cut)
        reasons = OVERSIZED if len(data) > 4 * size else MALFORMED
        return Breakage(f"frame of {dtype} {cut:+d}", [packed(fields), data], reasons)
    if way == "values":
        array = np.zeros(size, np.float32)
        # Finite in float32 but over float32's max once multiplied by the weight (10).
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38, -3e38, 4e37]))
        array[draw(st.integers(0, size - 1))] = value
        return Breakage(f"value {value}", [packed(fields), array.tobytes()], NON_FINITE)
    if way == "summary field":
        name, value = draw(wrong_summary_field())
        fields[name] = value
        reasons = NON_FINITE if name == "unclipped" and isinstance(value, float) else MALFORMED
        return Breakage(f"{name} = {value!r:.60}", [packed(fields), *frames], reasons)
    if way == "evaluation field":
        name, value, reasons = draw(wrong_evaluation_field(fields["count"]))
        fields[name] = value
        return Breakage(f"{name} = {value!r:.60}", [packed(fields), *frames], reasons)
    if way == "reason":
        value = draw(values.filter(lambda v: not isinstance(v, str)) | st.just("r" * 2001))
        if draw(st.booleans()):
            del fields["reason"]
        else:
            fields["reason"] = value
        return Breakage(f"reason {fields.get('reason')!r:.40}", [packed(fields)], MALFORMED)
    if way == "extra frame":
        extra = draw(st.lists(st.binary(max_size=64), min_size=1, max_size=2))
        return Breakage(way, [packed(fields), *extra], MALFORMED)
    assert way == "mistimed"
    when = (fields["round"], fields["edge_round"])
    return Breakage(f"{kind} for {when}", [packed(fields), *frames], base.as_is)


def wrong_header_value(name: str, sender: str) -> st.SearchStrategy:
    if name == "protocol":
        return values.filter(lambda v: msgpack.packb(v) != msgpack.packb(1))
    if name == "kind":
        return values.filter(lambda v: v not in protocol.KINDS)
    if name == "sender":
        return values.filter(lambda v: v != sender)
    return not_counts


def wrong_specs(spec: dict) -> st.SearchStrategy:
    """Array specs that are not `spec`: another value, a leaf missing, a shape or dtype changed."""

    def changed(where: tuple[str, int]) -> dict:
        key, leaf = where
        other = {k: list(v) for k, v in spec.items()}
        other[key][leaf] = {"names": "other", "shapes": [7, 7], "dtypes": "float64"}[key]
        return other

    missing = st.sampled_from(list(spec)).map(lambda k: {**spec, k: spec[k][:-1]})
    leaves = len(spec["names"])
    edited = st.tuples(st.sampled_from(list(spec)), st.integers(0, leaves - 1)).map(changed)
    return values.filter(lambda v: v != spec) | missing | edited


def weight_or_loss(name: str) -> st.SearchStrategy:
    """A wrong `weight` or `loss` and its reasons: not a number, outside float32, a negative weight."""
    cases = [not_numbers.map(lambda v: (v, MALFORMED)), not_finite.map(lambda v: (v, NON_FINITE))]
    if name == "weight":  # a weight counts examples: at most 1e12, never negative
        cases.append(st.floats(-1e12, -1e-30).map(lambda v: (v, MALFORMED)))
        cases.append(st.floats(1.01e12, 3e38).map(lambda v: (v, NON_FINITE)))
    else:  # loss x weight (10) must fit float32 once every sender's is summed
        cases.append(st.floats(3.5e37, 3.4e38).map(lambda v: (v, NON_FINITE)))
    return st.one_of(cases)


def wrong_summary_field() -> st.SearchStrategy:
    """`(field, value)`: a summary's round statistics of the wrong type."""
    return st.one_of(
        st.tuples(st.just("answered"), values.filter(lambda v: not isinstance(v, list))),
        st.tuples(st.just("answered"), st.lists(not_counts, min_size=1, max_size=3)),
        st.tuples(st.sampled_from(["expected", "late", "base_version"]), not_counts),
        st.tuples(st.just("rejected"), st.just({"x": -1}) | st.just([1]) | st.just({"k" * 65: 1})),
        st.tuples(st.just("out"), st.just({"d": 5}) | st.just("x") | st.just({"d": "r" * 2001})),
        st.tuples(st.just("stale"), values.filter(lambda v: not isinstance(v, bool))),
        # Absent (None) it is not sent: a summary without DP has none.
        st.tuples(st.just("unclipped"), not_numbers.filter(lambda v: v is not None) | not_finite),
    )


def wrong_evaluation_field(count: int) -> st.SearchStrategy:
    """`(field, value, reasons)`: an evaluation's sums or counts gone wrong."""
    square = np.eye(count, dtype=int).tolist()
    shifted = [[*row[:-1], row[-1] + 1] for row in square]  # counts one example too many
    negative = [[-1, *row[1:]] if i == 0 else row for i, row in enumerate(square)]
    return st.one_of(
        st.tuples(st.just("count"), not_counts, st.just(MALFORMED)),
        st.tuples(
            st.just("metric_sums"),
            values.filter(lambda v: not isinstance(v, dict))
            | st.just({f"m{i}": 1.0 for i in range(protocol.MAX_METRICS + 1)})
            | st.just({"accuracy": "high"}),
            st.just(MALFORMED),
        ),
        st.tuples(
            st.just("metric_sums"), not_finite.map(lambda v: {"accuracy": v}), st.just(NON_FINITE)
        ),
        st.tuples(st.just("loss_sum"), not_finite, st.just(NON_FINITE)),
        st.tuples(st.just("loss_sum"), not_numbers, st.just(MALFORMED)),
        st.tuples(
            st.just("confusion"),
            st.sampled_from([[], square[:-1], [row[:-1] for row in square], shifted, negative])
            | values,
            st.just(MALFORMED),
        ),
        st.tuples(
            st.just("histogram"), st.just([[1, 2], [3, 4]]) | st.just([[]]), st.just(MALFORMED)
        ),
    )


def target_of(kind: str) -> str:
    return "edge" if kind in EDGE_KINDS else "cloud"


@st.composite
def hostile_messages(
    draw, way: str, spec: dict, size: int, classes: int, strangers_only: bool = False
) -> Hostile:
    """A message to the edge or the cloud broken `way`, from a peer it knows or a stranger."""
    kind = draw(st.sampled_from(WAYS[way]))
    target = target_of(kind)
    stranger = strangers_only or draw(st.integers(0, 3)) == 0
    identity = draw(st.sampled_from(STRANGERS[target] if stranger else KNOWN[target]))
    sender = identity.decode(errors="replace")
    message = base(draw, kind, sender, spec, size, classes)
    what, frames, reasons = broken(draw, way, message, sender, spec, size)
    if sum(map(len, frames)) > MAX_BYTES:  # the first thing a node checks
        reasons = OVERSIZED
    elif stranger and way not in HEADER_WAYS:
        reasons = UNKNOWN
    return Hostile(target, identity, frames, reasons, f"{what} from {identity!r} to the {target}")


class Nodes(NamedTuple):
    """A live cloud and plant-a's edge, the hostile peers dialing them, what they expect."""

    folder: Path
    processes: dict[str, subprocess.Popen]
    peers: dict[tuple[str, bytes], Peer]
    spec: dict
    size: int
    classes: int

    def alive(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"{name} died:\n{self.log(name)[-3000:]}"

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def edge_refusals(self) -> collections.Counter:
        """What the edge counts as refused, by reason (its `status` answer to a device)."""
        peer = self.peers["edge", DEV1]
        peer.send([msgpack.packb(header(protocol.STATUS, DEV1.decode(), 0))])
        frames = peer.receive((protocol.STATUS,))
        assert frames is not None, "the edge does not answer status"
        return collections.Counter(msgpack.unpackb(frames[0])["rejected"])

    def cloud_refusals(self, since: int = 0) -> collections.Counter:
        """What the cloud logged as refused, by reason, from character `since` of its log on."""
        lines = re.findall(r"rejected message from .*?: ([a-z-]+): ", self.log("cloud")[since:])
        return collections.Counter(lines)


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    """The cloud (plants a, b, c) and plant-a's edge; plant-a's devices and the other edges are the test's."""
    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    topology = write_topology(folder, name="fuzz", rounds=1000, edge_rounds=2, more=GHOST_PLANTS)
    processes = {
        "cloud": start_node(folder, "cloud", "cloud", str(topology), "--out", str(folder / "run")),
        "edge": start_node(folder, "edge", "edge", str(topology), "--plant", "plant-a"),
    }
    context = zmq.Context()
    try:
        net = node_model(load_topology(topology))
        wait_for_log(processes["cloud"], folder / "cloud.log", "edge plant-a joined")
        wait_for_log(processes["edge"], folder / "edge.log", "serving 2 devices")
        addresses = {"edge": f"ipc://{folder}/a.ipc", "cloud": f"ipc://{folder}/cloud.ipc"}
        peers = {}
        nodes = Nodes(
            folder, processes, peers, net.spec.header(), net.spec.size, net.task.num_classes
        )
        for target in ("edge", "cloud"):
            for identity in KNOWN[target] + STRANGERS[target]:
                peers[target, identity] = Peer(context, addresses[target], identity, nodes.alive)
        yield nodes
    finally:
        for process in processes.values():
            stop_node(process)
        context.destroy(linger=0)
        if not os.environ.get("HIERFL_KEEP_TEST_DIRS"):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("way", WAYS)
def test_hostile_messages_are_refused_counted_and_survived(nodes, way):
    """Messages broken `way`: each refused with a reason it allows, counted, and survived."""
    nodes.alive()
    edge_before, cloud_from = nodes.edge_refusals(), len(nodes.log("cloud"))
    sent = {"edge": collections.Counter(), "cloud": collections.Counter()}

    @given(hostile_messages(way, nodes.spec, nodes.size, nodes.classes))
    @settings(
        max_examples=EXAMPLES_PER_WAY,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def refused(message: Hostile):
        peer = nodes.peers[message.target, message.identity]
        peer.send(message.frames)
        reason = peer.refusal()
        sent[message.target][reason] += 1
        assert reason in message.reasons, f"{message.what}: refused as {reason}"
        nodes.alive()

    refused()
    assert sum(sent["edge"].values()) + sum(sent["cloud"].values()) >= EXAMPLES_PER_WAY
    assert nodes.edge_refusals() - edge_before == sent["edge"]
    assert nodes.cloud_refusals(cloud_from) == sent["cloud"]
    nodes.alive()


def update(sender: bytes, round: int, edge_round: int, values: np.ndarray, spec: dict) -> list:
    fields = {"spec": spec, "codec": "none", "weight": 10.0, "loss": 0.5}
    h = header(protocol.UPDATE, sender.decode(), round, edge_round, **fields)
    return [msgpack.packb(h), values.astype(np.float32).tobytes()]


def summary(sender: bytes, round: int, values: np.ndarray, spec: dict) -> list:
    fields = {"spec": spec, "codec": "none", "weight": 10.0, "loss": 5.0}
    fields |= {"answered": [1, 1], "expected": 1, "rejected": {}, "late": 0}
    h = header(protocol.SUMMARY, sender.decode(), round, 2, **fields)
    return [msgpack.packb(h), values.astype(np.float32).tobytes()]


def model_of(frames: list[bytes] | None, what: str) -> tuple[dict, np.ndarray]:
    assert frames is not None, f"no model for {what}"
    return msgpack.unpackb(frames[0]), np.frombuffer(frames[1], np.float32)


def test_replayed_mistimed_and_impostor_messages_leave_a_round_untouched(nodes):
    """The test's devices and edges train one cloud round with zero updates, and send
    around them duplicates, replays and mistimed copies with other values, and the same
    again from second connections claiming their routing ids: only the zeros count, so
    the next global model is exactly the last one."""
    nodes.alive()
    context = zmq.Context()
    folder, spec, size = nodes.folder, nodes.spec, nodes.size
    dev1, dev2, plant_b = (
        nodes.peers["edge", DEV1],
        nodes.peers["edge", DEV2],
        nodes.peers["cloud", b"plant-b"],
    )
    plant_c = Peer(context, f"ipc://{folder}/cloud.ipc", b"plant-c", nodes.alive)
    edge_before, cloud_from = nodes.edge_refusals(), len(nodes.log("cloud"))
    zeros, junk = np.zeros(size), np.full(size, 0.5)
    try:
        # Every peer alive, plant-c at last: the cloud opens round 1, plant-a's edge its edge round 1.0.
        for device in (dev1, dev2):
            device.send([msgpack.packb(header(protocol.HEARTBEAT, device.identity.decode(), 0))])
        for edge in (plant_b, plant_c):
            edge.send([msgpack.packb(header(protocol.HELLO, edge.identity.decode(), 0))])
        first, global_1 = model_of(plant_b.receive((protocol.MODEL,)), "plant-b")
        assert first["round"] == 1 and np.isfinite(global_1).all()
        assert model_of(plant_c.receive((protocol.MODEL,)), "plant-c")[0]["round"] == 1
        for device in (dev1, dev2):
            h, edge_model = model_of(device.receive((protocol.MODEL,)), device.identity)
            assert (h["round"], h["edge_round"]) == (1, 0) and np.array_equal(edge_model, global_1)

        # Impostors: second connections claiming a device's and plant-a's routing ids get nothing in.
        impostors = [
            Peer(context, f"ipc://{folder}/a.ipc", DEV1, nodes.alive),
            Peer(context, f"ipc://{folder}/cloud.ipc", b"plant-a", nodes.alive),
        ]
        impostors[0].send(update(DEV1, 1, 0, junk, spec))
        impostors[1].send(summary(b"plant-a", 1, junk, spec))
        for impostor in impostors:
            impostor.send([msgpack.packb(header(protocol.STATUS, "x", 0))])
            assert impostor.receive((protocol.REJECTED, protocol.STATUS), timeout=1.0) is None

        # Edge round 1.0: mistimed, then the zeros, then a second and a replayed update.
        dev1.send(update(DEV1, 1, 1, junk, spec))
        assert dev1.refusal() == protocol.FUTURE_ROUND
        dev1.send(update(DEV1, 0, 0, junk, spec))
        assert dev1.refusal() == protocol.STALE_ROUND
        first_update = update(DEV1, 1, 0, zeros, spec)
        dev1.send(first_update)
        dev1.send(update(DEV1, 1, 0, junk, spec))
        assert dev1.refusal() == protocol.DUPLICATE
        dev1.send(first_update)
        assert dev1.refusal() == protocol.DUPLICATE
        dev2.send(update(DEV2, 1, 0, zeros, spec))
        for device in (dev1, dev2):  # edge round 1.1 from the same model
            h, edge_model = model_of(device.receive((protocol.MODEL,)), device.identity)
            assert (h["round"], h["edge_round"]) == (1, 1) and np.array_equal(edge_model, global_1)
        dev1.send(first_update)
        assert dev1.refusal() == protocol.STALE_ROUND
        for device in (dev1, dev2):
            device.send(update(device.identity, 1, 1, zeros, spec))

        # Cloud round 1: plant-b's zeros, its duplicate, plant-c's summary for round 2 and then its zeros.
        plant_b_summary = summary(b"plant-b", 1, zeros, spec)
        plant_b.send(plant_b_summary)
        plant_b.send(summary(b"plant-b", 1, junk, spec))
        assert plant_b.refusal() == protocol.DUPLICATE
        plant_c.send(summary(b"plant-c", 2, junk, spec))
        assert plant_c.refusal() == protocol.FUTURE_ROUND
        plant_c.send(summary(b"plant-c", 1, zeros, spec))
        second, global_2 = model_of(plant_b.receive((protocol.MODEL,)), "plant-b in round 2")
        assert second["round"] == 2
        assert np.array_equal(global_2, global_1), "a refused message reached the global model"
        plant_b.send(plant_b_summary)
        assert plant_b.refusal() == protocol.STALE_ROUND
        for impostor in impostors:
            impostor.socket.close()
    finally:
        plant_c.socket.close()
        context.destroy(linger=0)
    assert nodes.edge_refusals() - edge_before == collections.Counter(
        {protocol.FUTURE_ROUND: 1, protocol.STALE_ROUND: 2, protocol.DUPLICATE: 2}
    )
    assert nodes.cloud_refusals(cloud_from) == collections.Counter(
        {protocol.DUPLICATE: 1, protocol.FUTURE_ROUND: 1, protocol.STALE_ROUND: 1}
    )
    nodes.alive()


LAUNCH_ROUNDS, FIRED, PER_ROUND = 24, 40, 2
"""The launch's rounds, the strangers' messages fired at it, how many each round."""


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def logged_refusals(log: Path) -> collections.Counter:
    text = log.read_text(errors="replace")
    return collections.Counter(re.findall(r"rejected message from .*?: ([a-z-]+): ", text))


def max_difference(params: Any, other: Any) -> float:
    """The largest absolute difference between two parameter trees."""
    differences = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), params, other)
    return max(jax.tree.leaves(differences))


def test_a_launch_under_fire_trains_the_model_of_a_clean_run(monkeypatch):
    """`hierfl launch` of one plant while strangers fire broken messages at its edge and its
    cloud and impostors claim the routing ids of a device and of the edge: every stranger's
    message is refused and counted, no impostor's gets in, no node fails, and the model is
    the one a clean run of the same seed (the simulator, which the launch matches) trains."""
    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    path = write_topology(folder, name="fire", rounds=LAUNCH_ROUNDS, edge_rounds=1, more="")
    # At least a second per round (the plant's declared pace, kept by its edge), so that
    # the fire, spread over the rounds, ends before training does however fast nodes start.
    path.write_text(
        path.read_text().replace('name = "plant-a"\n', 'name = "plant-a"\nseconds_per_step = 0.5\n')
    )
    monkeypatch.setenv("PYTHONPATH", checkout_env()["PYTHONPATH"])  # the nodes import this checkout
    topology, run = load_topology(path), folder / "run"
    assert topology.plants[0].seconds_per_step == 0.5
    launch = Launch(topology, str(path), run, emulate_speeds=True)
    context = zmq.Context()
    launch.start()
    try:
        clean = simulate(topology, out=folder / "clean")  # while the nodes start
        net, logs = node_model(topology), run / "logs"
        for name, text in [("edge-plant-a", "serving 2 devices"), ("cloud", "serving 1 edges")]:
            wait_for_log(launch.processes[name], logs / f"{name}.log", text)
        addresses = {"edge": f"ipc://{folder}/a.ipc", "cloud": f"ipc://{folder}/cloud.ipc"}

        def watch() -> None:
            assert launch.failed_node() is None, str(launch.failure(launch.failed_node()))

        peers = {
            (target, identity): Peer(context, addresses[target], identity, watch)
            for target in ("edge", "cloud")
            for identity in STRANGERS[target]
        }
        impostors: dict[str, Peer] = {}

        def impersonate() -> None:
            """Junk for every round from second connections claiming a device's and the edge's
            routing ids, which the real ones hold once a round is recorded."""
            junk, spec = np.full(net.spec.size, 0.5), net.spec.header()
            impostors["edge"] = Peer(context, addresses["edge"], DEV1, watch)
            impostors["cloud"] = Peer(context, addresses["cloud"], b"plant-a", watch)
            for round_ in range(1, LAUNCH_ROUNDS + 1):
                impostors["edge"].send(update(DEV1, round_, 0, junk, spec))
                impostors["cloud"].send(summary(b"plant-a", round_, junk, spec))

        def pace(fired: int) -> None:
            """Waits for the run's round `fired / PER_ROUND`: the fire is spread over training."""
            wanted = min(fired // PER_ROUND, LAUNCH_ROUNDS - 4)
            deadline = time.monotonic() + START_TIMEOUT
            while len(records(run)) < wanted:
                assert launch.failed_node() is None and time.monotonic() < deadline
                time.sleep(0.05)
            if wanted >= 1 and not impostors:
                impersonate()

        sent = {"edge": collections.Counter(), "cloud": collections.Counter()}
        messages = st.sampled_from(list(WAYS)).flatmap(
            lambda way: hostile_messages(
                way, net.spec.header(), net.spec.size, net.task.num_classes, strangers_only=True
            )
        )

        @given(messages)
        @settings(
            max_examples=FIRED,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        def refused(message: Hostile):
            pace(sum(sent["edge"].values()) + sum(sent["cloud"].values()))
            peer = peers[message.target, message.identity]
            peer.send(message.frames)
            reason = peer.refusal()
            sent[message.target][reason] += 1
            assert reason in message.reasons, f"{message.what}: refused as {reason}"
            assert launch.failed_node() is None

        refused()
        assert impostors, "fewer examples than rounds"
        for impostor in impostors.values():
            assert impostor.receive((protocol.REJECTED,), timeout=0.5) is None
        history = launch.wait()
    finally:
        launch.stop(grace=0)
        context.destroy(linger=0)
    try:
        assert sum(sent["edge"].values()) + sum(sent["cloud"].values()) >= FIRED
        assert [r["round"] for r in history] == list(range(1, LAUNCH_ROUNDS + 1))
        assert all(r["devices_answered"] == {"plant-a": [2]} for r in history)
        assert logged_refusals(run / "logs" / "edge-plant-a.log") == sent["edge"]
        assert logged_refusals(run / "logs" / "cloud.log") == sent["cloud"]
        assert history[-1]["rejected_messages"] == {
            "cloud": dict(sent["cloud"]),
            "plant-a": dict(sent["edge"]),
        }
        params = load_params(run / "model.npz")
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
        assert max_difference(params, load_params(folder / "clean" / "model.npz")) <= 1e-5
        assert history[-1]["accuracy"] == pytest.approx(clean.history[-1]["accuracy"], abs=1e-3)
    finally:
        if not os.environ.get("HIERFL_KEEP_TEST_DIRS"):
            shutil.rmtree(folder, ignore_errors=True)
