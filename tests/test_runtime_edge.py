"""A live `hierfl edge` process against a fake cloud and fake devices (real sockets, ipc://).

Every bad input the protocol names is sent to the running edge, which must refuse it
with the right reason, count it, and keep serving; then the round completes with the
valid updates and the summary the edge sends up is checked against a numpy
computation. Hypothesis then throws garbage frames at the same live edge.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierfl.data.loading import load_topology
from hierfl.kernels import flat_spec, ravel
from hierfl.runtime import protocol
from hierfl.runtime.node import node_model

HIERFL = Path(sys.executable).parent / "hierfl"
TIMEOUT_MS = 60_000
DEV1, DEV2 = "plant-a/line-1/dev-001", "plant-a/line-1/dev-002"

TOPOLOGY = """
[federation]
name = "edge-under-test"
task = "digits"
model = "mlp"
cloud_rounds = 5
edge_rounds = 1
learning_rate = 0.1

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
device_deadline = 600.0
heartbeat_interval = 0.5
heartbeat_timeout = 600.0
start_timeout = 600.0
max_message_bytes = 1000000

[[plants]]
name = "plant-a"
address = "ipc://{dir}/edge.ipc"

[[plants.lines]]
name = "line-1"
devices = 2
"""


class Peer:
    """A fake device (DEALER named `identity`) talking to the edge."""

    def __init__(self, context: zmq.Context, address: str, identity: str):
        self.identity = identity
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.ROUTING_ID, identity.encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    def send(self, frames) -> None:
        self.socket.send_multipart([bytes(f) for f in frames])

    def send_kind(self, kind: str, **fields) -> None:
        self.send(protocol.encode(kind, self.identity, **fields))

    def recv(
        self, kind: str | None = None, timeout_ms: int = TIMEOUT_MS
    ) -> tuple[dict, list[bytes]]:
        """The next message (of `kind`, skipping others); fails the test if none comes in time."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            assert left > 0 and self.socket.poll(left), (
                f"{self.identity}: no {kind or 'message'} from the edge"
            )
            frames = self.socket.recv_multipart()
            header = msgpack.unpackb(frames[0])
            if kind is None or header["kind"] == kind:
                return header, frames[1:]

    def status(self) -> dict:
        self.send_kind(protocol.STATUS)
        return self.recv(protocol.STATUS)[0]


@contextlib.contextmanager
def running_edge(topology_text: str, devices: tuple[str, ...] = (DEV1, DEV2)):
    """A live `hierfl edge` for plant-a of `topology_text` (a template with `{dir}`), a fake cloud and fake devices."""
    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    topology_file = folder / "edge.toml"
    topology_file.write_text(topology_text.format(dir=folder))
    topology = load_topology(topology_file)
    context = zmq.Context()
    cloud = context.socket(zmq.ROUTER)
    cloud.setsockopt(zmq.LINGER, 0)
    cloud.bind(f"ipc://{folder}/cloud.ipc")
    net = node_model(topology)  # before the edge starts: the fake devices speak as soon as it does
    log = folder / "edge.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(HIERFL), "edge", str(topology_file), "--plant", "plant-a"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    peers = {name: Peer(context, f"ipc://{folder}/edge.ipc", name) for name in devices}
    try:
        assert cloud.poll(TIMEOUT_MS), f"the edge never said hello to the cloud:\n{log.read_text()}"
        yield {
            "process": process,
            "cloud": cloud,
            "devices": peers,
            "topology": topology,
            "context": context,
            "log": log,
            "net": net,
            "address": f"ipc://{folder}/edge.ipc",
        }
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        for device in peers.values():
            device.socket.close()
        cloud.close()
        context.term()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def edge():
    with running_edge(TOPOLOGY) as running:
        yield running


def cloud_recv(cloud: zmq.Socket, kind: str) -> tuple[dict, list[bytes]]:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        assert cloud.poll(int((deadline - time.monotonic()) * 1000)), f"no {kind} reached the cloud"
        _, header, *frames = cloud.recv_multipart()
        header = msgpack.unpackb(header)
        if header["kind"] == kind:
            return header, frames


