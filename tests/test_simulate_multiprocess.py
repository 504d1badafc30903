"""`hierfl simulate` over several processes (`hierfl.sim.processes`): real OS processes on
loopback joined by `jax.distributed`, against one process with as many JAX devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import topology_text
from hierfl.errors import HierflError
from hierfl.sim.processes import ProcessGroup, coordinator_address, process_group

TIMEOUT_S = 120
"""A hung collective or join fails the test after this long instead of hanging the suite."""


def python(*args: str, host_devices: int, out: Path) -> subprocess.Popen:
    """`python ARGS...` with `host_devices` CPU devices, its output in `out`."""
    device_count = f"--xla_force_host_platform_device_count={host_devices}"
    flags = f"{os.environ.get('XLA_FLAGS', '')} {device_count}".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "COLUMNS": "160"}
    return subprocess.Popen(
        [sys.executable, *args], stdout=out.open("w"), stderr=subprocess.STDOUT, env=env
    )


def hierfl(*args: str, host_devices: int, out: Path) -> subprocess.Popen:
    """`python -m hierfl simulate ARGS...`."""
    return python("-m", "hierfl", "simulate", *args, host_devices=host_devices, out=out)


def finish(runs: dict[str, subprocess.Popen], logs: Path, status: int = 0) -> None:
    """Waits for every run; kills them all and fails with their output if one hangs or ends
    with another exit status than `status`."""
    try:
        codes = {name: run.wait(timeout=TIMEOUT_S) for name, run in runs.items()}
    except subprocess.TimeoutExpired:
        codes = {}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
    failed = [name for name in runs if codes.get(name) != status]
    if failed:
        text = "\n".join(f"--- {n}\n{(logs / f'{n}.txt').read_text()[-3000:]}" for n in runs)
        pytest.fail(f"{failed} ended with {codes} (none: hung past {TIMEOUT_S} s)\n{text}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_model(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k != "__dtypes__"}


def test_two_processes_on_loopback_train_the_model_of_one_process_with_two_devices(tmp_path):
    # 5 devices in 2 plants, chunks padded to 6: process 1's share holds the padding, and
    # each edge round's per-plant sums add both processes' devices (gloo between them).
    topology = tmp_path / "plants.toml"
    topology.write_text(topology_text(plants=[[3], [2]], edge_rounds=2, local_steps=2))
    common = (str(topology), "--rounds", "2", "--quiet")
    group = ("--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2")
    runs = {
        "process-0": hierfl(
            *common, *group, "--process-id", "0", "--out", str(tmp_path / "p0"),
            host_devices=1, out=tmp_path / "process-0.txt",
        ),
        "process-1": hierfl(
            *common, *group, "--process-id", "1", "--out", str(tmp_path / "p1"),
            host_devices=1, out=tmp_path / "process-1.txt",
        ),
        "one": hierfl(
            *common, "--out", str(tmp_path / "one"), host_devices=2, out=tmp_path / "one.txt"
        ),
    }  # fmt: skip
    finish(runs, tmp_path)

    assert not (tmp_path / "p1").exists(), "process 1 must write nothing"
    said = (tmp_path / "process-1.txt").read_text()
    assert "process 1 of 2 joined" in said and "1 of the run's 2 JAX devices here" in said
    two, one = load_model(tmp_path / "p0" / "model.npz"), load_model(tmp_path / "one" / "model.npz")
    assert two.keys() == one.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    records = {
        run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]
        for run in ("p0", "one")
    }
    assert [r["round"] for r in records["p0"]] == [1, 2]
    for mine, theirs in zip(records["p0"], records["one"], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-9)


PLACE_CHUNKS = """
import json, sys
import numpy as np
from hierfl.sim.processes import ProcessGroup, join
join(ProcessGroup(sys.argv[1], 2, int(sys.argv[2])), 60)
from hierfl.data.plan import make_plan
from hierfl.sim.engine import build_simulation
from hierfl.topology import parse_topology
plan = make_plan(parse_topology(open(sys.argv[3]).read(), "plants.toml"))
chunks = build_simulation(plan).chunks
shards = lambda a: [np.asarray(s.data).tolist() for s in a.addressable_shards]
print(json.dumps({"shape": chunks.count.shape, "index": shards(chunks.index),
                  "count": shards(chunks.count), "expected_count": plan.shards.counts.tolist()}))
