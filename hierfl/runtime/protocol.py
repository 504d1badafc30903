"""The runtime's wire protocol: a msgpack header frame, then one raw frame per array.

Edges dial out to the cloud and devices dial out to their edge (a DEALER socket whose
routing id is the sender's name); the server side is a ROUTER socket, so one server
serves any number of peers and always knows who sent what. Every message's first frame
(after the routing id a ROUTER adds) is a msgpack map:

    {"protocol": 1, "kind": "update", "sender": "plant-a/line-1/dev-001",
     "round": 3, "edge_round": 1, "model_version": 2}

`round` is the cloud round (1-based), `edge_round` the edge round inside it (0-based),
`model_version` the cloud round whose global model the sender last received. Messages
that carry arrays (`model`, `update`, `summary`) add

    "spec":  the model's FlatSpec header (leaf names, shapes, dtypes): both ends must agree,
    "codec": the link's codec name, whose payload frames follow (one per array, raw bytes),

and `update`/`summary` add `weight` (examples aggregated) and `loss` (an update's mean
training loss; a summary's sum of loss x weight). A summary also reports its edge's
round statistics (`answered`, `expected`, `rejected`, `late`). Under differential privacy
a `model` carries the `clip_norm` in force, an `update` whether it was `unclipped`, and
a summary its edge's (noised) count of `unclipped` updates, for adaptive clipping.

Under secure aggregation (`[privacy] secure_aggregation`) a device sends no `update`:
it runs the four steps of `hierfl.privacy.secagg` with its edge, one kind per message
(`secagg_keys`, `secagg_roster`, `secagg_shares`, `secagg_inbox`, `secagg_masked`,
`secagg_unmask`, `secagg_reveal`; `SECAGG_FIELDS` lists the header fields each adds).
The masked input travels as one raw uint32 frame (`masked_layout`), with the model's
spec and the codec name `fixed-point`, not inside msgpack. `hierfl.runtime.secagg_rounds`
turns these messages into the secagg dicts and back.

With `[privacy] homomorphic = true` (see `hierfl.runtime.encrypted`) the cloud link
carries ciphertexts instead: `he_summary` (edge -> cloud, the fields of a summary) and
`he_aggregate` (cloud -> edge, the encrypted aggregate that makes global model
`model_version`, with the plaintext `coefficients` it used and the flags `final`, the
last one, and `catch_up`, one an edge that fell behind applies without starting a round)
add `"codec": "ckks"`, the spec, `"key_id"` (the public key's fingerprint) and
`"chunks"` (their count); their frames after the header are the CKKS ciphertexts, one raw
frame per chunk of `slots` values (never inside the header). `evaluation` (edge -> cloud,
no frames; `round` is the model version evaluated) reports the plant's test scores of a
global model as plaintext sums: the scalars `count`, `loss_sum`, `metric_sums`, and the
counts `confusion` (a classifier's `[C, C]` confusion matrix, rows the true class) and
`histogram` (a two-class task's `[2, B]` histogram of the probability of class 1), each
a list of rows of ints, `[]` where the task has none; `personal: true` marks the scores of
the plant's personalized model (`[personalization]`), not of the global one. A node that takes evaluations lists
`EVALUATION` in its layouts with the `EvaluationLayout` of its task.

`parse_message` checks everything a message says about itself before any array is
viewed: header size and type, protocol version, kind, field types, a known sender (the
routing id, when there is one, must be the sender), the array spec, the codec, every
frame's exact length, finiteness and index ranges. It raises `MessageRejected` with a
short `reason` code (counted in the metrics) and a message naming the problem. Whether
a checked message is expected *now* (round, duplicates) is the receiving node's call.
Arrays are views of the received frames: nothing is copied.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import zmq

from hierfl.errors import ProtocolError
from hierfl.kernels import Codec, FlatSpec

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
"""Headers are a few hundred bytes plus the spec (about 50 bytes a leaf); longer ones are refused unread."""
MAX_HEADER_DEPTH = 8
"""The deepest nesting a header uses is 4 (a secure-aggregation roster: map -> map -> list -> bytes)."""
MAX_HEADER_ITEMS = 1 << 16
"""The longest list or map in a header: a spec's leaves, a plant's devices, an edge's answered counts."""
MAX_STR_BYTES = 1 << 16
MAX_COUNT = 2**31 - 1
"""Rounds, versions and counts fit an int32 (they index arrays and seed random keys)."""
F32_MAX = float(np.finfo(np.float32).max)
MAX_WEIGHT = 1e12
"""An update's or summary's weight counts examples: a trillion is far beyond any plant."""

