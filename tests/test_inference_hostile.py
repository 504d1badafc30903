"""Hostile peers against `hierfl serve`: control commands from strangers, fuzzed requests.

One real server process on tcp loopback (anyone who can reach the host could send these)
with its control socket in a private folder. Every malformed request is built to be
malformed by construction, independently of the server's checks: a truncated header, a
missing, repeated, unknown or wrongly typed field, a data frame of the wrong size, frames
too many or too few, an oversized header, non-finite inputs. Each must get an error
reply, never a prediction; the server must still answer a valid request afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_inference_server import (
    HIERFL,
    REPLY_TIMEOUT,
    START_TIMEOUT,
    stop,
    versions,  # noqa: F401 (a fixture)
    wait_for,
)

from hierfl.errors import InferenceError, ProtocolError
from hierfl.inference.client import Client
from hierfl.inference.control import control_path
from hierfl.inference.protocol import (
    MAX_HEADER_BYTES,
    InputSpec,
    encode_request,
    parse_reply,
    parse_request,
    split_envelope,
)
from hierfl.inference.server import InferenceServer, ServerConfig

INPUT_SHAPE = (8, 8, 1)  # the digits MLP's
MAX_BATCH = 4
FIELDS = {
    "predict": ("kind", "protocol", "id", "shape", "dtype"),
    "info": ("kind", "protocol", "id"),
}

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


def packed_map(pairs: list[tuple[object, object]]) -> bytes:
    """A msgpack map of `pairs` as given, repeated keys included (msgpack.packb cannot write those)."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(
        msgpack.packb(k) + msgpack.packb(v) for k, v in pairs
    )


