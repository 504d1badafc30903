"""Secure aggregation over the real runtime (`[privacy] secure_aggregation = true`), real processes on ipc://.

Three things are checked here (the launch = simulate check is a case of
`test_runtime_launch.test_launch_trains_the_same_model_as_simulate`):

1. What real `hierfl device` processes put on the socket: no plain `update`, only the
   secure-aggregation steps, and masked words that are not their plaintext words; the
   test, playing the edge with `hierfl.privacy.secagg.EdgeSession`, unmasks their sum and
   finds the weighted sum of the updates it computes itself with the same keys.
2. A live `hierfl edge` against devices the test drives with `DeviceSession`: a device
   that drops after sharing its keys is recovered (the summary is still the survivors'
   weighted mean); too many drops fail the round safely (model unchanged, the edge
   says which phase and keeps serving).
3. Bad secure-aggregation messages (wrong round, malformed fields, oversized, unknown
   sender, out of phase, a plain update) are refused with their reason, counted, and
   the edge keeps serving.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
import zmq
from test_runtime_edge import HIERFL, TIMEOUT_MS, Peer, cloud_recv, running_edge

from hierfl.core.algorithms import DeviceData
from hierfl.core.steps import make_device_step
from hierfl.data.loading import load_topology
from hierfl.data.plan import make_plan
from hierfl.kernels import ravel
from hierfl.privacy.fixed_point import FixedPoint
from hierfl.privacy.secagg import DeviceSession, EdgeSession
from hierfl.runtime import protocol
from hierfl.runtime.node import node_model
from hierfl.runtime.secagg_rounds import LOSS_CLIP, session_round

DEVICES = tuple(f"plant-a/line-1/dev-00{i}" for i in (1, 2, 3))
THRESHOLD = 2  # ceil(0.6 * 3)

TOPOLOGY = """
[federation]
name = "secagg-under-test"
task = "digits"
model = "mlp"
cloud_rounds = 10
edge_rounds = 1
local_steps = 2
batch_size = 16
learning_rate = 0.1

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
device_deadline = %s
heartbeat_interval = 0.5
heartbeat_timeout = 600.0
start_timeout = 600.0
max_message_bytes = 1000000

[privacy]
secure_aggregation = true

[[plants]]
name = "plant-a"
address = "ipc://{dir}/edge.ipc"

[[plants.lines]]
name = "line-1"
devices = 3
"""


def words_of(
    delta: np.ndarray, weight: float, loss: float, normalizer: float, clip: float = 1.0
) -> np.ndarray:
    """The words a device masks, written out from the documented encoding: [w/M * delta, w/M, w/M * loss]."""
    share = weight / normalizer
    n = len(DEVICES)
    return np.concatenate(
        [
            FixedPoint(clip, n).encode(share * delta.astype(np.float64)),
            FixedPoint(1.0, n).encode(np.array([share])),
            FixedPoint(LOSS_CLIP, n).encode(np.array([share * loss])),
        ]
    )


def plant_normalizer(topology) -> float:
    counts = make_plan(topology).shards.counts
    return float(max(counts[d.index] for d in topology.plant("plant-a").devices))


def to_frames(message: dict, sender: str, round: int, spec) -> list:
    """A secagg step's dict on the wire: its fields in the header, the masked input as one raw uint32 frame."""
    fields = {k: v for k, v in message.items() if k not in ("kind", "round", "device", "masked")}
    if message["kind"] == protocol.SECAGG_MASKED:
        words = np.frombuffer(message["masked"], np.uint32)
        return protocol.encode(
            protocol.SECAGG_MASKED,
            sender,
            round=round,
            spec=spec,
            codec=protocol.MASKED_CODEC,
            arrays=[words],
        )
    return protocol.encode(message["kind"], sender, round=round, **fields)


def from_header(header: dict, frames: list, sender: str | None = None) -> dict:
    """A received secagg message back as the dict its session takes."""
    fields = {
        k: v
        for k, v in header.items()
        if k
        not in (
            "protocol",
            "kind",
            "sender",
            "round",
            "edge_round",
            "model_version",
            "spec",
            "codec",
        )
    }
    message = {
        "kind": header["kind"],
        "round": session_round(header["round"], header["edge_round"]),
        **fields,
    }
    if sender is not None:
        message["device"] = sender
    if header["kind"] == protocol.SECAGG_MASKED:
        message["masked"] = bytes(frames[0])
    return message


# -- 1. what real devices send ---------------------------------------------------------------------


