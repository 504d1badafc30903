"""A user's own task and data: `hierfl.task`, `task = "module:attribute"`, per-device files.

Each test writes a small user project into a folder, as a user would: a task module, CSV
files per device and per plant, and a topology naming them, then loads it the way every
command does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import hierfl
from hierfl.data.loading import load_topology, topology_task
from hierfl.data.plan import held_out_examples, make_plan
from hierfl.errors import DataError, HierflError
from hierfl.runtime.device import STAYED_OUT
from hierfl.runtime.device_data import OwnFiles
from hierfl.runtime.launch import Launch
from hierfl.runtime.node import runtime_problem
from hierfl.topology import TopologyError

HIERFL = Path(sys.executable).parent / "hierfl"

TASK_MODULE = """
from flax import nnx
import hierfl

class Net(nnx.Module):
    def __init__(self, spec, outputs, *, rngs):
        self.layer = nnx.Linear(spec.shape[0], outputs, rngs=rngs)
    def __call__(self, x):
        return self.layer(x)

gauges = hierfl.task(
    "gauges",
    classes=("ok", "failure"),
    model=lambda rngs, spec: Net(spec, {outputs}, rngs=rngs),
    data=hierfl.csv(("a", "b", "c"), label="failure"),
    standardize={standardize},
)
not_a_task = 42
"""

TOPOLOGY = """
[federation]
name = "gauges"
task = "{task}"
algorithm = "{algorithm}"
cloud_rounds = 2
local_steps = 2
batch_size = 4
learning_rate = 0.1
seed = 0

[data]
{data}

[cloud]
address = "tcp://127.0.0.1:7200"

[[plants]]
name = "plant-a"
address = "tcp://127.0.0.1:7201"
[[plants.lines]]
name = "line-1"
devices = ["gauge-1", "gauge-2"]

[[plants]]
name = "plant-b"
address = "tcp://127.0.0.1:7202"
[[plants.lines]]
name = "line-1"
devices = ["gauge-1"]
"""
DATA = 'path = "data/{plant}/{line}/{device}.csv"\ntest_data = "data/{plant}/test.csv"'
DEVICES = ("plant-a/line-1/gauge-1", "plant-a/line-1/gauge-2", "plant-b/line-1/gauge-1")


def rows(rng: np.random.Generator, count: int) -> list[str]:
    x = rng.normal(size=(count, 3)).round(3)
    labels = np.where(x[:, 0] + x[:, 1] > 0, "failure", "ok")
    return [f"{a},{b},{c},{label}" for (a, b, c), label in zip(x, labels)]


def write_csv(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["a,b,c,failure", *lines]) + "\n")
    return path


def write_project(
    folder: Path,
    *,
    task: str = "gauge_tasks:gauges",
    algorithm: str = "fedavg",
    data: str = DATA,
    outputs: int = 2,
    module: str = "gauge_tasks",
    standardize: bool = False,
) -> Path:
    """A user project in `folder`: task module, a CSV per device and per plant, topology.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(
        TASK_MODULE.format(outputs=outputs, standardize=standardize)
    )
    rng = np.random.default_rng(0)
    for n, device in enumerate(DEVICES):
        write_csv(folder / "data" / f"{device}.csv", rows(rng, 10 + 5 * n))
    for plant in ("plant-a", "plant-b"):
        write_csv(folder / "data" / plant / "test.csv", rows(rng, 8))
    path = folder / "topology.toml"
    path.write_text(TOPOLOGY.format(task=task, algorithm=algorithm, data=data))
    return path


def problems(path: Path) -> tuple[str, ...]:
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    return caught.value.problems


def read_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=str)
    return table[:, :3].astype(np.float32), (table[:, 3] == "failure").astype(np.int32)


