"""Shared fixtures: small topologies written as TOML text, so each test reads its setup."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hierfl.data.loading import load_topology
from hierfl.runtime.launch import Launch, read_new_records
from hierfl.runtime.node import CACHE_ENV, enable_compilation_cache
from hierfl.topology import parse_topology


def topology_text(
    *,
    plants: list[list[int]],
    task: str = "digits",
    model: str = "mlp",
    algorithm: str = "fedavg",
    cloud_rounds: int = 2,
    edge_rounds: int = 1,
    local_steps: int = 3,
    batch_size: int = 8,
    learning_rate: float = 0.1,
    seed: int = 0,
    partition: str = "iid",
    samples_per_device: int | None = None,
) -> str:
    """A topology with `plants[i][j]` devices on line j of plant i."""
    spd = f"samples_per_device = {samples_per_device}\n" if samples_per_device else ""
    text = f"""
[federation]
name = "test"
task = "{task}"
model = "{model}"
algorithm = "{algorithm}"
cloud_rounds = {cloud_rounds}
edge_rounds = {edge_rounds}
local_steps = {local_steps}
batch_size = {batch_size}
learning_rate = {learning_rate}
seed = {seed}

[data]
partition = "{partition}"
{spd}
[cloud]
address = "tcp://127.0.0.1:7000"
"""
    for i, lines in enumerate(plants):
        text += f'\n[[plants]]\nname = "plant-{i}"\naddress = "tcp://127.0.0.1:{7100 + i}"\n'
        for j, devices in enumerate(lines):
            text += f'\n[[plants.lines]]\nname = "line-{j}"\ndevices = {devices}\n'
    return text


TEST_XLA_FLAG = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    """XLA's backend optimizations off, and one persistent XLA compilation cache for the
    session and every process it starts.

    The suite's programs are small and compiled once or twice each: LLVM's optimization
    passes cost more than they save (the simulator and algorithm tests take 27% less CPU,
    the examples 39%; the models agree to the tests' tolerances). Set `XLA_FLAGS` with its own
    `--xla_backend_optimization_level` to test at another level; launched nodes inherit it.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {TEST_XLA_FLAG}".strip()
    _share_a_compilation_cache(config)


def _share_a_compilation_cache(config):
    """One persistent XLA compilation cache for the session and every process it starts.

    The simulator builds its jitted round afresh for each run, so two tests that simulate
    the same topology compile the same programs twice; with the cache the second loads them
    (a small launch test's reference simulation drops from about 9 s to 1.5 s). A fresh
    directory per session keeps runs independent of each other and of the user's own cache
    (`HIERFL_COMPILATION_CACHE`, inherited by launched nodes, which honour it too); set it
    to `off` to test without one.
    """
    if os.environ.get(CACHE_ENV) != "off":
        config.hierfl_cache = tempfile.mkdtemp(prefix="hierfl-test-jax-cache-")
        os.environ[CACHE_ENV] = config.hierfl_cache
        enable_compilation_cache()


def pytest_unconfigure(config):
    if getattr(config, "hierfl_cache", None):
        shutil.rmtree(config.hierfl_cache, ignore_errors=True)


@pytest.fixture
def make_topology():
    """`make_topology(plants=[[3, 2], [4]], ...)` -> a validated Topology."""

    def make(**kwargs):
        return parse_topology(topology_text(**kwargs), "test.toml")

    return make


@pytest.fixture(scope="session")
def demo_topology():
    return load_topology("demo")


# -- launched federations (every node a real OS process on loopback, ipc://) --

TOPOLOGY = """
[federation]
name = "{name}"
task = "digits"
model = "mlp"
cloud_rounds = {rounds}
edge_rounds = 2
local_steps = 3
batch_size = 16
learning_rate = 0.1
seed = 7

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
device_deadline = {device_deadline}
edge_deadline = 60.0
heartbeat_interval = 0.3
heartbeat_timeout = {heartbeat_timeout}
start_timeout = 120.0
{extra}

[[plants]]
name = "plant-a"
address = "ipc://{dir}/a.ipc"
[[plants.lines]]
name = "line-1"
devices = {devices_a}

[[plants]]
name = "plant-b"
address = "ipc://{dir}/b.ipc"
shift = 0.2
[[plants.lines]]
name = "line-1"
devices = 2
"""


@pytest.fixture
def folder():
    """A short directory (ipc:// socket paths are limited to about 100 characters); kept after
    the test when HIERFL_KEEP_TEST_DIRS is set, to read the nodes' logs."""
    path = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    yield path
    if not os.environ.get("HIERFL_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


def write_topology(
    folder: Path,
    *,
    name="rt",
    rounds=2,
    devices_a=2,
    device_deadline=60.0,
    heartbeat_timeout=2.0,
    extra="",
    codecs="",
) -> Path:
    """A 2-plant digits topology on ipc:// sockets in `folder`; plant-b has 2 devices."""
    path = folder / f"{name}.toml"
    text = TOPOLOGY.format(
        name=name,
        rounds=rounds,
        dir=folder,
        devices_a=devices_a,
        device_deadline=device_deadline,
        heartbeat_timeout=heartbeat_timeout,
        extra=extra,
    )
    path.write_text(text + codecs)
    return path


def wait_for_record(
    run_dir: Path, condition, what: str, launch: Launch, timeout: float = 120.0
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in read_new_records(run_dir / "metrics.jsonl", 0):
            if condition(record):
                return record
        assert launch.processes["cloud"].poll() is None, (
            run_dir / "logs" / "cloud.log"
        ).read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(
        f"gave up waiting for {what}:\n" + (run_dir / "logs" / "cloud.log").read_text()[-3000:]
    )


def kill9(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
