"""Smoke tests of the examples: each runs end to end on a reduced topology in a few rounds.

The expected byte counts and budgets are worked out by hand from the reduced topology and
the model's parameter count (SurfaceCNN: 3x3 convolutions 1->8, 8->16, 16->32 and a
64->7 head), not read back from the code under test.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hierfl.data.loading import load_topology, topology_task
from hierfl.data.tasks import TASKS

needs_aeon = pytest.mark.skipif(
    importlib.util.find_spec("aeon") is None, reason='needs pip install "hierfl[examples]"'
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SURFACE_CNN_BYTES = 4 * (
    (9 * 8 + 8) + (72 * 16 + 16) + (144 * 32 + 32) + (64 * 7 + 7)
)  # 6,343 float32

REDUCED_DEFECT_TOPOLOGY = """
[federation]
name = "defect-smoke"
task = "steel-defects"
model = "cnn"
cloud_rounds = 2
edge_rounds = 2
local_steps = 2
batch_size = 8
learning_rate = 0.1
seed = 0

[data]
partition = "dirichlet"
alpha = 0.5
samples_per_device = 14
test_fraction = 0.25

[cloud]
address = "tcp://127.0.0.1:7300"

[[plants]]
name = "mill-a"
address = "tcp://127.0.0.1:7310"
shift = 0.0

[[plants.lines]]
name = "line-1"
devices = 2

[[plants]]
name = "mill-b"
address = "tcp://127.0.0.1:7311"
shift = 1.0

[[plants.lines]]
name = "line-1"
devices = 1

[[plants.lines]]
name = "line-2"
devices = 1
"""


def load_example(name: str):
    """The example's run.py as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defect_detection_topology_is_three_non_iid_plants():
    topology = load_topology(EXAMPLES / "defect_detection" / "topology.toml")
    assert topology.federation.task == "steel-defects"
    assert len(topology.plants) == 3
    assert all(2 <= len(plant.lines) <= 3 for plant in topology.plants)
    assert len({plant.shift for plant in topology.plants}) == 3  # feature shift per plant
    assert all(
        line.data.partition == "dirichlet" for plant in topology.plants for line in plant.lines
    )


def test_defect_detection_runs_end_to_end(tmp_path):
    topology = tmp_path / "reduced.toml"
    topology.write_text(REDUCED_DEFECT_TOPOLOGY)
    out = tmp_path / "out"
    run = load_example("defect_detection")
    results = run.main(["--topology", str(topology), "--out", str(out), "--quiet"])

    for name in ("results.md", "results.png", "samples.png"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text()) == results

    # 2 plants, 4 devices; 2 cloud rounds of 2 edge rounds of 2 steps of 8 examples.
    assert results["federation"]["model_bytes"] == SURFACE_CNN_BYTES
    assert results["budget"]["examples"] == 4 * 2 * 2 * 2 * 8
    assert results["federation"]["train_examples"] == 4 * 14
    assert (
        results["hierarchical"]["edge_to_cloud_bytes"] == 2 * 2 * SURFACE_CNN_BYTES
    )  # rounds x edges
    assert (
        results["flat_fedavg"]["edge_to_cloud_bytes"] == 4 * 4 * SURFACE_CNN_BYTES
    )  # 4 rounds x 4 devices
    assert results["centralized"]["steps"] == 4 * 2 * 2 * 2
    assert results["centralized"]["raw_image_bytes"] == 4 * 14 * 32 * 32 * 4
    assert {m: results["local_only"]["models"][m]["steps"] for m in ("mill-a", "mill-b")} == {
        "mill-a": 16,
        "mill-b": 16,
    }
    for method in ("hierarchical", "flat_fedavg", "centralized", "local_only"):
        assert 0.0 <= results[method]["accuracy"] <= 1.0, method
        assert set(results[method]["plant_accuracy"]) == {"mill-a", "mill-b"}, method
    assert results["local_only"]["accuracy"] == pytest.approx(
        sum(results["local_only"]["models"][m]["accuracy"] for m in ("mill-a", "mill-b")) / 2
    )
    uplink = results["uplink_at_equal_accuracy"]
    assert uplink["hierarchical_bytes"] % (2 * SURFACE_CNN_BYTES) == 0  # whole rounds of 2 edges
    assert uplink["flat_bytes"] % (4 * SURFACE_CNN_BYTES) == 0  # whole rounds of 4 devices
    assert "| centralized (upper bound) |" in (out / "results.md").read_text()