def test_the_plan_of_a_file_task_holds_each_device_file_and_each_plant_test_file(tmp_path):
    topology = load_topology(write_project(tmp_path))
    task = topology_task(topology)
    assert (task.name, task.class_names, task.input_shape, task.reads_files) == (
        "gauges",
        ("ok", "failure"),
        (3,),
        True,
    )
    plan = make_plan(topology)
    assert plan.shards.counts.tolist() == [10, 15, 20]
    for d, device in enumerate(DEVICES):
        x, y = read_rows(tmp_path / "data" / f"{device}.csv")
        count = plan.shards.counts[d]
        np.testing.assert_array_equal(plan.shards.x[d, :count], x)
        np.testing.assert_array_equal(plan.shards.y[d, :count], y)
    x_b, y_b = read_rows(tmp_path / "data" / "plant-b" / "test.csv")
    only_b = held_out_examples(topology, [1])
    np.testing.assert_array_equal(only_b.x, x_b)
    np.testing.assert_array_equal(only_b.y, y_b)
    assert only_b.plant.tolist() == [1] * 8
    assert plan.test.plant.tolist() == [0] * 8 + [1] * 8


def test_a_device_reads_only_its_own_file(tmp_path):
    topology = load_topology(write_project(tmp_path))
    task = topology_task(topology)
    mine = topology.device("plant-a/line-1/gauge-2")
    for device in DEVICES:  # every other device's file is gone: this device does not need them
        if device != mine.id:
            (tmp_path / "data" / f"{device}.csv").unlink()
    x, y, count = OwnFiles(topology, task).examples(mine)
    want_x, want_y = read_rows(tmp_path / "data" / f"{mine.id}.csv")
    assert (count, x.shape, y.shape) == (15, (16, 3), (16,))  # padded to a power of two
    np.testing.assert_array_equal(x[:count], want_x)
    np.testing.assert_array_equal(y[:count], want_y)
    assert not x[count:].any() and not y[count:].any()
    with pytest.raises(DataError) as missing:
        OwnFiles(topology, task).examples(topology.device("plant-a/line-1/gauge-1"))
    assert str(missing.value).startswith("device plant-a/line-1/gauge-1: ")
    assert "gauge-1.csv" in str(missing.value)


def test_data_override_names_a_path_on_the_device_machine(tmp_path):
    topology = load_topology(write_project(tmp_path))
    moved = tmp_path / "machine" / "gauge-2" / "log.csv"
    moved.parent.mkdir(parents=True)
    os.replace(tmp_path / "data" / "plant-a" / "line-1" / "gauge-2.csv", moved)
    source = OwnFiles(topology, topology_task(topology), str(tmp_path / "machine/{device}/log.csv"))
    _, _, count = source.examples(topology.device("plant-a/line-1/gauge-2"))
    assert count == 15


def test_bad_rows_are_refused_naming_device_file_row_and_column(tmp_path):
    path = write_project(tmp_path)
    bad = tmp_path / "data" / "plant-a" / "line-1" / "gauge-2.csv"
    lines = bad.read_text().splitlines()
    lines[4] = "0.5,abc,1.0,ok"  # data row 4
    bad.write_text("\n".join(lines) + "\n")
    other = tmp_path / "data" / "plant-b" / "line-1" / "gauge-1.csv"
    other.write_text(other.read_text().replace(",ok\n", ",broken\n", 1))
    with pytest.raises(DataError) as caught:
        make_plan(load_topology(path))
    message = str(caught.value)
    assert message.startswith("2 data problems:"), message
    assert "device plant-a/line-1/gauge-2: " in message and "row 4, column 'b'" in message
    assert str(bad) in message
    assert "device plant-b/line-1/gauge-1: " in message and "'broken' is not a class" in message