"""


def test_each_process_places_only_its_own_share_of_every_chunk(tmp_path):
    topology = tmp_path / "plants.toml"
    topology.write_text(topology_text(plants=[[3], [2]]))
    coordinator = f"127.0.0.1:{free_port()}"
    runs = {
        f"process-{i}": python(
            "-c", PLACE_CHUNKS, coordinator, str(i), str(topology),
            host_devices=1, out=tmp_path / f"process-{i}.txt",
        )
        for i in (0, 1)
    }  # fmt: skip
    finish(runs, tmp_path)
    placed = [
        json.loads((tmp_path / f"process-{i}.txt").read_text().splitlines()[-1]) for i in (0, 1)
    ]
    counts = placed[0]["expected_count"]
    assert placed[0]["shape"] == placed[1]["shape"] == [1, 6]  # 5 devices, 1 chunk padded to 6
    assert placed[0]["index"] == [[[0, 1, 2]]] and placed[1]["index"] == [[[3, 4, 5]]]
    assert placed[0]["count"] == [[counts[:3]]] and placed[1]["count"] == [[counts[3:] + [0]]]


def test_processes_started_with_other_options_stop_with_status_2_before_training(tmp_path):
    topology = tmp_path / "plants.toml"
    topology.write_text(topology_text(plants=[[3], [2]]))
    group = ("--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2")
    runs = {
        f"process-{i}": hierfl(
            str(topology), "--quiet", "--seed", str(i), *group, "--process-id", str(i),
            "--out", str(tmp_path / f"p{i}"), host_devices=1, out=tmp_path / f"process-{i}.txt",
        )
        for i in (0, 1)
    }  # fmt: skip
    finish(runs, tmp_path, status=2)
    said = (tmp_path / "process-1.txt").read_text()
    assert "process 1's topology or options differ from those of process 0" in said
    assert not (tmp_path / "p0").exists()


def test_the_three_options_make_a_process_group_only_together():
    assert process_group(None, None, None) is None
    assert process_group("h:1", 3, 2) == ProcessGroup("h:1", 3, 2)
    with pytest.raises(
        HierflError, match="--num-processes given without --coordinator and --process-id"
    ):
        process_group(None, 2, None)
    with pytest.raises(
        HierflError, match="--coordinator, --num-processes given without --process-id"
    ):
        process_group("h:1", 2, None)


def test_a_process_id_outside_the_group_is_refused_with_the_range():
    with pytest.raises(HierflError, match=r"--process-id 2 is not one of the 2 processes.*0\.\.1"):
        process_group("h:1", 2, 2)


@pytest.mark.parametrize(
    ("text", "why"),
    [("host", "HOST:PORT"), (":80", "HOST:PORT"), ("h:0", "1..65535"), ("h:x", "1..65535")],
)
def test_a_coordinator_is_host_and_port(text, why):
    with pytest.raises(ValueError, match=why):
        coordinator_address(text)
    assert coordinator_address("[::1]:5710") == "[::1]:5710"


TINY = str(Path(__file__).parent / "data" / "tiny.toml")


def simulate_exit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hierfl", "simulate", TINY, "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--num-processes", "2"), "--num-processes given without --coordinator"),
        (
            ("--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"),
            "--process-id 2 is not one of the 2 processes",
        ),
        (("--coordinator", "localhost"), "argument --coordinator: expected HOST:PORT"),
        (("--num-processes", "0"), "argument --num-processes: must be >= 1"),
    ],
)
def test_the_command_refuses_a_bad_group_with_status_2_naming_the_option(args, message):
    result = simulate_exit(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_process_that_finds_no_coordinator_ends_with_status_2_after_the_join_timeout(tmp_path):
    port = free_port()  # nothing listens there
    group = ("--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1")
    result = simulate_exit(*group, "--join-timeout", "1", "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert f"--coordinator 127.0.0.1:{port}: process 1 of 2 found no coordinator" in result.stderr
    assert not (tmp_path / "run").exists()
