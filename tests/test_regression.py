"""Regression tasks end to end: metrics with a direction, target strata, records, reports, baselines.

A synthetic linear task (`y = x W + plant offset`, two outputs) is registered for the
tests; expected scores are recomputed with numpy from the model's own predictions, and
comparisons use hand-made histories.
"""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

import hierfl.data.tasks as tasks
from conftest import topology_text
from hierfl.data.partition import quantile_bins
from hierfl.data.plan import divide_plant, make_plan
from hierfl.data.scoring import ACCURACY, Metric, from_description, run_metric
from hierfl.data.tasks import PlantData, Task
from hierfl.data.tasks.base import mae, rmse, squared_error, target_bins
from hierfl.data.tasks.bearing_data import CLASSES, generate_plant
from hierfl.data.tasks.models import MLP
from hierfl.errors import DataError
from hierfl.runs.metrics import read_metrics, read_run_info
from hierfl.runs.report import write_report
from hierfl.sim.engine import simulate
from hierfl.studies.baselines import train_baselines, uplink_at_equal_accuracy
from hierfl.topology import TopologyError, parse_topology

W = np.array([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
TEST_PER_PLANT = 20


def linear_plants(requests, test_fraction, seed):
    for r in requests:
        rng = np.random.default_rng([seed, r.index])
        n = r.train_samples or 24 * r.num_devices
        x = rng.normal(size=(n + TEST_PER_PLANT, 4)).astype(np.float32)
        y = (x @ W + 0.5 * r.index).astype(np.float32)
        yield PlantData(x[:n], y[:n], x[n:], y[n:])


LINEAR = Task(
    name="linear-test",
    description="y = x W + offset",
    input_shape=(4,),
    class_names=(),
    models={"linear": lambda rngs: MLP(4, (), 2, rngs=rngs)},
    default_model="linear",
    make_plant_data=linear_plants,
    example_loss=squared_error,
    metrics=(rmse(unit="u", what="y"), mae(unit="u", what="y")),
    target_names=("a", "b"),
    strata=target_bins(3),
)


@pytest.fixture
def linear_task(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, LINEAR.name, LINEAR)
    return LINEAR


def linear_topology(make_topology, **kwargs):
    return make_topology(task=LINEAR.name, model="linear", plants=[[2], [1, 1]], **kwargs)


def test_simulate_records_each_metric_by_name(linear_task, make_topology, tmp_path):
    topology = linear_topology(make_topology, cloud_rounds=3, local_steps=5, learning_rate=0.05)
    result = simulate(topology, out=tmp_path / "run")
    record = result.history[-1]
    assert "accuracy" not in record and "plant_accuracy" not in record
    assert list(record)[1:7] == ["loss", "test_loss", "rmse", "mae", "plant_rmse", "plant_mae"]

    test = result.plan.test
    assert test.y.dtype == np.float32 and test.y.shape == (2 * TEST_PER_PLANT, 2)
    error = np.asarray(result.model.apply(result.params, jnp.asarray(test.x))) - test.y
    assert record["rmse"] == pytest.approx(math.sqrt(np.mean(error**2)), rel=1e-5)
    assert record["mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)
    for p, name in enumerate(("plant-0", "plant-1")):
        mine = error[test.plant == p]
        assert record["plant_rmse"][name] == pytest.approx(math.sqrt(np.mean(mine**2)), rel=1e-5)
        assert record["plant_mae"][name] == pytest.approx(np.mean(np.abs(mine)), rel=1e-5)
    assert result.history[-1]["rmse"] < result.history[0]["rmse"]  # it learns

    info = read_run_info(tmp_path / "run")
    assert info["metric"] == {
        "name": "rmse",
        "higher_is_better": False,
        "label": "RMSE of y (u)",
        "percent": False,
        "unit": "u",
        "root": True,
    }
    assert [r["rmse"] for r in read_metrics(tmp_path / "run")] == [
        r["rmse"] for r in result.history
    ]
    written = write_report(tmp_path / "run")
    assert [p.name for p in written] == ["rmse.png", "bytes.png", "loss.png", "report.md"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert (
        "Final global test RMSE of y (u)" in report
        and "%" not in report.split("## Communication")[0]
    )


def test_classification_runs_still_record_accuracy(make_topology, tmp_path):
    result = simulate(make_topology(plants=[[1]], cloud_rounds=1), out=tmp_path / "run")
    assert list(result.history[0])[:5] == [
        "round",
        "loss",
        "test_loss",
        "accuracy",
        "plant_accuracy",
    ]
    assert run_metric(read_run_info(tmp_path / "run")) == ACCURACY


def test_baselines_train_regression_pools(linear_task, make_topology):
    topology = linear_topology(make_topology, cloud_rounds=2, local_steps=5, learning_rate=0.05)
    central, local = train_baselines(make_plan(topology))
    assert set(central.final) >= {"rmse", "mae", "plant_rmse", "plant_mae"}
    assert central.final["rmse"] < central.history[0]["rmse"] or len(central.history) == 1
    assert len(local) == 2 and all(m.final["rmse"] > 0 for m in local)


def record(r, value, key="rmse"):
    return {"round": r, key: value, "bytes": {"edge_to_cloud": 10}, "devices": 4}


def test_equal_score_bytes_follow_a_lower_is_better_metric():
    metric = LINEAR.metric
    hierarchical = [record(r + 1, v) for r, v in enumerate([3.0, 2.0, 1.0])]
    flat = [record(r + 1, v) for r, v in enumerate([3.0, 2.5, 1.5, 1.2])]
    # Best RMSE each: 1.0 and 1.2; both reach the worse of the two, 1.2 (lower is better).
    uplink = uplink_at_equal_accuracy(hierarchical, flat, message_bytes=5, metric=metric)
    assert uplink.target == 1.2
    assert (uplink.hierarchical_round, uplink.hierarchical_bytes) == (3, 30)
    assert (uplink.flat_round, uplink.flat_bytes) == (4, 4 * 4 * 5)
    # The same numbers read as accuracies (higher is better): the target is min(3, 3).
    as_accuracy = uplink_at_equal_accuracy(
        [record(r["round"], r["rmse"], "accuracy") for r in hierarchical],
        [record(r["round"], r["rmse"], "accuracy") for r in flat],
        message_bytes=5,
    )
    assert as_accuracy.target == 3.0 and as_accuracy.hierarchical_round == 1


def test_metric_direction_format_and_description():
    error = Metric("rmse", higher_is_better=False, label="RMSE (h)", unit="h", root=True)
    assert error.reduce(16.0) == 4.0 and ACCURACY.reduce(0.25) == 0.25
    assert error.better(1.0, 2.0) and not error.better(2.0, 1.0) and not error.better(math.nan, 5.0)
    assert ACCURACY.better(0.9, 0.8) and error.reaches(1.0, 1.0) and not error.reaches(1.1, 1.0)
    assert error.best_index([3.0, 1.0, 1.0, 2.0]) == 1 and ACCURACY.best_index([0.1, 0.5, 0.5]) == 1
    assert error.format(12.345) == "12.3 h" and ACCURACY.format(0.7921) == "79.2%"
    assert error.format(float("inf")) == "diverged" and error.format(None) == "n/a"
    assert from_description(error.describe()) == error
    assert from_description(None) == ACCURACY  # run.json written before metrics were named


def test_quantile_bins_fill_bins_equally():
    np.testing.assert_array_equal(
        quantile_bins(np.arange(12.0)[::-1], 3), [2] * 4 + [1] * 4 + [0] * 4
    )
    assert quantile_bins(np.full(5, 7.0), 4).tolist() == [3] * 5  # ties share one bin
    assert quantile_bins(np.zeros(0), 2).shape == (0,)
    with pytest.raises(DataError):
        quantile_bins(np.arange(3.0), 0)


def test_dirichlet_skews_regression_devices_over_target_bins():
    text = topology_text(plants=[[6]], partition="dirichlet").replace(
        'partition = "dirichlet"', 'partition = "dirichlet"\nalpha = 0.1'
    )
    topology = parse_topology(text, "t.toml")
    y = np.random.default_rng(0).normal(size=(600, 2)).astype(np.float32)
    data = PlantData(np.zeros((600, 4), np.float32), y, y[:1], y[:1])
    devices = divide_plant(topology.plants[0], data, np.random.default_rng(1), target_bins(3))
    assert sum(len(d[1]) for d in devices) == 600
    edges = np.quantile(y.mean(axis=1), [1 / 3, 2 / 3])  # the three bins, recomputed
    shares = [
        np.bincount(np.searchsorted(edges, d[1].mean(axis=1), side="right"), minlength=3)
        / len(d[1])
        for d in devices
    ]
    assert max(s.max() for s in shares) > 0.8  # alpha = 0.1: some device holds mostly one bin


PLANT = """
[federation]
name = "t"
task = "bearing-fault"
cloud_rounds = 1
learning_rate = 0.1

[cloud]
address = "tcp://127.0.0.1:7000"

[[plants]]
name = "a"
address = "tcp://127.0.0.1:7001"
{classes}

[[plants.lines]]
name = "l"
devices = 2
"""


def test_a_plants_classes_are_read_and_checked():
    topology = parse_topology(PLANT.format(classes='classes = ["healthy", "ball"]'), "t.toml")
    assert topology.plants[0].classes == ("healthy", "ball")
    assert parse_topology(PLANT.format(classes=""), "t.toml").plants[0].classes is None
    for bad, problem in (
        ("classes = []", "plants[0].classes: expected a non-empty array"),
        ('classes = "ball"', "plants[0].classes: expected a non-empty array"),
        ('classes = ["ball", "ball"]', "plants[0].classes[1]: duplicate class 'ball'"),
        ("classes = [3]", "plants[0].classes[0]: expected a string"),
    ):
        with pytest.raises(TopologyError) as caught:
            parse_topology(PLANT.format(classes=bad), "t.toml")
        assert problem in str(caught.value), bad
    unknown = parse_topology(PLANT.format(classes='classes = ["healthy", "cage"]'), "t.toml")
    with pytest.raises(
        DataError, match=r"plants\[0\]\.classes: task 'bearing-fault' has no class 'cage'"
    ):
        make_plan(unknown)


def test_bearing_plant_limited_to_its_classes_is_balanced_over_them():
    _, y, _ = generate_plant(
        0, 0, 3, 10, 0.0, window=256, classes=(CLASSES.index("healthy"), CLASSES.index("ball"))
    )
    np.testing.assert_array_equal(np.bincount(y, minlength=4), [15, 0, 0, 15])
    with pytest.raises(DataError):
        generate_plant(0, 0, 3, 10, 0.0, window=256, classes=(4,))
    plan = make_plan(parse_topology(PLANT.format(classes='classes = ["outer", "inner"]'), "t.toml"))
    trained = np.concatenate([plan.shards.y[d, :n] for d, n in enumerate(plan.shards.counts)])
    assert set(np.unique(plan.test.y)) == {1, 2} and set(np.unique(trained)) == {1, 2}


def test_a_served_regression_model_answers_values_by_name(tmp_path):
    # energy-forecast's MLP (no data needed to export it): the artifact names its outputs,
    # `hierfl serve` serves them, `hierfl predict` prints one column per forecast hour.
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    import jax
    from test_inference_server import HIERFL, start, stop, wait_until_serving

    from hierfl.data.tasks.models import build_model
    from hierfl.inference.artifact import read_artifact, write_artifact
    from hierfl.inference.client import Client
    from hierfl.inference.export import export_model

    task = tasks.TASKS["energy-forecast"]
    model, params = build_model("mlp", task.models["mlp"], jax.random.key(0))
    path = write_artifact(
        tmp_path / "forecast.hfl", export_model(model, params, task, version=3, platforms=("cpu",))
    )
    meta = read_artifact(path).meta
    assert meta.class_names == () and meta.output_names == (
        "hour_21",
        "hour_22",
        "hour_23",
        "hour_24",
    )
    assert meta.output_shape == (4,)
    x = np.random.default_rng(0).normal(size=(2, 20)).astype(np.float32)
    expected = np.asarray(model.apply(params, jnp.asarray(x)))
    np.save(tmp_path / "days.npy", x)

    folder = Path(tempfile.mkdtemp(prefix="hfl-", dir="/tmp"))
    address, log = f"ipc://{folder}/serve.ipc", folder / "server.log"
    process = start("serve", str(path), "--bind", address, log=log)
    try:
        wait_until_serving(process, address, log)
        with Client(address, timeout=60) as client:
            assert client.info().output_names == meta.output_names
            np.testing.assert_allclose(client.predict(x).logits, expected, rtol=1e-5, atol=1e-6)
        shown = subprocess.run(
            [str(HIERFL), "predict", address, str(tmp_path / "days.npy")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        stop(process)
        shutil.rmtree(folder, ignore_errors=True)
    assert shown.returncode == 0, shown.stderr
    assert (
        "hour_21" in shown.stdout
        and "hour_24" in shown.stdout
        and "probability" not in shown.stdout
    )
    assert f"{expected[1, 3]:.4g}" in shown.stdout


def test_example_algorithm_names_parse():
    from hierfl.studies.comparison import ALTERNATIVES, parse_alternatives

    assert parse_alternatives("fedprox,fednova,scaffold,fedadam") == ALTERNATIVES
    assert parse_alternatives("none") == ()
    assert [a.algorithm for a in parse_alternatives(" fedadam ")] == [
        "fedavg"
    ]  # FedAdam: FedAvg with an Adam cloud step
    with pytest.raises(ValueError, match="unknown algorithm 'fedsgd'"):
        parse_alternatives("fedprox,fedsgd")


def test_results_json_is_strict_a_diverged_score_becomes_null(tmp_path):
    from hierfl.studies.comparison import finite_or_null

    results = {
        "rmse": float("inf"),
        "curve": [0.5, float("nan")],
        "plant": {"a": 1.0},
        "name": "x",
        "rounds": 3,
    }
    assert finite_or_null(results) == {
        "rmse": None,
        "curve": [0.5, None],
        "plant": {"a": 1.0},
        "name": "x",
        "rounds": 3,
    }
    json.dumps(finite_or_null(results), allow_nan=False)  # would raise on Infinity
