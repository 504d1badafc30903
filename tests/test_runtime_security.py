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
devices = ["{device}"]

[[plants]]
name = "plant-a"
address = "ipc://{dir}/edge.ipc"

[[plants.lines]]
name = "line-1"
devices = 2
"""


def hierfl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HIERFL), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def secure_edge():
    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    keys = folder / "keys"
    result = hierfl("keys", "generate", str(keys), "cloud", "plant-a", "device", "intruder")
    assert result.returncode == 0, result.stderr
    assert "public key" in result.stdout
    public = {
        name: zmq.auth.load_certificate(keys / f"{name}.key")[0].decode()
        for name in ("cloud", "plant-a", "device")
    }
    topology = folder / "secure.toml"
    topology.write_text(
        TOPOLOGY.format(
            dir=folder, cloud=public["cloud"], edge=public["plant-a"], device=public["device"]
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
