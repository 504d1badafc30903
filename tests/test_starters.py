"""The new user's path, end to end as real processes: `hierfl new` -> `simulate` -> `launch`
(each device process given only its own folder) -> `export` -> `serve` -> predictions.

And every starter template trains in the simulator to better than its chance level.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from hierfl.data import census
from hierfl.data.files import Schema, read_examples
from hierfl.data.loading import load_topology, topology_task
from hierfl.errors import HierflError, InferenceError
from hierfl.inference.client import Client
from hierfl.runs.checkpoint import flatten_params, load_params
from hierfl.starters import write_starter

HIERFL = Path(sys.executable).parent / "hierfl"
ENV = {**os.environ, "COLUMNS": "200"}


@pytest.fixture
def folder():
    """A short directory (ipc:// paths are limited to about 100 characters)."""
    path = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    yield path
    if not os.environ.get("HIERFL_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


def hierfl(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(HIERFL), *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )
    assert result.returncode == 0, f"hierfl {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def on_sockets_of(project: Path, folder: Path, rounds: int) -> str:
    """The starter's topology text with ipc:// addresses in `folder` and `rounds` cloud rounds."""
    text = (project / "topology.toml").read_text()
    text = re.sub(r'"tcp://127\.0\.0\.1:57(\d\d)"', rf'"ipc://{folder}/n\1.ipc"', text)
    return re.sub(r"cloud_rounds = \d+", f"cloud_rounds = {rounds}", text)


def test_a_new_project_trains_in_both_engines_and_is_served(folder):
    project = folder / "press"
    hierfl("new", str(project), "--template", "tabular")
    # Each press's file moves to a folder of its own ("its machine"); the shared data tree
    # keeps only the plants' test files, which the edges read.
    machines = folder / "machines"
    for csv in sorted((project / "data").glob("plant-*/line-*/*.csv")):
        plant, line, name = csv.parts[-3], csv.parts[-2], csv.stem
        target = machines / f"{plant}.{line}.{name}" / "cycles.csv"
        target.parent.mkdir(parents=True)
        os.replace(csv, target)
    text = on_sockets_of(project, folder, rounds=3).replace(
        'path = "data/{plant}/{line}/{device}.csv"',
        f'path = "{machines}/{{plant}}.{{line}}.{{device}}/cycles.csv"',
    )
    text += '\n[runtime]\ndevices_per_process = "line"\n'
    topology_path = project / "topology.toml"
    topology_path.write_text(text)
    assert not list((project / "data").glob("plant-*/line-*/*.csv"))

    hierfl("simulate", str(topology_path), "--out", str(folder / "sim"), "--quiet")
    launched = hierfl("launch", str(topology_path), "--out", str(folder / "rt"), "--quiet")
    assert "stayed out" not in launched.stdout
    simulated = flatten_params(load_params(folder / "sim" / "model.npz"))
    trained_flat = flatten_params(trained := load_params(folder / "rt" / "model.npz"))
    difference = max(float(np.max(np.abs(simulated[k] - trained_flat[k]))) for k in simulated)
    assert difference <= 1e-5
    logs = folder / "rt" / "logs"
    for host in sorted(logs.glob("devices-*.log")):  # each device loaded its own file only
        for plant, line, name, count in re.findall(
            r"(plant-\w)/(line-\d)/(press-\d): joined .* \((\d+) examples\)", host.read_text()
        ):
            rows = (machines / f"{plant}.{line}.{name}" / "cycles.csv").read_text().count("\n")
            assert int(count) == rows - 1
    records = [
        json.loads(line) for line in (folder / "rt" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in records] == [1, 2, 3]

    artifact = folder / "press.hfl"
    hierfl("export", str(folder / "rt"), "--out", str(artifact))
    address = f"ipc://{folder}/serve.ipc"
    with open(folder / "serve.log", "w") as log:
        server = subprocess.Popen(
            [str(HIERFL), "serve", str(artifact), "--bind", address],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        topology = load_topology(topology_path)
        task = topology_task(topology)
        test = read_examples(
            task.loader,
            project / "data" / "plant-a" / "test.csv",
            Schema(task.input_shape, task.class_names),
        )
        found = census.from_description(json.loads((folder / "rt" / "census.json").read_text()))
        assert found.standardizes and found.examples == sum(
            int(n) for *_, n in re.findall(r"(\S+): joined .* \((\d+) examples\)", logs_text(logs))
        )
        expected = expected_classes(task, trained, found.standardize(test.x))
        with Client(address, timeout=5.0) as client:
            info = wait_for_server(client, server, folder / "serve.log")
            assert (info.task, info.version, info.input_shape) == ("press-failure", 3, (6,))
            assert info.features == (
                "temperature_c",
                "vibration_rms",
                "pressure_bar",
                "motor_current_a",
                "cycle_time_s",
                "oil_quality",
            )
        # The plant's test file as it is (its label column too): predict picks the features.
        predicted = hierfl("predict", address, str(project / "data" / "plant-a" / "test.csv"))
        served = re.findall(r"│\s+(\d+) │ (ok|failure)\s+│", predicted.stdout)
        assert [int(i) for i, _ in served] == list(range(len(test.x)))
        names = np.array(task.class_names)
        np.testing.assert_array_equal([label for _, label in served], names[expected])
        assert (expected == test.y).mean() == pytest.approx(
            records[-1]["plant_accuracy"]["plant-a"]
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def logs_text(logs: Path) -> str:
    return "".join(path.read_text() for path in sorted(logs.glob("devices-*.log")))


def expected_classes(task, params, x: np.ndarray) -> np.ndarray:
    """The trained model's classes for `x`, computed here in-process."""
    from hierfl.data.tasks.models import build_model

    model, _ = build_model("model", task.models["model"], __import__("jax").random.key(0))
    return np.argmax(np.asarray(model.apply(params, x)), axis=-1)


def wait_for_server(client: Client, server: subprocess.Popen, log: Path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, log.read_text()
        try:
            return client.info()
        except InferenceError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


@pytest.mark.parametrize(
    ("template", "better_than"),
    [("tabular", "majority"), ("images", "majority"), ("timeseries", "last_hour")],
)
def test_every_starter_trains_better_than_chance_in_the_simulator(tmp_path, template, better_than):
    import hierfl as api

    write_starter(tmp_path / template, template)
    topology = load_topology(tmp_path / template / "topology.toml")
    task = topology_task(topology)
    result = api.simulate(topology.with_federation(cloud_rounds=10), progress=False)
    final = result.history[-1]
    tests = [
        read_examples(task.loader, tmp_path / template / plant.test_data, schema_of(task))
        for plant in topology.plants
    ]
    y = np.concatenate([t.y for t in tests])
    if better_than == "majority":
        # Always answering the majority class: its F1 is 2p / (1 + p), the others' 0.
        share = np.bincount(y).max() / len(y)
        chance_macro_f1 = 2 * share / (1 + share) / len(task.class_names)
        assert final["macro_f1"] > chance_macro_f1 + 0.15, (final["macro_f1"], chance_macro_f1)
        assert final["accuracy"] > share, (final["accuracy"], share)
    else:
        x = np.concatenate([t.x for t in tests])
        persistence = float(np.sqrt(np.mean((x[:, -1] - y[:, 0]) ** 2)))
        assert final["rmse"] < persistence, (final["rmse"], persistence)


def schema_of(task) -> Schema:
    return Schema(task.input_shape, task.class_names, task.target_names)


def test_new_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(HierflError, match="exists and is not an empty folder"):
        write_starter(tmp_path, "tabular")
    assert (tmp_path / "keep.txt").read_text() == "mine"