HELLO, HEARTBEAT, MODEL, UPDATE, SUMMARY, STOP, REJECTED, STATUS = (
    "hello",
    "heartbeat",
    "model",
    "update",
    "summary",
    "stop",
    "rejected",
    "status",
)
(
    SECAGG_KEYS,
    SECAGG_ROSTER,
    SECAGG_SHARES,
    SECAGG_INBOX,
    SECAGG_MASKED,
    SECAGG_UNMASK,
    SECAGG_REVEAL,
) = (
    "secagg_keys",
    "secagg_roster",
    "secagg_shares",
    "secagg_inbox",
    "secagg_masked",
    "secagg_unmask",
    "secagg_reveal",
)
SECAGG_FROM_DEVICE = (SECAGG_KEYS, SECAGG_SHARES, SECAGG_MASKED, SECAGG_REVEAL)
"""The secure-aggregation steps in order, as a device sends them (the edge answers each but the last)."""
SECAGG_FROM_EDGE = (SECAGG_ROSTER, SECAGG_INBOX, SECAGG_UNMASK)
HE_SUMMARY, HE_AGGREGATE, EVALUATION = "he_summary", "he_aggregate", "evaluation"
TUNED = "tuned"
"""edge -> cloud, no frames: a fine-tuning round (`[personalization] method = "fine-tune"`)
is done; the fields of a summary (`weight`, `loss`, `answered`, ...) without its arrays,
since the plant's model stays at its edge. A `model` that starts such a round is marked
`fine_tune: true` (the cloud's to the edges, and the edge's to its devices)."""
OUT = "out"
"""device -> edge, no frames: the device stays out of training; `reason` says why (its data)."""
CENSUS = "census"
"""No frames. Up the tree (device -> edge -> cloud) a part: `examples` and, for a task that
standardizes, `sums` and `squares` per input channel, and `step_examples` (FedNova: local
steps x examples); down (cloud -> edge -> device) the result: `examples` and, then, each
channel's `mean` and `std`, and FedNova's `effective_steps` (`hierfl.data.census`)."""
MAX_REASON = 2000
"""The longest reason an `out` message (and a summary's `out` map) carries, in characters."""
KINDS = (
    HELLO,
    HEARTBEAT,
    MODEL,
    UPDATE,
    SUMMARY,
    STOP,
    REJECTED,
    STATUS,
    *SECAGG_FROM_DEVICE,
    *SECAGG_FROM_EDGE,
    HE_SUMMARY,
    HE_AGGREGATE,
    EVALUATION,
    OUT,
    CENSUS,
    TUNED,
)
ARRAY_KINDS = (MODEL, UPDATE, SUMMARY, SECAGG_MASKED)
MASKED_CODEC = "fixed-point"
"""The codec name a `secagg_masked` message carries: its frame is uint32 words, fixed point mod 2^32."""
CIPHER_KINDS = (HE_SUMMARY, HE_AGGREGATE)
MAX_METRICS = 16
"""An evaluation names at most this many metrics (tasks have one to three)."""
SUMS = "sums"
"""The codec name of `evaluation` in a node's layouts: plain sums in the header, no frames."""
MAX_INT64 = 2**63 - 1

# Reason codes: the keys of the `rejected` counters in logs and metrics.
MALFORMED = "malformed"  # not a msgpack map of the protocol, wrong field types, wrong frame count
UNKNOWN_SENDER = "unknown-sender"
WRONG_SPEC = "wrong-spec"  # array spec or codec differ from this node's model and link
OVERSIZED = "oversized"  # a frame or the whole message over its size
NON_FINITE = "non-finite"  # NaN/inf values, weight or loss; indices out of range
UNEXPECTED = "unexpected"  # a kind this node does not take from that peer
STALE_ROUND = "stale-round"  # an update or summary for a round that is closed (late or replayed)
FUTURE_ROUND = "future-round"
DUPLICATE = "duplicate"

_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "protocol": (int,),
    "kind": (str,),
    "sender": (str,),
    "round": (int,),
    "edge_round": (int,),
    "model_version": (int,),
}


def _is_bytes(value: Any) -> bool:
    return isinstance(value, bytes)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_bytes_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in value.items()
    )


