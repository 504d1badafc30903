"""`--resume` with a node's own state file damaged: one line naming the file, never a traceback.

Each test writes a small digits topology, damages the file a node would resume from, and
starts that node as a real process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hierfl.runs.records import reconcile_metrics

HIERFL = Path(sys.executable).parent / "hierfl"

TOPOLOGY = """
[federation]
name = "resume"
task = "digits"
model = "mlp"
algorithm = "scaffold"
cloud_rounds = 2
learning_rate = 0.1

[cloud]
address = "ipc://{dir}/cloud.ipc"

[[plants]]
name = "plant-a"
address = "ipc://{dir}/a.ipc"
[[plants.lines]]
name = "line-1"
devices = 1
"""


def start(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    topology = tmp_path / "t.toml"
    topology.write_text(TOPOLOGY.format(dir=tmp_path))
    return subprocess.run(
        [str(HIERFL), args[0], str(topology), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"PK\x03\x04 not really a zip", "not a readable edge state file"),
        (b"\x93NUMPY garbage", "not a readable edge state file"),
        (b"", "not a readable edge state file"),
    ],
)
def test_an_edge_refuses_a_damaged_state_file_in_one_line(tmp_path, content, why):
    state = tmp_path / "state"
    state.mkdir()
    (state / "edge-plant-a.npz").write_bytes(content)
    result = start(tmp_path, "edge", "--plant", "plant-a", "--state", str(state), "--resume")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{state / 'edge-plant-a.npz'}: {why}" in result.stderr
    assert "move it away to start this node afresh" in result.stderr


def test_an_edge_state_file_without_its_fields_is_refused(tmp_path):
    import numpy as np

    state = tmp_path / "state"
    state.mkdir()
    np.savez(state / "edge-plant-a.npz", round=3)
    result = start(tmp_path, "edge", "--plant", "plant-a", "--state", str(state), "--resume")
    assert result.returncode == 2 and "no late, residual in it" in result.stderr, result.stderr


def test_a_device_refuses_a_damaged_control_variate(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "device-plant-a.line-1.dev-001.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    result = start(
        tmp_path, "device", "--id", "plant-a/line-1/dev-001", "--state", str(state), "--resume"
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "not a readable control variate file" in result.stderr


def test_metrics_with_bytes_that_are_not_text_are_reconciled(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    good = json.dumps({"round": 1, "accuracy": 0.5})
    metrics.write_bytes(good.encode() + b"\n\xff\xfe\x00garbage\n" + b'{"round": 2, "accu')
    assert reconcile_metrics(metrics, 1, None)
    assert metrics.read_text() == good + "\n"
