"""Smoke tests of the examples: each runs end to end on a reduced topology in a few rounds.

The expected byte counts and budgets are worked out by hand from the reduced topology and
the model's parameter count (SurfaceCNN: 3x3 convolutions 1->8, 8->16, 16->32 and a
64->7 head), not read back from the code under test.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hierfl.loading import load_topology

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SURFACE_CNN_BYTES = 4 * ((9 * 8 + 8) + (72 * 16 + 16) + (144 * 32 + 32) + (64 * 7 + 7))  # 6,343 float32

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
    assert all(line.data.partition == "dirichlet" for plant in topology.plants for line in plant.lines)


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
    assert results["hierarchical"]["edge_to_cloud_bytes"] == 2 * 2 * SURFACE_CNN_BYTES  # rounds x edges
    assert results["flat_fedavg"]["edge_to_cloud_bytes"] == 4 * 4 * SURFACE_CNN_BYTES  # 4 rounds x 4 devices
    assert results["centralized"]["steps"] == 4 * 2 * 2 * 2
    assert results["centralized"]["raw_image_bytes"] == 4 * 14 * 32 * 32 * 4
    assert {m: results["local_only"]["models"][m]["steps"] for m in ("mill-a", "mill-b")} == {"mill-a": 16, "mill-b": 16}
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