def _is_key_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str)
        and isinstance(v, list)
        and len(v) == 2
        and all(isinstance(b, bytes) for b in v)
        for k, v in value.items()
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


_BYTES = ("bytes", _is_bytes)
_BYTES_MAP = ("a map of device id -> bytes", _is_bytes_map)
SECAGG_FIELDS: dict[str, dict[str, tuple[str, Any]]] = {
    SECAGG_KEYS: {"c_pk": _BYTES, "s_pk": _BYTES},
    SECAGG_ROSTER: {
        "threshold": ("an int >= 0", _is_count),
        "keys": ("a map of device id -> [c_pk, s_pk] bytes", _is_key_map),
    },
    SECAGG_SHARES: {"b_hash": _BYTES, "shares": _BYTES_MAP},
    SECAGG_INBOX: {"shares": _BYTES_MAP},
    SECAGG_MASKED: {},
    SECAGG_UNMASK: {
        "survivors": ("a list of device ids", _is_str_list),
        "dropped": ("a list of device ids", _is_str_list),
    },
    SECAGG_REVEAL: {"mask_key_shares": _BYTES_MAP, "self_mask_shares": _BYTES_MAP},
}
"""The header fields of each secure-aggregation kind (beyond the common ones): `(what it must be, check)`.

Exact lengths and which device ids may appear depend on the round's roster; the
receiving node checks those (`hierfl.runtime.secagg_rounds`)."""


class MessageRejected(ProtocolError):
    """An incoming message was refused; `reason` is one of the reason codes above."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Layout(NamedTuple):
    """The frames a link's codec sends for one flat buffer: `(dtype name, shape)` per frame."""

    frames: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def nbytes(self) -> int:
        return sum(jnp.dtype(dtype).itemsize * math.prod(shape) for dtype, shape in self.frames)

    def __add__(self, other: Layout) -> Layout:
        """The frames of `self` followed by those of `other`."""
        return Layout(self.frames + other.frames)


def codec_layout(codec: Codec) -> Layout:
    """The payload frames `codec.encode` produces for a `[codec.size]` float32 buffer."""
    payload, _ = jax.eval_shape(
        codec.encode,
        jax.ShapeDtypeStruct((codec.size,), jnp.float32),
        jax.ShapeDtypeStruct((codec.residual_size,), jnp.float32),
        jax.random.key(0),
    )
    return Layout(tuple((jnp.dtype(leaf.dtype).name, tuple(leaf.shape)) for leaf in payload))


class EvaluationLayout(NamedTuple):
    """The counts an `evaluation` of this node's task carries: a `classes` x `classes` confusion
    matrix (0: a regression task, none) and a 2 x `bins` histogram (0: none; two classes only),
    and the names of its `metrics`, exactly the keys of its `metric_sums` (unchecked if empty)."""

    classes: int
    bins: int
    metrics: tuple[str, ...] = ()


class CensusLayout(NamedTuple):
    """What a `census` of this node's task carries: `channels` numbers per statistic (0: the
    task does not standardize: counts only), and whether it is a part (up) or the result."""

    channels: int
    part: bool


class CipherLayout(NamedTuple):
    """The frames of a ciphertext message: `chunks` CKKS ciphertexts of at most `max_chunk_bytes` each.

    `allow_empty`: the message may carry no chunk at all (an aggregate of a round nobody
    answered, or the first round's, which leaves the model as it is).
    """

    chunks: int
    max_chunk_bytes: int
    allow_empty: bool = False


def model_layout(spec: FlatSpec) -> Layout:
    """The frames of a model message: the float32 flat buffer `[P]`."""
    return Layout((("float32", (spec.size,)),))


def masked_layout(words: int) -> Layout:
    """The frame of a `secagg_masked` message: `words` uint32 (the update's P values and its weight and loss)."""
    return Layout((("uint32", (words,)),))


class Message(NamedTuple):
    """A checked message: its header and its arrays (views of the received frames)."""

    kind: str
    sender: str
    round: int
    edge_round: int
    header: dict[str, Any]
    arrays: tuple[np.ndarray, ...] = ()


