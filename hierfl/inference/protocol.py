"""The inference wire protocol: a msgpack header frame, then one raw frame per array.

A client (ZeroMQ DEALER, or REQ) talks to the server's ROUTER socket. Every message's
first frame is a msgpack map with `kind`, `protocol` (PROTOCOL_VERSION) and `id` (an
integer the client chooses; the reply echoes it). Requests:

    predict   {"kind": "predict", "protocol": 1, "id": 7, "shape": [n, *input_shape], "dtype": "float32"}
              + one frame: the n examples, C order, little-endian
    info      {"kind": "info", "protocol": 1, "id": 8}
    rollback  {"kind": "rollback", "protocol": 1, "id": 9}

`rollback` is a control command: a server takes it only on its control socket (a local
`ipc://` socket in a folder private to the server's user, `ServerConfig.control`) and
refuses it on the request socket, which anyone who can reach the server may use.

Replies all carry `version`, the model version (cloud round) that answered, or that is
served now for `info`, `rollback` and errors:

    prediction  {"kind": "prediction", ..., "version": 20, "shape": [n, classes], "dtype": "float32"} + logits frame
    info        {"kind": "info", ..., "version": 20, "info": {...}}  (see `InferenceServer.info`)
    error       {"kind": "error", ..., "version": 20, "error": "why the request was refused"}

The server checks every header field before it looks at a data frame, and a data frame's
length before it views it as an array (`parse_request`): the fields of the request's kind
and no others, each once and of its exact type (`protocol` the integer 1, not 1.0 or
true). A bad request gets an error reply naming the problem and never reaches the model. The functions here are pure: they
turn frames into checked values and back, without sockets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack
import numpy as np

from hierfl.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 4096
"""Longer first frames are refused unread: headers are a few dozen bytes."""
MAX_REQUEST_DEPTH = 4
"""A request nests two levels (the header map, its `shape` list)."""
MAX_REQUEST_ITEMS = 64
"""The longest list or map in a request header: the input's dimensions, the header's fields."""
MAX_REPLY_DEPTH = 32
"""An info reply nests its model's metrics; a client still refuses a reply nested absurdly deep."""

PREDICT, INFO, ROLLBACK = "predict", "info", "rollback"
REQUEST_KINDS = (PREDICT, INFO, ROLLBACK)
CONTROL_KINDS = (ROLLBACK,)
"""Requests that change what a server serves: taken only on its control socket."""
REQUEST_FIELDS = {
    PREDICT: ("kind", "protocol", "id", "shape", "dtype"),
    INFO: ("kind", "protocol", "id"),
    ROLLBACK: ("kind", "protocol", "id"),
}
"""The header fields of each request kind: no others are accepted."""
PREDICTION, ERROR = "prediction", "error"


class InputSpec(NamedTuple):
    """What a server accepts: examples of `shape` and `dtype` (a dtype name), 1 to `max_rows` per request."""

    shape: tuple[int, ...]
    dtype: str
    max_rows: int

    def describe(self) -> str:
        return f"[n, {', '.join(map(str, self.shape))}] {self.dtype} with 1 <= n <= {self.max_rows}"


class Request(NamedTuple):
    """A checked request: `kind` in REQUEST_KINDS; `x` `[n, *shape]` for predict, else None."""

    kind: str
    id: int
    x: np.ndarray | None = None


class Reply(NamedTuple):
    """A checked reply: `kind` is 'prediction', 'info' or 'error'; `y` the logits of a prediction."""

    kind: str
    id: int | None
    version: int | None
    header: dict[str, Any]
    y: np.ndarray | None = None


def encode_request(kind: str, request_id: int, x: np.ndarray | None = None) -> list:
    """Frames of a request; for predict, `x` is sent as-is (its own shape and dtype) without a copy."""
    header: dict[str, Any] = {"kind": kind, "protocol": PROTOCOL_VERSION, "id": request_id}
    if x is None:
        return [msgpack.packb(header)]
    x = np.ascontiguousarray(x)
    header.update(shape=list(x.shape), dtype=x.dtype.name)
    return [msgpack.packb(header), memoryview(x.reshape(-1).view(np.uint8))]