def test_defect_detection_readme_quotes_the_committed_results():
    folder = EXAMPLES / "defect_detection"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    committed = (folder / "results.md").read_text(encoding="utf-8")
    table = [line for line in committed.splitlines() if line.startswith("|")]
    assert len(table) > 8
    for line in table:
        assert line in readme, line
    for figure in ("results.png", "samples.png"):
        assert (folder / figure).exists() and f"]({figure})" in readme


# --- equipment failure ---------------------------------------------------------------------

ENVELOPE_CNN_ONE_OUTPUT_BYTES = 4 * (
    (7 * 16 + 16) + (7 * 16 * 32 + 32) + 2 * (7 * 32 * 32 + 32) + (64 * 1 + 1)
)


def reduced(
    task: str, model: str, plants: list[tuple[str, list[int], str]], samples: int, port: int
) -> str:
    """A two-round topology: `plants` are (name, devices per line, classes TOML array)."""
    text = f"""
[federation]
name = "{task}-smoke"
task = "{task}"
model = "{model}"
cloud_rounds = 2
edge_rounds = 2
local_steps = 2
batch_size = 4
learning_rate = 0.05
seed = 0

[data]
partition = "iid"
{f"samples_per_device = {samples}" if samples else ""}
test_fraction = 0.25

[cloud]
address = "tcp://127.0.0.1:{port}"
"""
    for i, (name, lines, classes) in enumerate(plants):
        text += f'\n[[plants]]\nname = "{name}"\naddress = "tcp://127.0.0.1:{port + 1 + i}"\nclasses = {classes}\n'
        for j, devices in enumerate(lines):
            text += f'\n[[plants.lines]]\nname = "line-{j}"\ndevices = {devices}\n'
    return text


def check_common(results: dict, plants: set[str], devices: int, model_bytes: int) -> None:
    """What every problem's results hold, counted from the reduced topology (2 rounds x 2 x 2 steps of 4)."""
    metric = results["metric"]["name"]
    assert results["federation"]["model_bytes"] == model_bytes
    assert results["budget"]["examples"] == devices * 2 * 2 * 2 * 4
    assert results["hierarchical"]["edge_to_cloud_bytes"] == 2 * len(plants) * model_bytes
    assert results["flat_fedavg"]["edge_to_cloud_bytes"] == 4 * devices * model_bytes
    for method in ("hierarchical", "flat_fedavg", "centralized", "local_only"):
        assert set(results[method][f"plant_{metric}"]) == plants, method