def test_on_bad_rows_drop_drops_and_counts(tmp_path):
    path = write_project(tmp_path, data=DATA + '\non_bad_rows = "drop"')
    bad = tmp_path / "data" / "plant-a" / "line-1" / "gauge-1.csv"
    lines = bad.read_text().splitlines()
    lines[2] = "nan,0.1,0.2,ok"
    bad.write_text("\n".join(lines) + "\n")
    assert make_plan(load_topology(path)).shards.counts.tolist() == [9, 15, 20]


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        ("no_such_module:gauges", "task module 'no_such_module' not found"),
        ("gauge_tasks:nothing", "module 'gauge_tasks' ("),
        ("gauge_tasks:not_a_task", "task 'gauge_tasks:not_a_task' is a int, not a task"),
        ("gauge tasks:gauges", "'gauge tasks' is not a module name"),
        ("press", "unknown task 'press': name a bundled task"),
    ],
)
def test_a_task_import_string_that_does_not_resolve_is_a_topology_problem(tmp_path, task, reason):
    found = problems(write_project(tmp_path, task=task))
    assert len(found) == 1 and found[0].startswith("federation.task: "), found
    assert reason in found[0], found


def test_a_task_module_that_raises_is_reported_with_its_error(tmp_path):
    path = write_project(tmp_path)
    (tmp_path / "gauge_tasks.py").write_text("import hierfl\nraise RuntimeError('no licence')\n")
    (found,) = problems(path)
    assert found == (
        "federation.task: importing task module 'gauge_tasks' failed: RuntimeError: no licence"
    )


def test_a_model_whose_outputs_do_not_fit_the_classes_is_refused(tmp_path):
    (found,) = problems(write_project(tmp_path, outputs=3))
    assert found == (
        "federation.model: model 'model' of task 'gauges' outputs shape (3,) per example; "
        "the task has 2 classes (ok, failure), so it must output (2,)"
    )


def test_where_data_is_must_suit_the_task(tmp_path):
    assert problems(write_project(tmp_path / "a", data="")) == (
        "data.path: task 'gauges' reads each device's files: say where, e.g. "
        '[data] path = "data/{plant}/{line}/{device}.csv"',
        "data.test_data: task 'gauges' evaluates on each plant's held-out files: say where, "
        'e.g. [data] test_data = "data/{plant}/test.csv"',
    )
    generated = problems(write_project(tmp_path / "b", task="digits"))
    assert generated == (
        "data.path: task 'digits' generates its data; a path is for a task that reads each "
        "device's files",
        "data.test_data: task 'digits' generates its data, test data included",
    )
    assert problems(write_project(tmp_path / "c", data='path = "d/{machine}.csv"'))[0] == (
        "data.path: unknown placeholder {machine} in 'd/{machine}.csv' (use {plant}, {line}, {device})"
    )


def test_two_projects_with_a_task_module_of_the_same_name_each_get_their_own(tmp_path):
    first = load_topology(write_project(tmp_path / "one", outputs=2))
    second_path = write_project(tmp_path / "two", outputs=2)
    (tmp_path / "two" / "gauge_tasks.py").write_text(
        TASK_MODULE.format(outputs=2, standardize=False).replace('"gauges",', '"gauges-two",')
    )
    second = load_topology(second_path)
    assert topology_task(first).name == "gauges"
    assert topology_task(second).name == "gauges-two"


def test_the_runtime_asks_for_the_secure_aggregation_bound_only_devices_could_know(tmp_path):
    path = write_project(tmp_path)
    text = path.read_text().replace('devices = ["gauge-1"]', 'devices = ["gauge-1", "gauge-2"]')
    path.write_text(text + "\n[privacy]\nsecure_aggregation = true\n")
    problem = runtime_problem(load_topology(path))
    assert problem is not None and "declare that bound (e.g. secagg_max_examples = " in problem
    path.write_text(text + SECURE)
    assert runtime_problem(load_topology(path)) is None
    fednova = load_topology(write_project(tmp_path / "fednova", algorithm="fednova"))
    assert runtime_problem(fednova) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ("ok", "bad"), "targets": ("t",)}, "give exactly one of classes="),
        ({"classes": ("ok",)}, "classes= must be at least 2 non-empty names"),
        ({"classes": "ok"}, "must be a sequence of names, not the string 'ok'"),
        ({"classes": ("ok", "bad"), "input_shape": None}, "input_shape is unknown"),
        ({"classes": ("ok", "bad"), "data": "data.csv"}, "data= must be a loader"),
        ({"classes": ("ok", "bad"), "model": "mlp"}, "model 'model' must be a function"),
    ],
)
def test_hierfl_task_says_what_is_wrong(kwargs, message):
    arguments = {
        "model": lambda rngs, spec: None,
        "data": lambda path: (np.zeros((1, 3)), np.zeros(1)),
        "input_shape": (3,),
        **kwargs,
    }
    with pytest.raises((ValueError, TypeError)) as caught:
        hierfl.task("t", **arguments)
    assert message in str(caught.value)