def encode(
    kind: str,
    sender: str,
    *,
    round: int = 0,
    edge_round: int = 0,
    model_version: int = 0,
    spec: FlatSpec | None = None,
    codec: str | None = None,
    arrays: Sequence[Any] = (),
    **fields: Any,
) -> list:
    """The frames of one message; `arrays` (numpy or JAX, C-contiguous) are sent without a copy."""
    header: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "kind": kind,
        "sender": sender,
        "round": int(round),
        "edge_round": int(edge_round),
        "model_version": int(model_version),
        **fields,
    }
    if spec is not None:
        header["spec"] = spec.header()
        header["codec"] = codec
    buffers = [np.ascontiguousarray(np.asarray(a)) for a in arrays]
    return [msgpack.packb(header), *(memoryview(b.reshape(-1).view(np.uint8)) for b in buffers)]


def frame_bytes(frame: Any) -> memoryview:
    """A received frame (zmq.Frame or bytes) as a flat byte view, without copying."""
    view = frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def unpack_header(data: memoryview) -> Any:
    """Decodes a header within its limits: length of every string, bytes, list and map, and nesting.

    msgpack bounds lengths while decoding; its C decoder stops at about a thousand levels
    of nesting, which still breaks Python code that recurses into the value (`repr`,
    `==`), so the depth is then measured without recursion and refused above
    `MAX_HEADER_DEPTH`. Raises MessageRejected(MALFORMED).
    """
    try:
        header = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_STR_BYTES,
            max_bin_len=MAX_HEADER_BYTES,
            max_array_len=MAX_HEADER_ITEMS,
            max_map_len=MAX_HEADER_ITEMS,
            max_ext_len=0,
        )
    except Exception as err:  # msgpack raises many types (ValueError, ExtraData, StackError, ...)
        raise MessageRejected(
            MALFORMED, f"header is not msgpack within its limits ({type(err).__name__}: {err})"
        ) from None
    if nesting_depth(header, MAX_HEADER_DEPTH) > MAX_HEADER_DEPTH:
        raise MessageRejected(MALFORMED, f"header nests deeper than {MAX_HEADER_DEPTH} levels")
    return header


def nesting_depth(value: Any, limit: int) -> int:
    """How deep lists and maps nest in `value` (a scalar is 0), counted up to `limit + 1`, without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


def parse_header(frame: Any) -> dict[str, Any]:
    """The checked header map of a message's first frame; MessageRejected(MALFORMED) otherwise."""
    data = frame_bytes(frame)
    if len(data) > MAX_HEADER_BYTES:
        raise MessageRejected(OVERSIZED, f"header is {len(data)} bytes, at most {MAX_HEADER_BYTES}")
    header = unpack_header(data)
    if not isinstance(header, dict):
        raise MessageRejected(MALFORMED, f"header must be a map, got {type(header).__name__}")
    for name, types in _FIELD_TYPES.items():
        value = header.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise MessageRejected(
                MALFORMED, f"header field {name!r} must be {types[0].__name__}, got {_short(value)}"
            )
    if header["protocol"] != PROTOCOL_VERSION:
        raise MessageRejected(
            MALFORMED, f"protocol version {header['protocol']}, this node speaks {PROTOCOL_VERSION}"
        )
    if header["kind"] not in KINDS:
        raise MessageRejected(MALFORMED, f"unknown kind {_short(header['kind'])}")
    for name in ("round", "edge_round", "model_version"):
        if not 0 <= header[name] <= MAX_COUNT:
            raise MessageRejected(
                MALFORMED, f"header field {name!r} must be in [0, {MAX_COUNT}], got {header[name]}"
            )
    return header