def split_envelope(frames: Sequence[Any]) -> tuple[list, list]:
    """(routing frames, message frames) of what a ROUTER socket received.

    A DEALER peer's message comes as [identity, *message]; a REQ peer's as
    [identity, b"", *message]. Replies must go back with the same routing frames.
    """
    if len(frames) >= 2 and len(frame_view(frames[1])) == 0:
        return list(frames[:2]), list(frames[2:])
    return list(frames[:1]), list(frames[1:])


def parse_request(frames: Sequence[Any], spec: InputSpec) -> Request:
    """The request in `frames` (routing frames removed), checked against `spec`.

    Raises `ProtocolError` saying what is wrong (with the request's id when it could be
    read). The returned `x` is a read-only view of the data frame: no copy.
    """
    if not frames:
        raise ProtocolError("empty message: expected a msgpack header frame")
    header = _read_header(frames[0])
    kind = header.get("kind")
    request_id = header.get("id")
    if not _is_int(request_id) or request_id < 0:
        raise ProtocolError(
            f"header field 'id' must be a non-negative integer, got {_short(request_id)}"
        )
    protocol = header.get("protocol")
    if not _is_int(protocol) or protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {_short(protocol)}; this server speaks version {PROTOCOL_VERSION} (an integer)",
            request_id=request_id,
        )
    if not isinstance(kind, str) or kind not in REQUEST_KINDS:
        raise ProtocolError(
            f"unknown request kind {_short(kind)} (expected one of {', '.join(REQUEST_KINDS)})",
            request_id=request_id,
        )
    unknown = [key for key in header if key not in REQUEST_FIELDS[kind]]
    if unknown:
        raise ProtocolError(
            f"unknown header field {_short(unknown[0])} in a {kind} request "
            f"(its fields: {', '.join(REQUEST_FIELDS[kind])})",
            request_id=request_id,
        )
    if kind != PREDICT:
        if len(frames) != 1:
            raise ProtocolError(
                f"{kind!r} requests are one header frame, got {len(frames)} frames",
                request_id=request_id,
            )
        return Request(kind, request_id)
    if len(frames) != 2:
        raise ProtocolError(
            f"a predict request is [header, data], got {len(frames)} frames", request_id=request_id
        )
    try:
        x = _read_array(header, frames[1], spec)
    except ProtocolError as err:
        raise ProtocolError(str(err), request_id=request_id) from None
    return Request(PREDICT, request_id, x)


def encode_prediction(request_id: int, version: int, y: np.ndarray) -> list:
    """Frames of a prediction reply carrying logits `y` (sent without a copy)."""
    y = np.ascontiguousarray(y)
    header = {
        "kind": PREDICTION,
        "protocol": PROTOCOL_VERSION,
        "id": request_id,
        "version": version,
        "shape": list(y.shape),
        "dtype": y.dtype.name,
    }
    return [msgpack.packb(header), memoryview(y.reshape(-1).view(np.uint8))]


def encode_info(request_id: int, version: int, info: dict[str, Any]) -> list:
    """Frames of an info reply (also the answer to rollback): `info` is a msgpack-able map."""
    return [
        msgpack.packb(
            {
                "kind": INFO,
                "protocol": PROTOCOL_VERSION,
                "id": request_id,
                "version": version,
                "info": info,
            }
        )
    ]


def encode_error(request_id: int | None, version: int, message: str) -> list:
    """Frames of an error reply; `request_id` is None when the request's id could not be read."""
    return [
        msgpack.packb(
            {
                "kind": ERROR,
                "protocol": PROTOCOL_VERSION,
                "id": request_id,
                "version": version,
                "error": message,
            }
        )
    ]


def parse_reply(frames: Sequence[Any]) -> Reply:
    """The reply in `frames` (a DEALER's view: no routing frames); `ProtocolError` if malformed."""
    if not frames:
        raise ProtocolError("empty reply")
    header = _read_header(frames[0], request=False)
    kind, version = header.get("kind"), header.get("version")
    if header.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"reply in protocol version {header.get('protocol')!r}; this client speaks {PROTOCOL_VERSION}"
        )
    if kind not in (PREDICTION, INFO, ERROR) or not _is_int(version):
        raise ProtocolError(f"malformed reply header {header!r}")
    request_id = header.get("id") if _is_int(header.get("id")) else None
    if kind != PREDICTION:
        return Reply(kind, request_id, version, header)
    if len(frames) != 2:
        raise ProtocolError(f"a prediction reply is [header, logits], got {len(frames)} frames")
    shape, dtype = header.get("shape"), header.get("dtype")
    if (
        not isinstance(shape, list)
        or not all(_is_int(d) and d >= 0 for d in shape)
        or not isinstance(dtype, str)
    ):
        raise ProtocolError(f"malformed prediction header {header!r}")
    data = frame_view(frames[1])
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ProtocolError(f"prediction reply has unknown dtype {dtype!r}") from None
    if len(data) != math.prod(shape) * dt.itemsize:
        raise ProtocolError(
            f"prediction reply has {len(data)} bytes of logits for shape {shape} {dtype}"
        )
    return Reply(kind, request_id, version, header, np.frombuffer(data, dt).reshape(shape))