@st.composite
def malformed_requests(draw) -> tuple[str, list[bytes]]:
    """(what is wrong, frames): a valid predict or info request with one thing broken."""
    kind = draw(st.sampled_from(["predict", "info"]))
    header = {"kind": kind, "protocol": 1, "id": draw(st.integers(0, 2**64 - 1))}
    data: list[bytes] = []
    if kind == "predict":
        rows = draw(st.integers(1, MAX_BATCH))
        x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(
            (rows, *INPUT_SHAPE)
        )
        header.update(shape=[rows, *INPUT_SHAPE], dtype="float32")
        data = [x.astype(np.float32).tobytes()]
    breaks = ["truncated header", "missing field", "wrong value", "unknown field"]
    breaks += ["repeated field", "extra frames", "oversized header", "random header"]
    if kind == "predict":
        breaks += ["data size", "no data frame", "too many rows", "not finite", "float64"]
    broken = draw(st.sampled_from(breaks))
    pairs = list(header.items())
    if broken == "truncated header":  # msgpack is prefix-free: a cut map is never a whole one
        raw = msgpack.packb(header)
        return broken, [raw[: draw(st.integers(0, len(raw) - 1))], *data]
    if broken == "missing field":
        key = draw(st.sampled_from(FIELDS[kind]))
        return broken, [msgpack.packb({k: v for k, v in pairs if k != key}), *data]
    if broken == "wrong value":
        key = draw(st.sampled_from(FIELDS[kind]))
        if key == "id":  # any other non-negative integer is a valid id
            wrong = draw(values.filter(lambda v: not (type(v) is int and v >= 0)))
        elif key == "kind":
            wrong = draw(values.filter(lambda v: v not in ("predict", "info", "rollback")))
        else:  # 1.0 and True differ from 1 here, as they should
            wrong = draw(values.filter(lambda v: msgpack.packb(v) != msgpack.packb(header[key])))
        return f"{key} = {wrong!r}", [msgpack.packb({**header, key: wrong}), *data]
    if broken == "unknown field":
        key = draw(st.text(max_size=10).filter(lambda k: k not in FIELDS[kind]))
        return f"field {key!r}", [msgpack.packb({**header, key: draw(values)}), *data]
    if broken == "repeated field":
        key, value = draw(st.sampled_from(pairs))
        again = draw(st.sampled_from([value, draw(values)]))
        return f"{key} twice", [packed_map([*pairs, (key, again)]), *data]
    if broken == "extra frames":
        extra = draw(st.lists(st.binary(max_size=64), min_size=1, max_size=3))
        return broken, [msgpack.packb(header), *data, *extra]
    if broken == "oversized header":
        padding = "x" * draw(st.integers(MAX_HEADER_BYTES, 2 * MAX_HEADER_BYTES))
        return broken, [msgpack.packb({**header, "note": padding}), *data]
    if broken == "random header":
        return broken, [draw(st.binary(min_size=1, max_size=64)), *data]
    if broken == "data size":
        cut = draw(st.integers(-len(data[0]), 64).filter(lambda n: n != 0))
        frame = data[0][:cut] if cut < 0 else data[0] + bytes(cut)
        return f"{broken} {cut:+d}", [msgpack.packb(header), frame]
    if broken == "no data frame":
        return broken, [msgpack.packb(header)]
    if broken == "too many rows":
        rows = draw(st.integers(MAX_BATCH + 1, 4 * MAX_BATCH))
        x = np.zeros((rows, *INPUT_SHAPE), np.float32)
        return broken, encode_request("predict", header["id"], x)
    if broken == "not finite":
        x = np.frombuffer(data[0], np.float32).copy()
        x[draw(st.integers(0, len(x) - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return broken, [msgpack.packb(header), x.tobytes()]
    assert broken == "float64"
    x = np.frombuffer(data[0], np.float32).astype(np.float64).reshape(header["shape"])
    return broken, [bytes(f) for f in encode_request("predict", header["id"], x)]


def as_sent(frames: list[bytes], req_style: bool) -> list[bytes]:
    """`frames` as a DEALER sends them, optionally with a REQ socket's empty delimiter first."""
    return [b"", *frames] if req_style else frames


@given(malformed_requests(), st.booleans())
@settings(max_examples=1000, deadline=None)
def test_parse_request_refuses_every_malformed_request(malformed, req_style):
    """The pure check, in the envelope a ROUTER hands the server."""
    _, message = split_envelope([b"peer", *as_sent(malformed[1], req_style)])
    spec = InputSpec(INPUT_SHAPE, "float32", MAX_BATCH)
    with pytest.raises(ProtocolError):
        parse_request(message, spec)


@pytest.fixture(scope="module")
def served(versions):  # noqa: F811
    """`hierfl serve` on a free tcp loopback port, max batch 4, with a private control socket."""
    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    control = f"ipc://{folder}/control/serve.ipc"
    log = folder / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(HIERFL), "serve", str(versions["files"][1]), "--bind", "tcp://127.0.0.1:*"]
            + ["--control", control, "--max-batch", str(MAX_BATCH)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        line = wait_for(
            lambda: (
                process.poll() is not None
                or re.search(r"serving .* on (tcp://127\.0\.0\.1:\d+)", log.read_text())
            ),
            "the server to start",
            timeout=START_TIMEOUT,
        )
        assert process.poll() is None, log.read_text()
        yield {"address": line.group(1), "control": control, "log": log, "process": process}
    finally:
        stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def stats(address: str) -> dict[str, int]:
    with Client(address, timeout=REPLY_TIMEOUT) as client:
        return client.info().stats


def test_fuzzed_requests_get_error_replies_never_a_prediction(served, versions):  # noqa: F811
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(served["address"])
    before = stats(served["address"])["rejected_requests"]
    sent = []

    @given(malformed_requests(), st.booleans())
    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def send(malformed, req_style):
        broken, frames = malformed
        dealer.send_multipart(as_sent(frames, req_style))
        sent.append(broken)
        assert dealer.poll(REPLY_TIMEOUT * 1000), f"no reply to a request with {broken}"
        reply_frames = dealer.recv_multipart()
        # A first frame that is empty (sent as a REQ delimiter, or a cut-to-nothing header)
        # is read as an envelope, and the reply comes back in it.
        assert reply_frames[0] == b"" or not req_style
        reply = parse_reply(reply_frames[1:] if reply_frames[0] == b"" else reply_frames)
        assert reply.kind == "error", f"a request with {broken} was answered: {reply.header}"

    try:
        send()
    finally:
        dealer.close()
        context.term()
    assert served["process"].poll() is None, served["log"].read_text()
    assert stats(served["address"])["rejected_requests"] - before == len(sent) >= 300
    with Client(served["address"], timeout=REPLY_TIMEOUT) as client:
        prediction = client.predict(versions["probes"][:2])
    np.testing.assert_allclose(prediction.logits, versions["expected"][1][:2], rtol=1e-5, atol=1e-5)


def test_control_commands_are_taken_only_on_the_control_socket(served):
    before = stats(served["address"])
    with Client(served["address"], timeout=REPLY_TIMEOUT) as client:
        with pytest.raises(InferenceError, match=r"'rollback' is a control command") as refused:
            client.rollback()
    assert served["control"] in str(refused.value)  # says where to send it instead
    after = stats(served["address"])
    assert after["refused_control"] - before["refused_control"] == 1
    assert after["rejected_requests"] - before["rejected_requests"] == 1
    assert after["rollbacks"] == 0
    with Client(served["control"], timeout=REPLY_TIMEOUT) as control:
        assert control.info().version == 1
        with pytest.raises(InferenceError, match="no previous version to roll back to"):
            control.rollback()  # taken: only one version is loaded
        with pytest.raises(InferenceError, match="send predictions to tcp://127.0.0.1"):
            control.predict(np.zeros((1, *INPUT_SHAPE), np.float32))
    socket_folder = Path(served["control"].removeprefix("ipc://")).parent
    assert stat.S_IMODE(socket_folder.stat().st_mode) == 0o700  # made private by the server
    refused = subprocess.run(
        [str(HIERFL), "rollback", served["address"]], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "control socket" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_a_control_socket_must_be_local_and_private(versions, tmp_path):  # noqa: F811
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    cases = [
        (f"ipc://{shared}/control.ipc", "mode 0755, so other users could send control commands"),
        ("ipc:///tmp/control.ipc", "mode 1777"),
        ("ipc://@hierfl-control", "an abstract socket can be reached by every local user"),
        ("tcp://127.0.0.1:5999", "must be ipc://PATH"),
        (f"ipc:///tmp/{'x' * 100}/control.ipc", "a socket's path takes at most 107"),
    ]
    for address, expected in cases:
        with pytest.raises(InferenceError, match=re.escape(expected)):
            control_path(address)
    private = tmp_path / "new" / "control"
    assert control_path(f"ipc://{private}/serve.ipc") == private / "serve.ipc"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert control_path(f"ipc://{private}/serve.ipc") == private / "serve.ipc"  # and again
    with pytest.raises(InferenceError, match="mode 0755"):  # refused before the model loads
        InferenceServer(
            versions["files"][1],
            ServerConfig(bind="tcp://127.0.0.1:*", control=f"ipc://{shared}/c.ipc"),
        )
    assert os.listdir(shared) == []