def test_a_device_process_with_bad_data_stays_out_and_says_why(tmp_path):
    path = write_project(tmp_path)
    # No edge is listening: the device waits start_timeout (at most a minute) for its
    # "out" message to leave, then exits.
    path.write_text(path.read_text() + "\n[runtime]\nstart_timeout = 2.0\n")
    bad = tmp_path / "data" / "plant-a" / "line-1" / "gauge-1.csv"
    bad.write_text("a,b,failure\n1,2,ok\n")
    result = subprocess.run(
        [str(HIERFL), "device", str(path), "--id", "plant-a/line-1/gauge-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == STAYED_OUT, result.stderr
    assert "plant-a/line-1/gauge-1: stays out: device plant-a/line-1/gauge-1: " in result.stderr
    assert f"{bad}: missing column 'c'" in result.stderr


def test_data_for_a_task_that_generates_its_data_is_refused():
    result = subprocess.run(
        [str(HIERFL), "device", "demo", "--id", "plant-a/line-1/dev-001", "--data", "x.csv"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 2
    assert "--data: task 'digits' generates its data" in result.stderr


def test_the_launcher_lets_a_device_that_stayed_out_go_and_names_it(tmp_path):
    topology = load_topology(write_project(tmp_path))
    launch = Launch(topology, str(tmp_path / "topology.toml"), tmp_path / "run")
    launch.logs.mkdir(parents=True)
    line = "plant-a/line-1/gauge-1: stays out: device plant-a/line-1/gauge-1: x.csv: no such file"
    (launch.logs / "device-plant-a.line-1.gauge-1.log").write_text(f"2026 ERROR {line}\n")
    launch.processes["device-plant-a.line-1.gauge-1"] = subprocess.Popen(
        [sys.executable, "-c", f"raise SystemExit({STAYED_OUT})"]
    )
    launch.processes["device-plant-a.line-1.gauge-1"].wait()
    assert launch.failed_node() is None
    assert launch.stayed_out() == ["device plant-a/line-1/gauge-1: x.csv: no such file"]
    launch.processes["edge-plant-a"] = subprocess.Popen(
        [sys.executable, "-c", f"raise SystemExit({STAYED_OUT})"]
    )
    launch.processes["edge-plant-a"].wait()
    assert launch.failed_node() == "edge-plant-a"  # only devices may stay out


def test_a_launch_trains_without_the_device_whose_data_is_bad_and_the_metrics_name_it():
    """A device whose file has a cell that is no number stays out; one whose file has an
    empty and a NaN row drops both (on_bad_rows = "drop") and trains; the records say so."""
    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))  # short: ipc:// paths
    try:
        path = write_project(folder)
        text = path.read_text().replace("tcp://127.0.0.1:72", f"ipc://{folder}/n")
        text = text.replace("test_data = ", 'on_bad_rows = "drop"\ntest_data = ')
        path.write_text(text + "\n[runtime]\nmin_device_participation = 0.5\n")
        bad = folder / "data" / "plant-a" / "line-1" / "gauge-2.csv"
        bad.write_text(bad.read_text().replace("\n", "\nx,1,1,ok\n", 1))  # not a number
        dropped = folder / "data" / "plant-b" / "line-1" / "gauge-1.csv"
        dropped.write_text(dropped.read_text().replace("\n", "\n,,,\n1,nan,1,ok\n", 1))
        result = subprocess.run(
            [str(HIERFL), "launch", str(path), "--out", str(folder / "run"), "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "300"},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        reason = f"device plant-a/line-1/gauge-2: {bad}: row 1, column 'a': "
        assert f"stayed out: {reason}" in result.stdout
        records = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").open()]
        assert [r["round"] for r in records] == [1, 2]
        for record in records:
            assert record["devices_out"]["plant-a"]["plant-a/line-1/gauge-2"].startswith(reason)
            assert record["rows_dropped"] == {"plant-b": {"plant-b/line-1/gauge-1": 2}}
            assert record["devices_answered"] == {"plant-a": [1], "plant-b": [1]}
            assert 0.0 <= record["accuracy"] <= 1.0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_hierfl_error_is_what_a_bad_project_raises(tmp_path):
    with pytest.raises(HierflError):
        load_topology(write_project(tmp_path, task="gauge_tasks:nothing"))


def test_a_device_may_say_where_its_own_data_is(tmp_path):
    path = write_project(tmp_path)
    moved = tmp_path / "elsewhere" / "g1.csv"
    moved.parent.mkdir()
    os.replace(tmp_path / "data" / "plant-b" / "line-1" / "gauge-1.csv", moved)
    text = path.read_text().replace(
        'devices = ["gauge-1"]', f'devices = [{{ name = "gauge-1", data = "{moved}" }}]'
    )
    path.write_text(text)
    topology = load_topology(path)
    device = topology.device("plant-b/line-1/gauge-1")
    assert topology.data_path(device) == str(moved)
    assert make_plan(topology).shards.counts.tolist() == [10, 15, 20]
    path.write_text(text.replace(f'data = "{moved}"', 'data = "x/{machine}.csv", colour = 1'))
    assert problems(path) == (
        "plants[1].lines[0].devices[0].colour: unknown key (allowed: data, name)",
        "plants[1].lines[0].devices[0].data: unknown placeholder {machine} in 'x/{machine}.csv' "
        "(use {plant}, {line}, {device})",
    )


def test_the_census_standardizes_with_the_pooled_mean_and_std(tmp_path):
    topology = load_topology(write_project(tmp_path, standardize=True))
    plan = make_plan(topology)
    rows = np.concatenate(
        [read_rows(tmp_path / "data" / f"{device}.csv")[0] for device in DEVICES]
    ).astype(np.float64)
    assert plan.census.examples == len(rows) == 45
    np.testing.assert_allclose(plan.census.mean, rows.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(plan.census.std, rows.std(axis=0), rtol=1e-5)
    first = plan.shards.x[0, : plan.shards.counts[0]]
    raw = read_rows(tmp_path / "data" / f"{DEVICES[0]}.csv")[0]
    np.testing.assert_allclose(first, (raw - rows.mean(axis=0)) / rows.std(axis=0), atol=1e-5)
    x_test, _ = read_rows(tmp_path / "data" / "plant-a" / "test.csv")
    np.testing.assert_allclose(
        plan.test.x[:8], (x_test - rows.mean(axis=0)) / rows.std(axis=0), atol=1e-5
    )


def test_a_standardized_run_exports_a_model_that_is_sent_raw_readings(tmp_path):
    from hierfl.inference.compiled import compile_artifact
    from hierfl.inference.export import export_run

    path = write_project(tmp_path, standardize=True)
    result = hierfl.simulate(path, out=tmp_path / "run")
    described = json.loads((tmp_path / "run" / "census.json").read_text())
    assert described["examples"] == 45 and len(described["mean"]) == 3
    artifact = export_run(tmp_path / "run", platforms=("cpu",))
    assert artifact.meta.preprocessing["standardize"] == described
    x_raw, _ = read_rows(tmp_path / "data" / "plant-b" / "test.csv")
    served = compile_artifact(artifact).predict(x_raw)
    scaled = (x_raw - np.float32(described["mean"])) / np.float32(described["std"])
    expected = np.asarray(result.model.apply(result.params, scaled))
    np.testing.assert_allclose(served, expected, atol=1e-5)


SECURE = "\n[privacy]\nsecure_aggregation = true\nsecagg_max_examples = 100\n"


@pytest.mark.parametrize("variant", ["scaffold", "fednova", "secure-aggregation"])
def test_launch_on_devices_own_files_trains_the_model_simulate_trains(variant):
    """Devices that read only their own files: the runtime's census (counts and sums up the
    tree, mean and std down) gives what the simulator computes from every row, with
    standardized inputs and SCAFFOLD; and FedNova's effective step count, with plant-b's
    line running 5 local steps to plant-a's 2 (45 examples: (2 x 25 + 5 x 20) / 45).
    Secure aggregation encodes weights against the topology's declared bound."""
    from hierfl.runs.checkpoint import flatten_params, load_params

    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    try:
        algorithm = variant.replace("secure-aggregation", "fedavg")
        path = write_project(folder, algorithm=algorithm, standardize=variant == "scaffold")
        text = path.read_text().replace("tcp://127.0.0.1:72", f"ipc://{folder}/n")
        if variant == "fednova":
            text = text.replace('devices = ["gauge-1"]', 'devices = ["gauge-1"]\nlocal_steps = 5')
        if variant == "secure-aggregation":  # secure aggregation needs 2 devices per plant
            text = (
                text.replace('devices = ["gauge-1"]', 'devices = ["gauge-1", "gauge-2"]') + SECURE
            )
            rng = np.random.default_rng(1)
            write_csv(folder / "data" / "plant-b" / "line-1" / "gauge-2.csv", rows(rng, 12))
        path.write_text(text)
        hierfl.simulate(path, out=folder / "sim")
        result = subprocess.run(
            [str(HIERFL), "launch", str(path), "--out", str(folder / "rt"), "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        if variant != "secure-aggregation":
            simulated = json.loads((folder / "sim" / "census.json").read_text())
            launched = json.loads((folder / "rt" / "census.json").read_text())
            assert launched["examples"] == simulated["examples"] == 45
        if variant == "scaffold":
            np.testing.assert_allclose(launched["mean"], simulated["mean"], rtol=1e-6)
            np.testing.assert_allclose(launched["std"], simulated["std"], rtol=1e-6)
        if variant == "fednova":
            assert launched["effective_steps"] == pytest.approx((2 * 25 + 5 * 20) / 45)
        a = flatten_params(load_params(folder / "sim" / "model.npz"))
        b = flatten_params(load_params(folder / "rt" / "model.npz"))
        assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) <= 1e-5
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_device_over_the_declared_secure_aggregation_bound_stays_out(tmp_path):
    path = write_project(tmp_path)
    text = path.read_text().replace('devices = ["gauge-1"]', 'devices = ["gauge-1", "gauge-2"]')
    path.write_text(text + SECURE.replace("100", "14"))
    write_csv(
        tmp_path / "data" / "plant-b" / "line-1" / "gauge-2.csv", rows(np.random.default_rng(1), 12)
    )
    topology = load_topology(path)
    source = OwnFiles(topology, topology_task(topology))
    assert source.examples(topology.device("plant-a/line-1/gauge-1"))[2] == 10
    with pytest.raises(DataError) as caught:
        source.examples(topology.device("plant-a/line-1/gauge-2"))
    assert str(caught.value) == (
        "device plant-a/line-1/gauge-2: 15 examples, more than privacy.secagg_max_examples = 14 "
        "(secure aggregation encodes each weight as a fraction of that bound); raise the bound"
    )