def parse_message(
    frames: Sequence[Any],
    *,
    senders: Collection[str],
    spec: FlatSpec,
    layouts: Mapping[str, tuple[str, Layout | CipherLayout | EvaluationLayout]],
    max_bytes: int,
    routing_id: bytes | None = None,
) -> Message:
    """Checks one received message (without the ROUTER's routing id frame) completely.

    `senders`: who may send to this node; `routing_id`: the peer's id as the ROUTER saw
    it (the header's sender must match it). `layouts` maps each array kind this node
    accepts to `(codec name, Layout)`, each ciphertext kind to `("ckks", CipherLayout)`, and
    `evaluation`, where it takes them, to `(SUMS, EvaluationLayout)`; messages of other
    array or ciphertext kinds, or evaluations it does not take, are UNEXPECTED. Ciphertext frames are
    returned as uint8 views; only their count and size are checked here (whether they
    decode under the node's CKKS context is `hierfl.runtime.encrypted`'s check).
    Raises MessageRejected naming the first problem found.
    """
    if not frames:
        raise MessageRejected(MALFORMED, "empty message")
    total = sum(len(frame_bytes(f)) for f in frames)
    if total > max_bytes:
        raise MessageRejected(OVERSIZED, f"message is {total} bytes, the limit is {max_bytes}")
    header = parse_header(frames[0])
    kind, sender = header["kind"], header["sender"]
    if routing_id is not None and routing_id != sender.encode():
        raise MessageRejected(
            UNKNOWN_SENDER,
            f"header says sender {_short(sender)} but the connection is {_short(routing_id)}",
        )
    if sender not in senders:
        raise MessageRejected(UNKNOWN_SENDER, f"unknown sender {_short(sender)}")
    if kind in SECAGG_FIELDS:
        _check_fields(kind, header)
    if kind not in ARRAY_KINDS + CIPHER_KINDS:
        if len(frames) != 1:
            raise MessageRejected(MALFORMED, f"a {kind} message has 1 frame, got {len(frames)}")
        if kind == EVALUATION:
            if kind not in layouts:
                raise MessageRejected(UNEXPECTED, f"this node takes no {kind} messages")
            _check_evaluation(header, max(len(senders), 1), layouts[kind][1])
            if not isinstance(header.get("personal", False), bool):
                raise MessageRejected(
                    MALFORMED,
                    f"header field 'personal' must be a bool, got {_short(header['personal'])}",
                )
        if kind == CENSUS:
            if kind not in layouts:
                raise MessageRejected(UNEXPECTED, f"this node takes no {kind} messages")
            _check_census(header, layouts[kind][1])
        if kind == HELLO and not _is_count(header.get("rows_dropped", 0)):
            raise MessageRejected(
                MALFORMED,
                f"header field 'rows_dropped' must be a count, got {_short(header['rows_dropped'])}",
            )
        if kind == TUNED:
            _check_weight_and_loss(header, len(senders))
            _check_optional_fields(kind, header)
            _check_summary_statistics(header)
        if kind == OUT and not _is_reason(header.get("reason")):
            raise MessageRejected(
                MALFORMED,
                f"header field 'reason' must be text of at most {MAX_REASON} characters, "
                f"got {_short(header.get('reason'))}",
            )
        return Message(kind, sender, header["round"], header["edge_round"], header)
    if kind not in layouts:
        raise MessageRejected(UNEXPECTED, f"this node takes no {kind} messages")
    codec, layout = layouts[kind]
    problem = spec.check_header(header.get("spec"))
    if problem is not None:
        raise MessageRejected(WRONG_SPEC, problem)
    if header.get("codec") != codec:
        raise MessageRejected(
            WRONG_SPEC, f"codec {_short(header.get('codec'))}, this link uses {codec!r}"
        )
    if kind in (UPDATE, SUMMARY, HE_SUMMARY):
        _check_weight_and_loss(header, len(senders))
    _check_optional_fields(kind, header)
    if kind in (SUMMARY, HE_SUMMARY):
        _check_summary_statistics(header)
    payload = frames[1:]
    if kind in CIPHER_KINDS:
        return Message(
            kind,
            sender,
            header["round"],
            header["edge_round"],
            header,
            _ciphertexts(kind, header, payload, layout),
        )
    if len(payload) != len(layout.frames):
        raise MessageRejected(
            MALFORMED,
            f"{kind} with codec {codec!r} has {len(layout.frames)} array frames, got {len(payload)}",
        )
    arrays = []
    for i, (frame, (dtype, shape)) in enumerate(zip(payload, layout.frames)):
        data = frame_bytes(frame)
        expected = jnp.dtype(dtype).itemsize * math.prod(shape)
        if len(data) != expected:
            reason = OVERSIZED if len(data) > expected else MALFORMED
            raise MessageRejected(
                reason,
                f"array frame {i} is {len(data)} bytes, expected {expected} ({dtype} {list(shape)})",
            )
        arrays.append(np.frombuffer(data, dtype=jnp.dtype(dtype)).reshape(shape))
    _check_values(arrays, spec.size)
    if kind in (UPDATE, SUMMARY):
        _check_weighted_values(arrays, header["weight"], len(senders))
    return Message(kind, sender, header["round"], header["edge_round"], header, tuple(arrays))


