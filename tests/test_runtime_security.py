"""CurveZMQ: with keys listed in the topology, only listed devices reach a live edge."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.auth

from hierfl.runtime import protocol

HIERFL = Path(sys.executable).parent / "hierfl"

TOPOLOGY = """
[federation]
name = "secure"
task = "digits"
model = "mlp"
cloud_rounds = 1
learning_rate = 0.1

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
heartbeat_interval = 0.5

[runtime.keys]
cloud = "{cloud}"
edges = {{ plant-a = "{edge}" }}
devices = {devices}

[[plants]]
name = "plant-a"
address = "ipc://{dir}/edge.ipc"

[[plants.lines]]
name = "line-1"
devices = 2
"""


def hierfl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HIERFL), *args], capture_output=True, text=True, timeout=120)


LISTED = '["{device}"]'
"""Any listed key may connect as any device."""
BOUND = '{{ "plant-a/line-1/dev-001" = "{device}", "plant-a/line-1/dev-002" = "{intruder}" }}'
"""Each device its own key."""


@pytest.fixture
def secure_edge(request):
    devices = getattr(request, "param", LISTED)
    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    keys = folder / "keys"
    result = hierfl("keys", "generate", str(keys), "cloud", "plant-a", "device", "intruder")
    assert result.returncode == 0, result.stderr
    assert "public key" in result.stdout
    public = {
        name: zmq.auth.load_certificate(keys / f"{name}.key")[0].decode()
        for name in ("cloud", "plant-a", "device", "intruder")
    }
    topology = folder / "secure.toml"
    topology.write_text(
        TOPOLOGY.format(
            dir=folder,
            cloud=public["cloud"],
            edge=public["plant-a"],
            devices=devices.format(device=public["device"], intruder=public["intruder"]),
        )
    )
    log = folder / "edge.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                str(HIERFL),
                "edge",
                str(topology),
                "--plant",
                "plant-a",
                "--key",
                str(keys / "plant-a.key_secret"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield {"folder": folder, "keys": keys, "topology": topology, "process": process, "log": log}
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def ask_status(
    folder: Path, identity: str, client: Path | None, server_public: bytes | None, timeout_ms: int
) -> dict | None:
    """A STATUS request from a DEALER (a CurveZMQ client if `client` keys are given); the reply or None."""
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTING_ID, identity.encode())
    if client is not None:
        socket.curve_publickey, socket.curve_secretkey = zmq.auth.load_certificate(client)
        socket.curve_serverkey = server_public
    socket.connect(f"ipc://{folder}/edge.ipc")
    try:
        socket.send_multipart(protocol.encode(protocol.STATUS, identity))
        if not socket.poll(timeout_ms):
            return None
        return msgpack.unpackb(socket.recv_multipart()[0])
    finally:
        socket.close()
        context.term()


def test_only_devices_with_listed_keys_get_through(secure_edge):
    folder, keys = secure_edge["folder"], secure_edge["keys"]
    server = zmq.auth.load_certificate(keys / "plant-a.key")[0]
    listed = ask_status(
        folder, "plant-a/line-1/dev-001", keys / "device.key_secret", server, timeout_ms=60_000
    )
    assert listed is not None and listed["kind"] == "status", secure_edge["log"].read_text()
    assert (
        ask_status(
            folder, "plant-a/line-1/dev-002", keys / "intruder.key_secret", server, timeout_ms=3000
        )
        is None
    )
    assert ask_status(folder, "plant-a/line-1/dev-002", None, None, timeout_ms=2000) is None
    assert secure_edge["process"].poll() is None


@pytest.mark.parametrize("secure_edge", [BOUND], indirect=True)
def test_a_device_bound_to_its_key_cannot_be_claimed_with_another_listed_key(secure_edge):
    folder, keys = secure_edge["folder"], secure_edge["keys"]
    server = zmq.auth.load_certificate(keys / "plant-a.key")[0]
    own = ask_status(
        folder, "plant-a/line-1/dev-001", keys / "device.key_secret", server, timeout_ms=60_000
    )
    assert own is not None and own["kind"] == "status", secure_edge["log"].read_text()
    claimed = ask_status(
        folder, "plant-a/line-1/dev-002", keys / "device.key_secret", server, timeout_ms=10_000
    )
    assert claimed is not None and claimed["kind"] == "rejected", claimed
    assert claimed["reason"] == protocol.UNKNOWN_SENDER
    assert "another peer claims its name" in claimed["detail"]
    second = ask_status(
        folder, "plant-a/line-1/dev-002", keys / "intruder.key_secret", server, timeout_ms=10_000
    )
    assert second is not None and second["kind"] == "status"
    assert secure_edge["process"].poll() is None
    assert "another peer claims its name" in secure_edge["log"].read_text()


def test_a_node_of_a_secure_topology_needs_its_key(secure_edge):
    result = hierfl(
        "edge",
        str(secure_edge["topology"]),
        "--plant",
        "plant-a",
        "--bind",
        f"ipc://{secure_edge['folder']}/other.ipc",
    )
    assert result.returncode == 2
    assert "pass this node's --key" in result.stderr


def test_a_key_bound_to_a_device_the_topology_lacks_is_a_problem(tmp_path):
    from hierfl.topology import TopologyError, parse_topology

    public = [zmq.curve_keypair()[0].decode() for _ in range(3)]
    devices = f'{{ "plant-a/line-1/dev-009" = "{public[2]}", "plant-a/line-1" = "{public[2]}" }}'
    text = TOPOLOGY.format(dir=tmp_path, cloud=public[0], edge=public[1], devices=devices)
    with pytest.raises(TopologyError) as caught:
        parse_topology(text)
    assert caught.value.problems == (
        "runtime.keys.devices.plant-a/line-1: not a device id (plant/line/device)",
    )
    with pytest.raises(TopologyError) as unknown:
        parse_topology(text.replace(', "plant-a/line-1" = "' + public[2] + '"', ""))
    assert unknown.value.problems == (
        'runtime.keys.devices."plant-a/line-1/dev-009": no device of that id in the topology',
    )
    known = text.replace("dev-009", "dev-002").replace(
        ', "plant-a/line-1" = "' + public[2] + '"', ""
    )
    runtime = parse_topology(known).runtime
    assert runtime.device_key_of == {"plant-a/line-1/dev-002": public[2]}
    assert runtime.device_keys == (public[2],)


TWO_PLANTS = """
[federation]
name = "secure"
task = "digits"
model = "mlp"
cloud_rounds = 1
learning_rate = 0.1

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
heartbeat_interval = 0.5
start_timeout = 60.0