def _read_header(frame: Any, *, request: bool = True) -> dict[str, Any]:
    """The header map of a request (within the request limits) or of a reply (the server's, trusted more)."""
    raw = frame_view(frame)
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(
            f"header frame is {len(raw)} bytes; at most {MAX_HEADER_BYTES} are accepted"
        )
    try:
        header = msgpack.unpackb(
            raw,
            raw=False,
            max_str_len=MAX_HEADER_BYTES,
            max_bin_len=MAX_HEADER_BYTES,
            max_array_len=MAX_REQUEST_ITEMS if request else MAX_HEADER_BYTES,
            max_map_len=MAX_REQUEST_ITEMS if request else MAX_HEADER_BYTES,
            max_ext_len=0,
            object_pairs_hook=_unique_keys,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise ProtocolError(f"header frame is not msgpack ({type(err).__name__}: {err})") from None
    depth = MAX_REQUEST_DEPTH if request else MAX_REPLY_DEPTH
    if _nesting_depth(header, depth) > depth:
        # msgpack decodes about a thousand levels, enough to break any recursion into the value (repr)
        raise ProtocolError(f"header frame nests deeper than {depth} levels")
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a msgpack map, got {type(header).__name__}")
    return header


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A decoded msgpack map; ValueError if a key repeats (msgpack itself keeps the last)."""
    table = dict(pairs)
    if len(table) != len(pairs):
        seen: set[Any] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {_short(repeated)} appears more than once in a map")
    return table


def _nesting_depth(value: Any, limit: int) -> int:
    """How deep lists and maps nest in `value` (a scalar is 0), counted up to `limit + 1`, without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth + 1)
            if deepest > limit:
                return deepest
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _read_array(header: dict[str, Any], frame: Any, spec: InputSpec) -> np.ndarray:
    shape, dtype = header.get("shape"), header.get("dtype")
    if not isinstance(shape, list) or not shape or not all(_is_int(d) for d in shape):
        raise ProtocolError(f"header field 'shape' must be a list of integers, got {_short(shape)}")
    if dtype != spec.dtype:
        raise ProtocolError(f"dtype {_short(dtype)}: the model takes {spec.dtype} inputs")
    if tuple(shape[1:]) != spec.shape:
        raise ProtocolError(f"wrong input shape {shape}: the model takes {spec.describe()}")
    rows = shape[0]
    if not 1 <= rows <= spec.max_rows:
        raise ProtocolError(
            f"request has {rows} rows: too large or empty; this server takes {spec.describe()}"
        )
    data = frame_view(frame)
    expected = rows * math.prod(spec.shape) * np.dtype(spec.dtype).itemsize
    if len(data) != expected:
        raise ProtocolError(
            f"data frame has {len(data)} bytes; shape {shape} of {spec.dtype} needs {expected}"
        )
    x = np.frombuffer(data, spec.dtype).reshape(shape)
    if not _all_finite(x):
        raise ProtocolError(
            f"input has {x.size - int(np.isfinite(x).sum())} NaN or infinite values; "
            "the model takes finite numbers"
        )
    return x


def _all_finite(x: np.ndarray) -> bool:
    """True if no entry of `x` is NaN or infinite: its min and max (which NaN and inf reach) are finite.

    Two reductions with no array allocated, where `np.isfinite(x).all()` writes a mask first.
    """
    return bool(np.isfinite(x.min()) and np.isfinite(x.max()))


def frame_view(frame: Any) -> memoryview:
    """The bytes of a received frame (a `zmq.Frame` or any buffer) as a flat memoryview, without a copy."""
    buffer = getattr(frame, "buffer", None)  # zmq.Frame: its bytes without a copy
    return (buffer if buffer is not None else memoryview(frame)).cast("B")


def _short(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: error replies quote what a peer sent, within reason."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