def float32_number(name: str, value: Any, *, bound: float = F32_MAX) -> float:
    """`value` as the float32 it is used as: a number whose magnitude is at most `bound` (<= float32's max).

    A double such as 1e39 is finite as received but inf once cast to float32, which is
    what the aggregation computes in; MessageRejected(NON_FINITE) names the field.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise MessageRejected(
            MALFORMED, f"header field {name!r} must be a number, got {_short(value)}"
        )
    if not math.isfinite(value) or abs(value) > bound or not np.isfinite(np.float32(value)):
        raise MessageRejected(
            NON_FINITE,
            f"{name} is {value}: outside the float32 range it is used in (|x| <= {bound:.3g})",
        )
    return float(value)


def _check_weight_and_loss(header: dict[str, Any], senders: int) -> None:
    """An update's or summary's `weight` (examples, in [0, MAX_WEIGHT]) and `loss`, both float32.

    The receiver sums `senders` of them and of `loss x weight` (a summary's loss is already
    that product), so each must stay below float32's max divided by their number.
    """
    weight = float32_number("weight", header.get("weight"), bound=MAX_WEIGHT)
    loss = float32_number("loss", header.get("loss"))
    if weight < 0:
        raise MessageRejected(MALFORMED, f"weight must be >= 0, got {weight}")
    if abs(loss) * max(weight, 1.0) > F32_MAX / max(senders, 1):
        raise MessageRejected(
            NON_FINITE, f"loss {loss} x weight {weight} overflows float32 once {senders} are summed"
        )


def _check_weighted_values(arrays: list[np.ndarray], weight: float, senders: int) -> None:
    """Refuses an update or summary whose weighted values could overflow float32 when summed.

    The receiver adds `weight x value` of up to `senders` peers, so a peer's largest
    decoded magnitude times its weight must be at most float32's max over `senders`.
    A float frame bounds the values (or, with int8, the scales) and an int8 frame the
    factor of its scale; int32 frames are indices and do not scale anything.
    """
    floats = [a for a in arrays if a.dtype.kind == "f" or a.dtype.name == "bfloat16"]
    if not floats or weight == 0:
        return
    largest = max(float(np.abs(a.astype(np.float32, copy=False)).max(initial=0.0)) for a in floats)
    factor = max(
        (float(np.abs(a.astype(np.int32)).max(initial=0)) for a in arrays if a.dtype == np.int8),
        default=1.0,
    )
    if largest * max(factor, 1.0) * weight > F32_MAX / max(senders, 1):
        raise MessageRejected(
            NON_FINITE,
            f"values up to {largest * max(factor, 1.0):.3g} x weight {weight:.3g} overflow float32"
            f" once {senders} senders are summed",
        )


_OPTIONAL_NUMBERS = {MODEL: ("clip_norm",), SUMMARY: ("unclipped",), TUNED: ("unclipped",)}
"""Numbers some messages carry under differential privacy: the clip norm in force, a noised count."""
_OPTIONAL_FLAGS = {UPDATE: ("unclipped",), MODEL: ("fine_tune",)}


def _check_optional_fields(kind: str, header: dict[str, Any]) -> None:
    for name in _OPTIONAL_NUMBERS.get(kind, ()):
        value = header.get(name)
        if value is None:
            continue
        float32_number(name, value)
        if name == "clip_norm" and value <= 0:
            raise MessageRejected(MALFORMED, f"clip_norm must be > 0, got {value}")
    for name in _OPTIONAL_FLAGS.get(kind, ()):
        if not isinstance(header.get(name, False), bool):
            raise MessageRejected(
                MALFORMED,
                f"header field {name!r} must be true or false, got {_short(header.get(name))}",
            )


MAX_EDGE_ROUNDS_REPORTED = 1 << 16


def _is_reason(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_REASON


def _check_summary_statistics(header: dict[str, Any]) -> None:
    """The round statistics an edge reports with a summary, each optional, each of its type.

    The cloud copies them into its metrics record; checked here, a malformed one is
    refused like any bad message instead of failing the cloud when it writes the record.
    """
    answered = header.get("answered", [])
    if (
        not isinstance(answered, list)
        or len(answered) > MAX_EDGE_ROUNDS_REPORTED
        or not all(map(_is_count, answered))
    ):
        raise MessageRejected(
            MALFORMED, f"header field 'answered' must be a list of counts, got {_short(answered)}"
        )
    for name in ("expected", "late", "edge_round", "secagg_failed", "base_version"):
        if name in header and not _is_count(header[name]):
            raise MessageRejected(
                MALFORMED,
                f"header field {name!r} must be a count (int >= 0), got {_short(header[name])}",
            )
    _check_map(header, "rejected", 64, _is_count, "reason codes to counts")
    _check_map(header, "out", 255, _is_reason, "device ids to reasons")
    _check_map(header, "rows_dropped", 255, _is_count, "device ids to counts")
    if not isinstance(header.get("stale", False), bool):
        raise MessageRejected(
            MALFORMED,
            f"header field 'stale' must be true or false, got {_short(header.get('stale'))}",
        )


def _check_map(
    header: dict[str, Any], name: str, key_length: int, is_value: Callable[[Any], bool], what: str
) -> None:
    """An optional map field of string keys of at most `key_length` characters to values."""
    found = header.get(name, {})
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and len(k) <= key_length and is_value(v) for k, v in found.items()
    ):
        raise MessageRejected(
            MALFORMED, f"header field {name!r} must map {what}, got {_short(found)}"
        )


def header_number(header: dict[str, Any], name: str, default: float) -> float:
    """An optional number of a checked header (`parse_message` validated it), or `default`."""
    value = header.get(name)
    return default if value is None else float(value)


def header_flag(header: dict[str, Any], name: str) -> bool:
    """An optional flag of a checked header, False when absent."""
    return header.get(name) is True


def _check_fields(kind: str, header: dict[str, Any]) -> None:
    for name, (what, valid) in SECAGG_FIELDS[kind].items():
        if not valid(header.get(name)):
            raise MessageRejected(
                MALFORMED,
                f"{kind}: header field {name!r} must be {what}, got {_short(header.get(name))}",
            )


def _ciphertexts(
    kind: str, header: dict[str, Any], payload: Sequence[Any], layout: CipherLayout
) -> tuple[np.ndarray, ...]:
    """The ciphertext frames of a checked header, as uint8 views: their count, the header's count and each size."""
    counts = (0, layout.chunks) if layout.allow_empty else (layout.chunks,)
    if len(payload) not in counts:
        raise MessageRejected(
            MALFORMED,
            f"{kind} has {len(payload)} ciphertext frames, expected {' or '.join(map(str, counts))}",
        )
    if header.get("chunks") != len(payload) or isinstance(header.get("chunks"), bool):
        raise MessageRejected(
            MALFORMED,
            f"header field 'chunks' says {_short(header.get('chunks'))}, the message has {len(payload)} ciphertext frames",
        )
    key_id = header.get("key_id")
    if not isinstance(key_id, str) or not 0 < len(key_id) <= 64:
        raise MessageRejected(
            MALFORMED, f"header field 'key_id' must be a short string, got {_short(key_id)}"
        )
    chunks = []
    for i, frame in enumerate(payload):
        data = frame_bytes(frame)
        if len(data) > layout.max_chunk_bytes:
            raise MessageRejected(
                OVERSIZED,
                f"ciphertext frame {i} is {len(data)} bytes, at most {layout.max_chunk_bytes}",
            )
        if not len(data):
            raise MessageRejected(MALFORMED, f"ciphertext frame {i} is empty")
        chunks.append(np.frombuffer(data, dtype=np.uint8))
    return tuple(chunks)