@pytest.fixture
def folder():
    path = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_devices_send_only_masked_words_whose_sum_is_the_weighted_sum_of_their_updates(folder):
    topology_file = folder / "secagg.toml"
    topology_file.write_text((TOPOLOGY % 60.0).format(dir=folder))
    topology = load_topology(topology_file)
    context = zmq.Context()
    edge = context.socket(zmq.ROUTER)
    edge.setsockopt(zmq.LINGER, 0)
    edge.bind(f"ipc://{folder}/edge.ipc")
    logs = {d: open(folder / f"{d.replace('/', '.')}.log", "w") for d in DEVICES}
    processes = [
        subprocess.Popen(
            [str(HIERFL), "device", str(topology_file), "--id", d],
            stdout=logs[d],
            stderr=subprocess.STDOUT,
        )
        for d in DEVICES
    ]
    seen: list[tuple[str, dict, list[bytes]]] = []

    def receive(kind: str, count: int) -> dict[str, tuple[dict, list[bytes]]]:
        got = {}
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while len(got) < count:
            left = int((deadline - time.monotonic()) * 1000)
            assert left > 0 and edge.poll(left), f"only {sorted(got)} sent {kind}:\n" + "".join(
                (folder / f"{d.replace('/', '.')}.log").read_text()[-800:] for d in DEVICES
            )
            peer, header, *frames = edge.recv_multipart()
            header = msgpack.unpackb(header)
            seen.append((peer.decode(), header, frames))
            if header["kind"] == kind:
                got[peer.decode()] = (header, frames)
        return got

    try:
        receive(protocol.HELLO, len(DEVICES))
        net = node_model(topology)
        global_flat = np.asarray(ravel(net.spec, net.initial_params))
        model = protocol.encode(
            protocol.MODEL, "plant-a", round=1, spec=net.spec, codec="none", arrays=[global_flat]
        )
        for d in DEVICES:
            edge.send_multipart([d.encode(), *model])
        words = net.spec.size + 2
        session = EdgeSession(session_round(1, 0), THRESHOLD, words)
        keys = receive(protocol.SECAGG_KEYS, 3)
        roster = session.collect_keys([from_header(h, f, d) for d, (h, f) in keys.items()])
        for d in DEVICES:
            edge.send_multipart([d.encode(), *to_frames(roster, "plant-a", 1, net.spec)])
        shares = receive(protocol.SECAGG_SHARES, 3)
        inboxes = session.route_shares([from_header(h, f, d) for d, (h, f) in shares.items()])
        for d, inbox in inboxes.items():
            edge.send_multipart([d.encode(), *to_frames(inbox, "plant-a", 1, net.spec)])
        masked = receive(protocol.SECAGG_MASKED, 3)
        request = session.collect_masked([from_header(h, f, d) for d, (h, f) in masked.items()])
        for d in request["survivors"]:
            edge.send_multipart([d.encode(), *to_frames(request, "plant-a", 1, net.spec)])
        reveals = receive(protocol.SECAGG_REVEAL, 3)
        total = session.finish([from_header(h, f, d) for d, (h, f) in reveals.items()])
        stop = protocol.encode(protocol.STOP, "plant-a", round=1)
        for d in DEVICES:
            edge.send_multipart([d.encode(), *stop])
        for process in processes:
            assert process.wait(timeout=60) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for log in logs.values():
            log.close()
        edge.close()
        context.term()

    sent = {header["kind"] for _, header, _ in seen}
    assert protocol.UPDATE not in sent
    assert sent <= {protocol.HELLO, protocol.HEARTBEAT, *protocol.SECAGG_FROM_DEVICE}
    assert all(
        len(frames) == 0 for _, header, frames in seen if header["kind"] != protocol.SECAGG_MASKED
    )

    # Each device's result, recomputed here with the device's keys and data.
    plan = make_plan(topology)
    device_net = node_model(topology, plan.shards.counts)
    codec = device_net.codecs.device_to_edge
    step = jax.jit(
        make_device_step(device_net.algorithm, device_net.spec, codec, topology.federation.seed)
    )
    normalizer = float(plan.shards.counts[:3].max())
    plain, delta_sum, weight = {}, np.zeros(net.spec.size), 0.0
    for d in DEVICES:
        i = topology.device(d).index
        data = DeviceData(
            jnp.asarray(plan.shards.x[i]),
            jnp.asarray(plan.shards.y[i]),
            jnp.asarray(plan.shards.counts[i]),
            jnp.int32(topology.device_steps[i]),
        )
        out = step(
            global_flat,
            data,
            jnp.zeros(codec.residual_size),
            jnp.int32(1),
            jnp.int32(0),
            jnp.int32(i),
            jnp.float32(1),
        )
        delta = np.asarray(out.payload[0])
        plain[d] = words_of(delta, float(out.weight), float(out.loss), normalizer)
        delta_sum += float(out.weight) * delta.astype(np.float64)
        weight += float(out.weight)
    for d, (header, frames) in masked.items():
        on_wire = np.frombuffer(frames[0], np.uint32)
        assert header["codec"] == protocol.MASKED_CODEC and on_wire.shape == (words,)
        assert np.mean(on_wire == plain[d]) < 0.01, f"{d}'s masked input shows its plaintext words"
    np.testing.assert_array_equal(
        total, sum(plain.values())
    )  # the same words as the updates computed here, exactly
    step_size = FixedPoint(1.0, len(DEVICES)).step
    recovered = total[:-2].view(np.int32) * step_size * normalizer
    assert np.max(np.abs(recovered - delta_sum)) <= len(DEVICES) * step_size * normalizer
    assert abs(total[-2].view(np.int32) * step_size * normalizer - weight) < 1e-3