[runtime.keys]
cloud = "{cloud}"
edges = {{ plant-a = "{a}", plant-b = "{b}" }}
devices = ["{a}"]

[[plants]]
name = "plant-a"
address = "ipc://{dir}/a.ipc"
[[plants.lines]]
name = "line-1"
devices = 1

[[plants]]
name = "plant-b"
address = "ipc://{dir}/b.ipc"
[[plants.lines]]
name = "line-1"
devices = 1
"""


def test_the_cloud_takes_an_edge_only_over_its_own_key():
    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    keys = folder / "keys"
    assert hierfl("keys", "generate", str(keys), "cloud", "plant-a", "plant-b").returncode == 0
    public = {
        name: zmq.auth.load_certificate(keys / f"{name}.key")[0].decode()
        for name in ("cloud", "plant-a", "plant-b")
    }
    topology = folder / "two.toml"
    topology.write_text(
        TWO_PLANTS.format(
            dir=folder, cloud=public["cloud"], a=public["plant-a"], b=public["plant-b"]
        )
    )
    log = folder / "cloud.log"
    with open(log, "w") as out:
        cloud = subprocess.Popen(
            [str(HIERFL), "cloud", str(topology), "--out", str(folder / "run")]
            + ["--key", str(keys / "cloud.key_secret")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def hello(name: str, key: str) -> dict | None:
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTING_ID, name.encode())
        socket.curve_publickey, socket.curve_secretkey = zmq.auth.load_certificate(
            keys / f"{key}.key_secret"
        )
        socket.curve_serverkey = public["cloud"].encode()
        socket.connect(f"ipc://{folder}/cloud.ipc")
        try:
            socket.send_multipart(protocol.encode(protocol.HELLO, name, model_version=0))
            if not socket.poll(60_000):
                return None
            return msgpack.unpackb(socket.recv_multipart()[0])
        finally:
            socket.close()
            context.term()

    try:
        own = hello("plant-a", "plant-a")
        assert own is not None and own["kind"] == "heartbeat", log.read_text()
        claimed = hello("plant-b", "plant-a")
        assert claimed is not None and claimed["kind"] == "rejected", claimed
        assert claimed["reason"] == protocol.UNKNOWN_SENDER
        assert cloud.poll() is None
    finally:
        cloud.terminate()
        cloud.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