def load_script(folder: str, name: str):
    """An example's script `name`.py as a module."""
    spec = importlib.util.spec_from_file_location(
        f"example_{folder}_{name}", EXAMPLES / folder / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_equipment_failure_topologies_are_three_plants_with_unshared_faults():
    fault = load_topology(EXAMPLES / "equipment_failure" / "topology.toml")
    assert fault.federation.task == "bearing_tasks:bearing_fault"  # the example's own task
    plants = load_script("equipment_failure", "write_data").PLANTS
    assert list(plants) == list(fault.plant_names)
    assert len({plant.shift for plant in plants.values()}) == 3
    kinds = [set(plant.faults) for plant in plants.values()]
    assert set().union(*kinds) == {"healthy", "outer", "inner", "ball"}
    assert all(len(k) < 4 for k in kinds)  # no plant sees every fault
    rul = load_topology(EXAMPLES / "equipment_failure" / "rul.toml")
    assert rul.federation.task == "bearing-rul" and len(rul.plants) == 3
    assert len({plant.shift for plant in rul.plants}) == 3
    seen = [set(plant.classes) for plant in rul.plants]
    assert any(
        kind not in other for plant in seen for kind in plant for other in seen
    )  # some plant lacks a fault


def copy_fault_example(folder: Path, topology: str | None = None) -> Path:
    """The fault problem's task module and topology (or `topology`'s text) in `folder`,
    as a user's project holds them; returns the topology's path."""
    source = EXAMPLES / "equipment_failure"
    (folder / "bearing_tasks.py").write_text((source / "bearing_tasks.py").read_text())
    path = folder / "topology.toml"
    path.write_text(topology if topology is not None else (source / "topology.toml").read_text())
    return path


def test_equipment_failure_machines_each_have_their_own_file(tmp_path):
    from hierfl.data.device_files import read_device

    topology_path = copy_fault_example(tmp_path)
    write_data = load_script("equipment_failure", "write_data")
    written = write_data.write_machine_files(topology_path, windows=8)

    topology = load_topology(topology_path)
    machines = [tmp_path / "data" / d.plant / d.line / f"{d.name}.npz" for d in topology.devices]
    tests = [tmp_path / "data" / plant / "test.npz" for plant in topology.plant_names]
    assert len(set(machines)) == 22 and written == machines + tests
    assert all(path.is_file() for path in written)
    for device in topology.devices:
        mine = np.load(tmp_path / "data" / device.plant / device.line / f"{device.name}.npz")
        faults = set(write_data.PLANTS[device.plant].faults)
        assert mine["x"].shape[1:] == (2048,) and mine["x"].dtype == np.float32
        assert 0 < len(mine["y"]) < 8 and set(mine["y"]) <= faults  # some held out
        # hierfl reads this machine's file and no other for it.
        examples = read_device(topology, topology_task(topology), device)
        np.testing.assert_array_equal(examples.x, mine["x"])
    for plant, path in zip(topology.plant_names, tests):
        assert set(np.load(path)["y"]) == set(write_data.PLANTS[plant].faults)
    # Deterministic in the seed, and nothing is rewritten while every file is there.
    before = np.load(machines[5])["x"]
    assert write_data.write_missing_files(topology_path, windows=8) == []
    machines[5].unlink()
    assert len(write_data.write_missing_files(topology_path, windows=8)) == 25
    np.testing.assert_array_equal(np.load(machines[5])["x"], before)


def test_equipment_failure_runs_end_to_end(tmp_path):
    # The RUL problem only: the fault problem is the classification path the defect and
    # appliance smoke tests run (its plant classes are tested in test_regression.py), and
    # each bearing problem costs about 30 s of compiling on 2 cores.
    rul = tmp_path / "rul.toml"
    rul.write_text(
        reduced(
            "bearing-rul",
            "cnn1d",
            [("a", [2], '["outer"]'), ("b", [1], '["inner", "ball"]')],
            10,
            7420,
        )
    )
    out = tmp_path / "out"
    run = load_example("equipment_failure")
    results = run.main(
        [
            "--only",
            "rul",
            "--rul-topology",
            str(rul),
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "runs"),
            "--algorithms",
            "none",
            "--quiet",
        ]
    )

    assert list(results) == ["rul"]
    assert json.loads((out / "results_rul.json").read_text()) == results["rul"]
    assert (out / "results_rul.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_common(results["rul"], {"a", "b"}, 3, ENVELOPE_CNN_ONE_OUTPUT_BYTES)
    rul_results = results["rul"]
    assert rul_results["metric"] == {
        "name": "rmse",
        "higher_is_better": False,
        "label": "RMSE of RUL (h)",
        "percent": False,
        "unit": "h",
        "root": True,
    }
    for method in ("hierarchical", "flat_fedavg", "centralized", "local_only"):
        assert 0 < rul_results[method]["mae"] <= rul_results[method]["rmse"] < 150, method
    uplink = rul_results["uplink_at_equal_accuracy"]
    assert uplink["hierarchical_bytes"] % (2 * ENVELOPE_CNN_ONE_OUTPUT_BYTES) == 0
    text = (out / "results_rul.md").read_text()
    assert (
        "| RMSE of RUL (h), all plants | MAE, all plants |" in text
        and "equal RMSE" in text
        and "%" not in text
    )
    assert "](results_rul.png)" in text
    # The hierarchical run is kept for `hierfl export`, with windows to send to the server.
    run_dir = tmp_path / "runs" / "bearing-rul-smoke"
    assert {"run.json", "metrics.jsonl", "model.npz", "predict.npy"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert np.load(run_dir / "predict.npy").shape[1:] == (2048, 1)


SPECTRUM_NET_BYTES = 4 * ((33 * 64 + 64) + (64 * 64 + 64) + (64 * 4 + 4))
"""bearing_tasks.EnvelopeSpectrumNet: 33 Welch bins -> 64 -> 64 -> 4 classes, float32."""

REDUCED_FAULT_FILES = """
[federation]
name = "fault-files-smoke"
task = "bearing_tasks:bearing_fault"
cloud_rounds = 2
edge_rounds = 2
local_steps = 2
batch_size = 4
learning_rate = 0.05
seed = 0

[data]
path = "data/{plant}/{line}/{device}.npz"
test_data = "data/{plant}/test.npz"

[cloud]
address = "tcp://127.0.0.1:7480"

[[plants]]
name = "plant-north"
address = "tcp://127.0.0.1:7481"

[[plants.lines]]
name = "line-1"
devices = ["spindle-1", "spindle-2"]

[[plants]]
name = "plant-south"
address = "tcp://127.0.0.1:7482"

[[plants.lines]]
name = "line-1"
devices = ["spindle-1"]
"""


def test_equipment_failure_fault_trains_from_the_machines_files(tmp_path):
    topology = copy_fault_example(tmp_path, REDUCED_FAULT_FILES)
    out = tmp_path / "out"
    results = load_example("equipment_failure").main(
        [
            "--only",
            "fault",
            "--topology",
            str(topology),
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "runs"),
            "--algorithms",
            "none",
            "--quiet",
        ]
    )

    # run.py wrote the three machines' files and the two plants' test files first.
    data = tmp_path / "data"
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.npz")) == [
        "plant-north/line-1/spindle-1.npz",
        "plant-north/line-1/spindle-2.npz",
        "plant-north/test.npz",
        "plant-south/line-1/spindle-1.npz",
        "plant-south/test.npz",
    ]
    fault = results["fault"]
    check_common(fault, {"plant-north", "plant-south"}, 3, SPECTRUM_NET_BYTES)
    # 64 windows per machine, classes balanced in the machine; of each class's 22 or 21
    # windows 6 or 5 (a quarter, rounded) are held out: 16 per machine.
    assert fault["federation"]["train_examples"] == 3 * 48
    assert fault["federation"]["test_examples"] == {"plant-north": 32, "plant-south": 16}
    assert fault["federation"]["task"] == "bearing_tasks:bearing_fault"
    for method in ("hierarchical", "flat_fedavg", "centralized", "local_only"):
        assert 0.0 <= fault[method]["accuracy"] <= 1.0, method
    text = (out / "results_fault.md").read_text()
    assert (
        "| plant-north | plant-south |" in text
    )  # the topology says nothing of the plants' faults
    run_dir = tmp_path / "runs" / "fault-files-smoke"
    assert np.load(run_dir / "predict.npy").shape == (4, 2048)  # one window of each class
    assert sorted(np.load(run_dir / "predict_truth.npy")) == [0, 1, 2, 3]