def test_bad_inputs_are_refused_with_their_reason_and_the_round_still_completes(edge):
    net, spec, cloud = edge["net"], edge["net"].spec, edge["cloud"]
    dev1, dev2 = edge["devices"][DEV1], edge["devices"][DEV2]
    for device in (dev1, dev2):
        device.send_kind(protocol.HELLO)
    global_flat = np.asarray(ravel(spec, net.initial_params))
    cloud.send_multipart(
        [
            b"plant-a",
            *protocol.encode(
                protocol.MODEL, "cloud", round=1, spec=spec, codec="none", arrays=[global_flat]
            ),
        ]
    )
    for device in (dev1, dev2):
        header, frames = device.recv(protocol.MODEL)
        assert (header["round"], header["edge_round"]) == (1, 0)
        np.testing.assert_array_equal(np.frombuffer(frames[0], np.float32), global_flat)

    rng = np.random.default_rng(0)
    delta1 = rng.normal(size=spec.size).astype(np.float32) * 0.01
    delta2 = rng.normal(size=spec.size).astype(np.float32) * 0.01

    def upd(sender=DEV1, delta=delta1, round=1, spec=spec, weight=30.0):
        return protocol.encode(
            protocol.UPDATE,
            sender,
            round=round,
            spec=spec,
            codec="none",
            arrays=[delta],
            weight=weight,
            loss=0.7,
        )

    nan = delta1.copy()
    nan[7] = np.nan
    header, frame = upd()
    wrong_spec = flat_spec({"w": np.zeros(spec.size, np.float32)})
    stranger = Peer(edge["context"], edge["address"], "plant-a/line-1/dev-999")
    cases = [
        (dev1, [b"\x92\xa3not a header"], protocol.MALFORMED),
        (dev1, upd(spec=wrong_spec), protocol.WRONG_SPEC),
        (dev1, upd(delta=nan), protocol.NON_FINITE),
        (dev1, [header, bytes(frame) + bytes(4096)], protocol.OVERSIZED),
        (dev1, [header, bytes(2_000_000)], protocol.OVERSIZED),
        (stranger, upd(sender="plant-a/line-1/dev-999"), protocol.UNKNOWN_SENDER),
        (dev1, upd(sender=DEV2), protocol.UNKNOWN_SENDER),
        (dev1, upd(round=0), protocol.STALE_ROUND),
        (dev1, upd(round=2), protocol.FUTURE_ROUND),
    ]
    for peer, frames, reason in cases:
        peer.send(frames)
        reply, _ = peer.recv(protocol.REJECTED)
        assert reply["reason"] == reason, (reason, reply)
        assert edge["process"].poll() is None
    status = dev1.status()
    assert status["phase"] == "collecting"
    expected = {
        protocol.MALFORMED: 1,
        protocol.WRONG_SPEC: 1,
        protocol.NON_FINITE: 1,
        protocol.OVERSIZED: 2,
        protocol.UNKNOWN_SENDER: 2,
        protocol.STALE_ROUND: 1,
        protocol.FUTURE_ROUND: 1,
    }
    assert status["rejected"] == expected
    log = edge["log"].read_text()
    assert "rejected message from 'plant-a/line-1/dev-999': unknown-sender" in log
    assert "non-finite" in log

    dev1.send(upd())
    dev1.send(upd())  # the same update twice
    assert dev1.recv(protocol.REJECTED)[0]["reason"] == protocol.DUPLICATE
    dev2.send(upd(sender=DEV2, delta=delta2, weight=10.0))
    summary, frames = cloud_recv(cloud, protocol.SUMMARY)
    assert summary["round"] == 1 and summary["weight"] == 40.0 and summary["answered"] == [2]
    assert math.isclose(summary["loss"], 0.7 * 40.0, rel_tol=1e-6)
    mean = (30.0 * delta1.astype(np.float64) + 10.0 * delta2) / 40.0
    np.testing.assert_allclose(np.frombuffer(frames[0], np.float32), mean, atol=1e-6)

    dev2.send(upd(sender=DEV2, delta=delta2, weight=10.0))  # replayed after the round closed
    assert dev2.recv(protocol.REJECTED)[0]["reason"] == protocol.STALE_ROUND
    assert dev2.status()["late"] == 2
    stranger.socket.close()


frame_bytes = st.binary(min_size=0, max_size=300)
header_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(-(2**31), 2**31), max_size=3),
)
header_maps = st.dictionaries(
    st.sampled_from(
        [
            "protocol",
            "kind",
            "sender",
            "round",
            "edge_round",
            "model_version",
            "spec",
            "codec",
            "weight",
            "loss",
            "x",
        ]
    ),
    header_values,
    max_size=11,
).map(msgpack.packb)
garbage = st.lists(st.one_of(frame_bytes, header_maps), min_size=1, max_size=4)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=garbage)
def test_garbage_frames_never_kill_the_edge(edge, frames):
    dev1 = edge["devices"][DEV1]
    before = sum(dev1.status()["rejected"].values())
    dev1.send(frames)
    after = sum(dev1.status()["rejected"].values())
    assert after == before + 1
    assert edge["process"].poll() is None


