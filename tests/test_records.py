"""Run records are written once for both engines (`hierfl.runs.records`).

`hierfl launch` and `hierfl simulate` of the same topology must write the same metric
names and values and the same `run.json` (apart from start time and runtime settings), for
a classification and a regression task; `run.json` plans the rounds asked for; and a
launched run's report shows the task's own metric.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_runtime_launch import HIERFL

from conftest import write_topology
from hierfl.data.loading import load_topology
from hierfl.privacy.config import rounds_to_run
from hierfl.runs.metrics import read_metrics, read_run_info
from hierfl.runs.report import write_report
from hierfl.runtime.cloud import CloudNode
from hierfl.sim.engine import simulate

TASKS = {
    "digits": ('task = "digits"\nmodel = "mlp"', "accuracy"),
    "bearing-rul": ('task = "bearing-rul"', "rmse"),
    # SCAFFOLD: every message also carries a variate, which both engines must count alike.
    "digits-scaffold": ('task = "digits"\nmodel = "mlp"\nalgorithm = "scaffold"', "accuracy"),
}
# Launched in the comparison below: a regression task, and a classification task whose
# messages carry SCAFFOLD's variates (plain digits adds nothing these two do not check).
COMPARED = ("bearing-rul", "digits-scaffold")
SCORES = {
    "digits": ("accuracy", "plant_accuracy"),
    "bearing-rul": ("rmse", "mae", "plant_rmse", "plant_mae"),
    "digits-scaffold": ("accuracy", "plant_accuracy"),
}


def topology_for(folder: Path, task: str, rounds: int) -> Path:
    """`write_topology`'s 2 plants x 2 devices, training `task` for `rounds` cloud rounds."""
    path = write_topology(folder, name=task, rounds=rounds, heartbeat_timeout=30.0)
    path.write_text(path.read_text().replace('task = "digits"\nmodel = "mlp"', TASKS[task][0]))
    return path


def launch(topology: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(HIERFL), "launch", str(topology), "--out", str(out), "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "160"},
    )
    logs = "".join(
        f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((out / "logs").glob("*.log"))
    )
    assert result.returncode == 0, result.stderr + logs
    return result


def assert_close(launched, simulated, where: str) -> None:
    if isinstance(simulated, dict):
        assert set(launched) == set(simulated), where
        for key in simulated:
            assert_close(launched[key], simulated[key], f"{where}.{key}")
    else:
        assert launched == pytest.approx(simulated, rel=1e-4, abs=1e-5), where


@pytest.mark.parametrize("task", COMPARED)
def test_launch_records_what_simulate_records(folder, task):  # noqa: F811
    # The file plans 3 rounds; both engines are asked for 2.
    topology = topology_for(folder, task, rounds=3)
    launched, simulated = folder / "launch", folder / "simulate"
    result = launch(topology, launched, "--rounds", "2")
    simulate(topology, rounds=2, out=simulated)

    shared = ("round", "loss", "test_loss", *SCORES[task], "bytes", "devices")
    launch_records, sim_records = read_metrics(launched), read_metrics(simulated)
    assert [r["round"] for r in launch_records] == [r["round"] for r in sim_records] == [1, 2]
    for got, want in zip(launch_records, sim_records, strict=True):
        assert set(shared) <= set(got) and set(shared) <= set(want)
        scores = {k for k in want if k in ("accuracy", "rmse", "mae") or k.startswith("plant_")}
        assert {k for k in got if k in ("accuracy", "rmse", "mae") or k.startswith("plant_")} == (
            scores
        )
        for key in shared:
            assert_close(got[key], want[key], f"round {want['round']} {key}")

    info, sim_info = read_run_info(launched), read_run_info(simulated)
    assert set(info) - set(sim_info) == {"runtime"}
    for key in sim_info.keys() - {"started"}:
        assert info[key] == sim_info[key], key
    assert info["cloud_rounds"] == 2
    assert info["metric"]["name"] == TASKS[task][1]

    metric = TASKS[task][1]
    write_report(launched)
    report = (launched / "report.md").read_text()
    assert "2 rounds recorded of 2 planned" in report
    assert (launched / f"{'accuracy' if metric == 'accuracy' else metric}.png").exists()
    if metric == "accuracy":
        assert "Final global test accuracy **" in report
        assert "final test accuracy" in result.stdout
    else:
        assert "accuracy" not in report.lower()
        final = launch_records[-1]["rmse"]
        assert f"Final global test RMSE of RUL (h) **{final:.3g} h**" in report
        assert "final test RMSE of RUL (h)" in result.stdout


def test_the_cloud_plans_the_rounds_asked_for(folder):  # noqa: F811
    topology = topology_for(folder, "digits", rounds=10)
    out = folder / "cloud"
    process = subprocess.Popen(
        [str(HIERFL), "cloud", str(topology), "--out", str(out), "--rounds", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "run.json").exists() and time.monotonic() < deadline:
            assert process.poll() is None, "the cloud exited"
            time.sleep(0.2)
        time.sleep(0.5)  # written whole by now
        assert json.loads((out / "run.json").read_text())["cloud_rounds"] == 3
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_run_json_plans_the_rounds_the_privacy_budget_allows(folder):  # noqa: F811
    path = topology_for(folder, "digits", rounds=50)
    path.write_text(
        path.read_text()
        + '\n[privacy]\ndp = "device"\nclip_norm = 0.5\nnoise_multiplier = 1.5\n'
        + "target_epsilon = 16.0\n"
    )
    topology = load_topology(path)
    allowed = rounds_to_run(topology, 50)
    assert 0 < allowed < 50
    node = CloudNode(topology, folder / "cloud")
    try:
        assert read_run_info(folder / "cloud")["cloud_rounds"] == allowed
    finally:
        node.writer.close()
        node.mode.close()
        node.socket.close(linger=0)
        node.context.term()
    simulate(topology, out=folder / "sim")
    assert read_run_info(folder / "sim")["cloud_rounds"] == allowed
    assert [r["round"] for r in read_metrics(folder / "sim")] == list(range(1, allowed + 1))
