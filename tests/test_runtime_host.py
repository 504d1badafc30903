"""Device hosts: many devices of a plant in one OS process (`hierfl devices`), as `hierfl launch` groups them.

Hosted devices must train the same global model as `hierfl simulate` (the edge cannot
tell them from device processes), and kill -9 of a host must only cost the rounds its
devices' answers, as for crashed device processes. The launches run real processes on
ipc:// sockets (helpers from test_runtime_launch).
"""

from __future__ import annotations

import subprocess

import pytest
from test_runtime_launch import HIERFL, launch_to_the_end, max_difference

from conftest import kill9, wait_for_record, write_topology
from hierfl.data.loading import load_topology
from hierfl.errors import HierflError
from hierfl.runs.checkpoint import load_params
from hierfl.runtime.host import hosted_devices
from hierfl.runtime.launch import Launch, device_groups, device_process, node_env
from hierfl.sim.engine import simulate
from hierfl.topology import parse_topology

GROUPED = """
[federation]
name = "grouped"
task = "digits"
cloud_rounds = 1
learning_rate = 0.1

[cloud]
address = "ipc:///tmp/grouped-cloud.ipc"

[runtime]
{grouping}

[[plants]]
name = "plant-a"
address = "ipc:///tmp/grouped-a.ipc"
[[plants.lines]]
name = "line-1"
devices = 3
[[plants.lines]]
name = "line-2"
devices = 2

[[plants]]
name = "plant-b"
address = "ipc:///tmp/grouped-b.ipc"
[[plants.lines]]
name = "line-1"
devices = {devices_b}
"""


def grouped(grouping: str, devices_b: int = 1):
    return parse_topology(GROUPED.format(grouping=grouping, devices_b=devices_b))


def process_names(topology) -> list[str]:
    return [device_process(topology, group)[0] for group in device_groups(topology)]


def test_a_node_keeps_the_users_xla_flags_but_its_own_device_count_and_threads():
    env = node_env(
        {"HOME": "/h", "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/d"}
    )
    assert env["HOME"] == "/h"
    assert env["XLA_FLAGS"].split() == [
        "--xla_dump_to=/d",
        "--xla_force_host_platform_device_count=1",
        "--xla_cpu_multi_thread_eigen=false",
    ]
    assert node_env({})["XLA_FLAGS"].split()[0] == "--xla_force_host_platform_device_count=1"


def test_devices_per_process_groups_devices_within_plants():
    assert process_names(grouped('devices_per_process = "plant"')) == [
        "devices-plant-a",
        "device-plant-b.line-1.dev-001",
    ]
    assert process_names(grouped('devices_per_process = "line"')) == [
        "devices-plant-a.line-1",
        "devices-plant-a.line-2",
        "device-plant-b.line-1.dev-001",
    ]
    topology = grouped("devices_per_process = 2")
    assert process_names(topology) == [
        "devices-plant-a.line-1.dev-001+1",
        "devices-plant-a.line-1.dev-003+1",
        "device-plant-a.line-2.dev-002",
        "device-plant-b.line-1.dev-001",
    ]
    # A group that spans lines names its devices one by one.
    assert device_process(topology, device_groups(topology)[1])[1] == [
        "devices",
        "--plant",
        "plant-a",
        "--ids",
        "plant-a/line-1/dev-003",
        "plant-a/line-2/dev-001",
    ]
    # "auto": a process per device for a small federation, a host per plant for a large one.
    assert process_names(grouped("")) == [
        f"device-{d.id.replace('/', '.')}" for d in grouped("").devices
    ]
    assert process_names(grouped("", devices_b=20)) == ["devices-plant-a", "devices-plant-b"]


def test_a_host_selects_its_devices_by_plant_line_or_id():
    topology = grouped("")
    assert [d.id for d in hosted_devices(topology, "plant-a", "line-2")] == [
        "plant-a/line-2/dev-001",
        "plant-a/line-2/dev-002",
    ]
    assert [d.id for d in hosted_devices(topology, "plant-a", ids=["plant-a/line-2/dev-001"])] == [
        "plant-a/line-2/dev-001"
    ]
    with pytest.raises(HierflError, match="no line 'line-3' in plant 'plant-a'"):
        hosted_devices(topology, "plant-a", "line-3")
    with pytest.raises(
        HierflError, match="not devices of line 'line-1' of plant 'plant-a': plant-b/line-1/dev-001"
    ):
        hosted_devices(topology, "plant-a", "line-1", ["plant-b/line-1/dev-001"])
    result = subprocess.run(
        [str(HIERFL), "devices", "demo", "--plant", "plant-z"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no plant 'plant-z'" in result.stderr


def test_hosted_devices_train_the_same_model_as_simulate(folder):
    # plant-a's 3 devices: a host of two (by id) and a device process; plant-b's 2: a host of its plant.
    topology = write_topology(
        folder, devices_a=3, heartbeat_timeout=30.0, extra="devices_per_process = 2"
    )
    out = folder / "run"
    records = launch_to_the_end(topology, out)
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "cloud.log",
        "device-plant-a.line-1.dev-003.log",
        "devices-plant-a.line-1.dev-001+1.log",
        "devices-plant-b.log",
        "edge-plant-a.log",
        "edge-plant-b.log",
        "fork-server.log",
    ]
    assert all(r["devices_answered"] == {"plant-a": [3, 3], "plant-b": [2, 2]} for r in records)
    assert max_difference(simulate(topology).params, load_params(out / "model.npz")) <= 1e-5


def test_rounds_go_on_when_a_host_is_killed(folder):
    """kill -9 of a host of 2 of plant-a's 4 devices: rounds close at the deadline with the other 2, and training goes on."""
    topology_file = write_topology(
        folder,
        name="hostfault",
        rounds=1000,
        devices_a=4,
        device_deadline=3.0,
        extra="devices_per_process = 2",
    )
    out = folder / "run"
    launch = Launch(load_topology(topology_file), str(topology_file), out)
    launch.start()
    try:
        before = wait_for_record(out, lambda r: r["round"] >= 2, "round 2", launch)
        assert before["devices_answered"]["plant-a"] == [4, 4]
        kill9(launch.processes["devices-plant-a.line-1.dev-001+1"])
        short = wait_for_record(
            out,
            lambda r: r["devices_answered"].get("plant-a") == [2, 2],
            "a round with 2 of 4 devices",
            launch,
        )
        later = wait_for_record(
            out, lambda r: r["round"] >= short["round"] + 2, "two more rounds", launch
        )
    finally:
        launch.stop(grace=0)
    assert later["devices_answered"] == {"plant-a": [2, 2], "plant-b": [2, 2]}
    assert later["edges_answered"] == ["plant-a", "plant-b"]
    assert later["accuracy"] > before["accuracy"]