# -- 2 and 3. a live edge against devices driven by the test ---------------------------------------


@pytest.fixture(scope="module")
def edge():
    # A short deadline: a phase waits that long for a device that went silent.
    with running_edge(TOPOLOGY % 6.0, DEVICES) as running:
        running["normalizer"] = plant_normalizer(running["topology"])
        running["round"] = 0
        for peer in running["devices"].values():
            peer.send_kind(protocol.HELLO)
        yield running


def open_round(edge) -> tuple[int, np.ndarray]:
    """The fake cloud sends the next round's model; every device receives it. Returns (round, global flat)."""
    edge["round"] += 1
    spec, r = edge["net"].spec, edge["round"]
    global_flat = np.asarray(ravel(spec, edge["net"].initial_params)) + np.float32(r)
    edge["cloud"].send_multipart(
        [
            b"plant-a",
            *protocol.encode(
                protocol.MODEL, "cloud", round=r, spec=spec, codec="none", arrays=[global_flat]
            ),
        ]
    )
    for peer in edge["devices"].values():
        header, _ = peer.recv(protocol.MODEL)
        assert header["round"] == r
    return r, global_flat


class Device:
    """A device driven by the test: a DeviceSession and the peer socket, one round."""

    def __init__(self, edge, name: str, round: int, seed: int):
        self.peer, self.round, self.spec = edge["devices"][name], round, edge["net"].spec
        rng = np.random.default_rng(seed)
        self.delta = rng.normal(size=self.spec.size).astype(np.float32) * 0.01
        self.weight = float(rng.integers(10, 40))
        self.words = words_of(self.delta, self.weight, 0.5, edge["normalizer"])
        self.session = DeviceSession(name, session_round(round, 0), THRESHOLD, len(self.words))

    def send(self, message: dict) -> None:
        self.peer.send(to_frames(message, self.peer.identity, self.round, self.spec))

    def recv(self, kind: str) -> dict:
        return from_header(*self.peer.recv(kind))


def run_until_masked(devices: list[Device], masking: list[Device]) -> None:
    """Steps 0 and 1 for every device; step 2 (masked input) only for `masking`."""
    for device in devices:
        device.send(device.session.advertise())
    for device in devices:
        device.send(device.session.share_keys(device.recv(protocol.SECAGG_ROSTER)))
    inboxes = {device.peer.identity: device.recv(protocol.SECAGG_INBOX) for device in devices}
    for device in masking:
        device.send(device.session.masked_input(inboxes[device.peer.identity], device.words))


def test_a_device_dropping_after_sharing_is_recovered(edge):
    r, _ = open_round(edge)
    devices = [Device(edge, name, r, seed) for seed, name in enumerate(DEVICES)]
    survivors = devices[:2]
    run_until_masked(devices, survivors)
    # The third device is silent from here: after the deadline the edge asks the survivors to unmask.
    for device in survivors:
        request = device.recv(protocol.SECAGG_UNMASK)
        assert request["dropped"] == [DEVICES[2]]
        device.send(device.session.unmask(request))
    summary, frames = cloud_recv(edge["cloud"], protocol.SUMMARY)
    weight = sum(d.weight for d in survivors)
    assert summary["round"] == r and summary["answered"] == [2]
    assert summary["weight"] == pytest.approx(weight, rel=1e-6)
    mean = sum(d.weight * d.delta.astype(np.float64) for d in survivors) / weight
    np.testing.assert_allclose(np.frombuffer(frames[0], np.float32), mean, atol=1e-6)


def test_too_many_drops_fail_the_round_safely_and_say_where(edge):
    r, _ = open_round(edge)
    devices = [Device(edge, name, r, 10 + seed) for seed, name in enumerate(DEVICES)]
    run_until_masked(devices, devices[:1])  # two of three go silent after sharing: 1 < t = 2
    summary, frames = cloud_recv(edge["cloud"], protocol.SUMMARY)
    assert summary["round"] == r and summary["answered"] == [0] and summary["weight"] == 0
    np.testing.assert_array_equal(np.frombuffer(frames[0], np.float32), 0)  # the model did not move
    assert edge["process"].poll() is None
    status = edge["devices"][DEVICES[0]].status()
    assert status["secagg_failed"] == 1 and status["phase"] == "idle"
    assert (
        f"edge round {r}.0: secure aggregation failed at masked input: 1 usable answers, below the threshold t = 2"
        in edge["log"].read_text()
    )