def _check_census(header: dict[str, Any], layout: CensusLayout) -> None:
    """A census part (`examples`, `sums`, `squares`, `step_examples`) or result (`examples`,
    `mean`, `std`, optional `effective_steps` > 0): the counts int64, every statistic `layout.channels` finite numbers (sums and squares
    float64, mean and std float32; std > 0, squares >= 0)."""
    examples = header.get("examples")
    if (
        not isinstance(examples, int)
        or isinstance(examples, bool)
        or not 0 <= examples <= MAX_INT64
    ):
        raise MessageRejected(
            MALFORMED, f"header field 'examples' must be a count, got {_short(examples)}"
        )
    step_examples = header.get("step_examples", 0)
    if layout.part and (
        not isinstance(step_examples, int)
        or isinstance(step_examples, bool)
        or not 0 <= step_examples <= MAX_INT64
    ):
        raise MessageRejected(
            MALFORMED, f"header field 'step_examples' must be a count, got {_short(step_examples)}"
        )
    effective = header.get("effective_steps")
    if not layout.part and effective is not None:
        if not _is_number(effective) or not 0 < effective <= F32_MAX:
            raise MessageRejected(
                MALFORMED,
                f"header field 'effective_steps' must be a positive float32, got {_short(effective)}",
            )
    names = ("sums", "squares") if layout.part else ("mean", "std")
    for name in names:
        values = header.get(name, [] if not layout.channels else None)
        if (
            not isinstance(values, list)
            or len(values) != layout.channels
            or not all(_is_number(v) and math.isfinite(v) for v in values)
        ):
            raise MessageRejected(
                MALFORMED,
                f"header field {name!r} must be {layout.channels} finite numbers, got {_short(values)}",
            )
        if layout.part:
            continue
        if any(abs(v) > F32_MAX for v in values) or (name == "std" and any(v <= 0 for v in values)):
            raise MessageRejected(
                MALFORMED, f"header field {name!r} must be float32 (std > 0), got {_short(values)}"
            )
    if layout.part and any(v < 0 for v in header.get("squares", [])):
        raise MessageRejected(MALFORMED, "header field 'squares' must be sums of squares (>= 0)")