# --- energy forecasting --------------------------------------------------------------------

FORECAST_MLP_BYTES = 4 * ((20 * 64 + 64) + (64 * 64 + 64) + (64 * 4 + 4))
SERIES_CNN_BYTES = 4 * (
    (7 * 16 + 16) + (7 * 16 * 32 + 32) + 2 * (7 * 32 * 32 + 32) + (64 * 10 + 10)
)


def test_energy_forecast_topologies_split_seasons_and_appliances():
    forecast = load_topology(EXAMPLES / "energy_forecast" / "topology.toml")
    assert forecast.federation.task == "energy-forecast"
    assert [plant.classes for plant in forecast.plants] == [
        ("winter",),
        ("summer",),
        ("winter", "summer"),
    ]
    appliances = load_topology(EXAMPLES / "energy_forecast" / "appliances.toml")
    kinds = [set(plant.classes) for plant in appliances.plants]
    assert set().union(*kinds) == set(
        TASKS["appliance-id"].class_names
    )  # together they know all ten
    assert all(len(k) < 10 for k in kinds)  # alone, none does


@needs_aeon
def test_energy_forecast_runs_end_to_end(tmp_path):
    forecast = tmp_path / "forecast.toml"
    forecast.write_text(
        reduced(
            "energy-forecast",
            "mlp",
            [("w", [2], '["winter"]'), ("s", [1, 1], '["summer"]')],
            0,
            7440,
        )
    )
    appliances = tmp_path / "appliances.toml"
    appliances.write_text(
        reduced(
            "appliance-id",
            "cnn1d",
            [("o", [1], '["laptop", "lamp"]'), ("h", [1], '["lamp", "microwave"]')],
            0,
            7460,
        )
    )
    out = tmp_path / "out"
    run = load_example("energy_forecast")
    results = run.main(
        [
            "--topology",
            str(forecast),
            "--appliances-topology",
            str(appliances),
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "runs"),
            "--algorithms",
            "fedprox,fedadam",
            "--quiet",
        ]
    )

    check_common(results["forecast"], {"w", "s"}, 4, FORECAST_MLP_BYTES)
    check_common(results["appliances"], {"o", "h"}, 2, SERIES_CNN_BYTES)
    fed = results["forecast"]["federation"]
    # The winter site holds out a quarter of its share of the 1,096 days' winter half, no more.
    assert fed["train_examples"] + sum(fed["test_examples"].values()) == 1096
    assert (
        results["forecast"]["metric"]["name"] == "rmse"
        and "mae" in results["forecast"]["hierarchical"]
    )
    assert results["appliances"]["metric"]["name"] == "accuracy"
    assert (
        "| RMSE of standardised load, all sites | MAE, all sites |"
        in (out / "results_forecast.md").read_text()
    )
    for problem in ("forecast", "appliances"):
        assert json.loads((out / f"results_{problem}.json").read_text()) == results[problem]
    assert np.load(tmp_path / "runs" / "energy-forecast-smoke" / "predict.npy").shape[1:] == (20,)
    # The hierarchy trained again with each algorithm asked for; a best one is named only if it beats FedAvg.
    for problem in ("forecast", "appliances"):
        algorithms = results[problem]["algorithms"]
        assert list(algorithms["runs"]) == ["FedProx (mu = 0.001)", "FedAdam (server lr 0.1)"]
        assert all(len(r["curve"]["examples"]) == 2 for r in algorithms["runs"].values())
        assert algorithms["best"] in (None, *algorithms["runs"])
        assert (
            "Other algorithms on the same hierarchy" in (out / f"results_{problem}.md").read_text()
        )
    assert (
        "algorithms"
        not in run.main(
            [
                "--only",
                "forecast",
                "--topology",
                str(forecast),
                "--out",
                str(tmp_path / "none"),
                "--run-dir",
                str(tmp_path / "runs"),
                "--algorithms",
                "none",
                "--quiet",
            ]
        )["forecast"]
    )


@pytest.mark.parametrize(
    "folder, problems",
    [("equipment_failure", ("fault", "rul")), ("energy_forecast", ("forecast", "appliances"))],
)
def test_readmes_quote_the_committed_results(folder, problems):
    readme = (EXAMPLES / folder / "README.md").read_text(encoding="utf-8")
    for problem in problems:
        committed = (EXAMPLES / folder / f"results_{problem}.md").read_text(encoding="utf-8")
        table = [line for line in committed.splitlines() if line.startswith("|")]
        assert len(table) > 8
        for line in table:
            assert line in readme, line
        assert (
            f"](results_{problem}.png)" in readme
            and (EXAMPLES / folder / f"results_{problem}.png").exists()
        )
    top = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    assert f"](examples/{folder}/)" in top