def test_bad_secagg_messages_are_refused_with_their_reason(edge):
    r, _ = open_round(edge)
    devices = [Device(edge, name, r, 20 + seed) for seed, name in enumerate(DEVICES)]
    dev1, spec = devices[0], edge["net"].spec
    keys = dev1.session.advertise()
    (header,) = to_frames(keys, dev1.peer.identity, r, spec)
    masked_header, masked_frame = to_frames(
        {"kind": protocol.SECAGG_MASKED, "masked": np.zeros(spec.size + 2, np.uint32).tobytes()},
        dev1.peer.identity,
        r,
        spec,
    )
    stranger = Peer(edge["context"], edge["address"], "plant-a/line-1/dev-999")
    before = dev1.peer.status()["rejected"]
    cases = [
        (dev1.peer, to_frames(keys, dev1.peer.identity, r - 1, spec), protocol.STALE_ROUND),
        (dev1.peer, to_frames(keys, dev1.peer.identity, r + 1, spec), protocol.FUTURE_ROUND),
        (
            dev1.peer,
            to_frames({**keys, "c_pk": "not bytes"}, dev1.peer.identity, r, spec),
            protocol.MALFORMED,
        ),
        (
            dev1.peer,
            to_frames({**keys, "s_pk": b"short"}, dev1.peer.identity, r, spec),
            protocol.MALFORMED,
        ),
        (
            dev1.peer,
            [msgpack.packb({k: v for k, v in msgpack.unpackb(header).items() if k != "c_pk"})],
            protocol.MALFORMED,
        ),
        (
            dev1.peer,
            protocol.encode(
                protocol.SECAGG_SHARES, dev1.peer.identity, round=r, b_hash=b"x", shares=[1]
            ),
            protocol.MALFORMED,
        ),
        (dev1.peer, [masked_header, bytes(masked_frame) + bytes(64)], protocol.OVERSIZED),
        (dev1.peer, [header, bytes(2_000_000)], protocol.OVERSIZED),
        (
            dev1.peer,
            [masked_header, masked_frame],
            protocol.UNEXPECTED,
        ),  # a masked input during the keys phase
        (
            dev1.peer,
            protocol.encode(
                protocol.SECAGG_ROSTER, dev1.peer.identity, round=r, threshold=2, keys={}
            ),
            protocol.UNEXPECTED,
        ),
        (
            dev1.peer,
            protocol.encode(
                protocol.UPDATE,
                dev1.peer.identity,
                round=r,
                spec=spec,
                codec="none",
                arrays=[np.zeros(spec.size, np.float32)],
                weight=1.0,
                loss=0.1,
            ),
            protocol.UNEXPECTED,
        ),
        (stranger, to_frames(keys, "plant-a/line-1/dev-999", r, spec), protocol.UNKNOWN_SENDER),
    ]
    for peer, frames, reason in cases:
        peer.send(frames)
        reply, _ = peer.recv(protocol.REJECTED)
        assert reply["reason"] == reason, (reason, reply)
        assert edge["process"].poll() is None
    dev1.send(keys)
    dev1.send(keys)
    assert dev1.peer.recv(protocol.REJECTED)[0]["reason"] == protocol.DUPLICATE
    counts = dev1.peer.status()["rejected"]
    added = {reason: counts.get(reason, 0) - before.get(reason, 0) for reason in counts}
    assert {k: v for k, v in added.items() if v} == {
        protocol.STALE_ROUND: 1,
        protocol.FUTURE_ROUND: 1,
        protocol.MALFORMED: 4,
        protocol.OVERSIZED: 2,
        protocol.UNEXPECTED: 3,
        protocol.UNKNOWN_SENDER: 1,
        protocol.DUPLICATE: 1,
    }
    stranger.socket.close()

    # The round still completes with the valid messages.
    for device in devices[1:]:
        device.send(device.session.advertise())
    for device in devices:
        device.send(device.session.share_keys(device.recv(protocol.SECAGG_ROSTER)))
    for device in devices:
        device.send(device.session.masked_input(device.recv(protocol.SECAGG_INBOX), device.words))
    for device in devices:
        device.send(device.session.unmask(device.recv(protocol.SECAGG_UNMASK)))
    summary, frames = cloud_recv(edge["cloud"], protocol.SUMMARY)
    weight = sum(d.weight for d in devices)
    assert summary["round"] == r and summary["answered"] == [3]
    mean = sum(d.weight * d.delta.astype(np.float64) for d in devices) / weight
    np.testing.assert_allclose(np.frombuffer(frames[0], np.float32), mean, atol=1e-6)