def _check_evaluation(header: dict[str, Any], senders: int, layout: EvaluationLayout) -> None:
    """An evaluation's sums: `count` examples, `loss_sum` and `metric_sums` {name: sum}, all
    float32, and the counts of `layout` (`_check_counts`), whose rows agree with each other.

    The cloud sums the scalars over its `senders` plants, so each is bounded by float32's
    max over that number.
    """
    count = header.get("count")
    if not _is_count(count):
        raise MessageRejected(
            MALFORMED,
            f"header field 'count' must be an int in [0, {MAX_COUNT}], got {_short(count)}",
        )
    sums = header.get("metric_sums")
    if (
        not isinstance(sums, dict)
        or len(sums) > MAX_METRICS
        or not all(isinstance(k, str) for k in sums)
    ):
        raise MessageRejected(
            MALFORMED,
            f"header field 'metric_sums' must map at most {MAX_METRICS} names to numbers, got {_short(sums)}",
        )
    if layout.metrics and sorted(sums) != sorted(layout.metrics):
        raise MessageRejected(
            MALFORMED,
            f"header field 'metric_sums' must sum exactly the task's metrics "
            f"({', '.join(layout.metrics)}), got {_short(sorted(sums))}",
        )
    for name, value in [("loss_sum", header.get("loss_sum")), *sums.items()]:
        float32_number(f"evaluation value {name}", value, bound=F32_MAX / senders)
    confusion = _check_counts(header, "confusion", layout.classes, layout.classes, count)
    histogram = _check_counts(header, "histogram", 2 if layout.bins else 0, layout.bins, count)
    if histogram and [sum(row) for row in histogram] != [sum(row) for row in confusion]:
        raise MessageRejected(
            MALFORMED,
            f"header field 'histogram' counts {[sum(row) for row in histogram]} examples of classes 0 "
            f"and 1, 'confusion' {[sum(row) for row in confusion]}",
        )


def _check_counts(
    header: dict[str, Any], name: str, rows: int, columns: int, count: int
) -> list[list[int]]:
    """A header's `rows` lists of `columns` counts each (ints in [0, MAX_INT64]: two levels of
    nesting, no deeper) that add up to `count`; `[]` where `rows` is 0."""
    value = header.get(name)
    if (
        not isinstance(value, list)
        or len(value) != rows
        or not all(isinstance(row, list) and len(row) == columns for row in value)
    ):
        shape = f"{rows} lists of {columns} counts" if rows else "an empty list"
        raise MessageRejected(
            MALFORMED, f"header field {name!r} must be {shape} for this task, got {_short(value)}"
        )
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_INT64
        for row in value
        for v in row
    ):
        raise MessageRejected(
            MALFORMED,
            f"header field {name!r} must hold counts (ints in [0, 2^63 - 1]), got {_short(value)}",
        )
    total = sum(map(sum, value))
    if rows and total != count:
        raise MessageRejected(
            MALFORMED, f"header field {name!r} counts {total} examples, 'count' says {count}"
        )
    return value


def _check_values(arrays: list[np.ndarray], size: int) -> None:
    for i, array in enumerate(arrays):
        if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
            if not np.isfinite(array.astype(np.float32, copy=False)).all():
                raise MessageRejected(NON_FINITE, f"array frame {i} has non-finite values")
        elif (
            array.dtype.kind == "i"
            and array.dtype.itemsize == 4
            and array.size
            and (array.min() < 0 or array.max() >= size)
        ):
            raise MessageRejected(NON_FINITE, f"array frame {i}: indices outside [0, {size})")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40


def _short(value: object) -> str:
    """A peer's value for an error message: short, and never recursing deep (reprlib bounds the levels)."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