def test_hostile_headers_and_overflowing_numbers_are_refused_and_the_edge_lives(edge):
    """A header nested a thousand levels deep, and numbers finite as received but not as float32."""
    spec, dev1 = edge["net"].spec, edge["devices"][DEV1]
    base = msgpack.packb(
        {
            "protocol": 1,
            "kind": "hello",
            "sender": DEV1,
            "round": 0,
            "edge_round": 0,
            "model_version": 0,
        }
    )
    deep = bytes([base[0] + 1]) + base[1:] + msgpack.packb("spec") + b"\x91" * 1000 + b"\x00"
    deep_sender = msgpack.packb({"protocol": 1, "kind": "update"})
    deep_sender = (
        bytes([deep_sender[0] + 1]) + deep_sender[1:] + b"\xa6sender" + b"\x91" * 1000 + b"\x00"
    )

    def upd(delta, weight):
        return protocol.encode(
            protocol.UPDATE,
            DEV1,
            round=2,
            spec=spec,
            codec="none",
            arrays=[delta],
            weight=weight,
            loss=0.1,
        )

    small = np.zeros(spec.size, np.float32)
    cases = [
        ([deep], protocol.MALFORMED),
        ([deep_sender], protocol.MALFORMED),
        (upd(small, 1e39), protocol.NON_FINITE),  # inf as float32
        (upd(np.full(spec.size, 3e38, np.float32), 2.0), protocol.NON_FINITE),  # 6e38 once weighted
    ]
    for frames, reason in cases:
        before = dict(dev1.status()["rejected"])
        dev1.send(frames)
        reply, _ = dev1.recv(protocol.REJECTED)
        assert reply["reason"] == reason, (reason, reply)
        assert edge["process"].poll() is None
        assert dev1.status()["rejected"].get(reason, 0) == before.get(reason, 0) + 1


def test_a_connection_held_back_under_a_live_devices_name_is_logged_and_closed():
    """ZeroMQ drops every message of a second connection under a connected device's name before
    the edge sees it, and keeps dropping them after the first one is gone. The edge logs that
    connection once it has been silent for heartbeat_timeout and shuts it down, so a device
    that restarted before its old connection was gone dials again and is admitted."""
    with running_edge(
        TOPOLOGY.replace("heartbeat_timeout = 600.0", "heartbeat_timeout = 3.0")
    ) as edge:
        for device in edge["devices"].values():
            assert device.status()["phase"]  # connected, and heard
        restarted = Peer(edge["context"], edge["address"], DEV1)  # while the old one is live
        try:
            restarted.send_kind(protocol.STATUS)
            assert not restarted.socket.poll(1000), "a second connection under a live name answered"
            edge["devices"][DEV1].socket.close()  # the old connection goes
            deadline = time.monotonic() + 20
            while "has delivered no message" not in edge["log"].read_text():
                assert time.monotonic() < deadline, edge["log"].read_text()
                time.sleep(0.2)
            assert restarted.status()["phase"]  # dialed again by itself, admitted now
            edge["devices"][DEV1] = restarted
        finally:
            restarted.socket.close()
        held_back = [
            line for line in edge["log"].read_text().splitlines() if "delivered no message" in line
        ]
        assert len(held_back) == 1, edge["log"].read_text()  # the real devices spoke
        assert "edge.ipc" in held_back[0] and "name of a connected peer" in held_back[0]
        assert edge["process"].poll() is None


def test_a_second_connection_cannot_take_over_a_live_devices_name(edge):
    """An impostor dialing with a live device's routing id is refused; the device keeps its link.

    A device that restarts (its old connection closed) is admitted again under its name.
    """
    dev1 = edge["devices"][DEV1]
    assert dev1.status()["phase"]
    impostor = Peer(edge["context"], edge["address"], DEV1)
    try:
        impostor.send_kind(protocol.STATUS)
        assert not impostor.socket.poll(3000), (
            "the edge answered a second connection named as a live device"
        )
        assert dev1.status()["phase"]  # the real device still gets its answers
    finally:
        impostor.socket.close()
    dev1.socket.close()  # the device dies; its restarted process dials again under the same name
    time.sleep(0.5)
    restarted = Peer(edge["context"], edge["address"], DEV1)
    edge["devices"][DEV1] = restarted
    assert restarted.status()["phase"]
    assert edge["process"].poll() is None
