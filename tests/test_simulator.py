"""The vectorized simulator against a plain per-device HierFAVG loop, plus determinism and outputs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierfl.core import rng
from hierfl.core.algorithms import DeviceData, build_algorithm
from hierfl.data.plan import make_plan
from hierfl.runs.checkpoint import load_params
from hierfl.sim.engine import init_global_model, simulate


def reference_hierfavg(topology, rounds):
    """HierFAVG written out plainly: a Python loop per device, numpy float64 averages.

    Each device trains with the algorithm's own `local_update` (the unit under test here
    is the hierarchy: who starts from which model, who is averaged with whom, by what weight).
    """
    plan = make_plan(topology)
    model, params = init_global_model(plan)
    federation = topology.federation
    algorithm = build_algorithm(model.apply, plan.task, topology, plan.shards.counts)
    local_update = jax.jit(algorithm.local_update)
    shards = plan.shards
    to64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)  # noqa: E731
    global_params = to64(params)
    for r in range(1, rounds + 1):
        edges = [global_params for _ in topology.plants]
        for e in range(federation.edge_rounds):
            new_edges = []
            for p, plant in enumerate(topology.plants):
                deltas, weights = [], []
                for device in plant.devices:
                    i = device.index
                    data = DeviceData(
                        jnp.asarray(shards.x[i]),
                        jnp.asarray(shards.y[i]),
                        jnp.int32(shards.counts[i]),
                    )
                    start = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), edges[p])
                    result = local_update(start, data, rng.device_key(federation.seed, r, e, i))
                    deltas.append(to64(result.delta))
                    weights.append(float(shards.counts[i]))
                mean = jax.tree.map(
                    lambda *d: sum(w * x for w, x in zip(weights, d)) / sum(weights), *deltas
                )
                new_edges.append(jax.tree.map(np.add, edges[p], mean))
            edges = new_edges
        totals = [
            float(shards.counts[[d.index for d in plant.devices]].sum())
            for plant in topology.plants
        ]
        edge_deltas = [jax.tree.map(np.subtract, edge, global_params) for edge in edges]
        mean = jax.tree.map(
            lambda *d: sum(w * x for w, x in zip(totals, d)) / sum(totals), *edge_deltas
        )
        global_params = jax.tree.map(np.add, global_params, mean)
    return global_params


def assert_params_close(actual, expected, rtol=2e-5, atol=2e-6):
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol, atol=atol)


def reference_flat_fedavg(topology, rounds):
    """Flat FedAvg over all devices, ignoring plants: one weighted mean of every device's delta."""
    plan = make_plan(topology)
    model, params = init_global_model(plan)
    federation = topology.federation
    local_update = jax.jit(
        build_algorithm(model.apply, plan.task, topology, plan.shards.counts).local_update
    )
    shards = plan.shards
    global_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    for r in range(1, rounds + 1):
        start = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), global_params)
        weighted = None
        for i in range(shards.num_devices):
            data = DeviceData(
                jnp.asarray(shards.x[i]), jnp.asarray(shards.y[i]), jnp.int32(shards.counts[i])
            )
            delta = local_update(start, data, rng.device_key(federation.seed, r, 0, i)).delta
            term = jax.tree.map(
                lambda d: float(shards.counts[i]) * np.asarray(d, np.float64), delta
            )
            weighted = term if weighted is None else jax.tree.map(np.add, weighted, term)
        total = float(shards.counts.sum())
        global_params = jax.tree.map(lambda g, w: g + w / total, global_params, weighted)
    return global_params


def test_one_plant_one_edge_round_equals_flat_fedavg(make_topology):
    topology = make_topology(plants=[[3, 2]], edge_rounds=1, cloud_rounds=2, partition="dirichlet")
    assert_params_close(simulate(topology).params, reference_flat_fedavg(topology, rounds=2))


def test_hierfavg_with_two_edge_rounds_matches_the_plain_loop(make_topology):
    topology = make_topology(plants=[[3], [2, 2]], edge_rounds=2, cloud_rounds=2)
    result = simulate(topology)
    assert_params_close(result.params, reference_hierfavg(topology, rounds=2))


def test_edge_rounds_change_the_result(make_topology):
    # Guard against a simulator that ignores edge_rounds: kappa2 = 2 must differ from 1.
    one = simulate(make_topology(plants=[[3], [3]], edge_rounds=1, cloud_rounds=1)).params
    two = simulate(make_topology(plants=[[3], [3]], edge_rounds=2, cloud_rounds=1)).params
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)))


def test_with_one_edge_round_the_hierarchy_is_invisible(make_topology):
    # kappa2 = 1: edge means weighted by edge totals = the flat weighted mean over all devices.
    topology = make_topology(
        plants=[[2, 2], [3]], edge_rounds=1, cloud_rounds=2, partition="dirichlet"
    )
    assert_params_close(simulate(topology).params, reference_flat_fedavg(topology, rounds=2))


def test_same_seed_same_model_bit_for_bit(make_topology):
    topology = make_topology(plants=[[3], [2]], edge_rounds=2, partition="dirichlet")
    a, b = simulate(topology), simulate(topology)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    c = simulate(topology.with_federation(seed=1))
    assert any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params))
    )


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_chunking_does_not_change_the_result(make_topology, chunk_size):
    topology = make_topology(plants=[[3], [2, 2]], edge_rounds=2)
    whole = simulate(topology, chunk_size=512).params
    chunked = simulate(topology, chunk_size=chunk_size).params
    assert_params_close(
        chunked, jax.tree.map(lambda a: np.asarray(a, np.float64), whole), rtol=1e-5, atol=1e-6
    )


def test_fedsgd_runs_and_learns(make_topology):
    result = simulate(
        make_topology(plants=[[4]], algorithm="fedsgd", learning_rate=0.5, cloud_rounds=15)
    )
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_run_dir_has_info_metrics_and_final_model(make_topology, tmp_path):
    topology = make_topology(plants=[[3], [2]], edge_rounds=2, cloud_rounds=3)
    result = simulate(topology, out=tmp_path / "run")
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["num_devices"] == 5 and info["task"] == "digits" and info["edge_rounds"] == 2
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2, 3]
    assert set(lines[0]["plant_accuracy"]) == {"plant-0", "plant-1"}
    saved = load_params(run / "model.npz")
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(result.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_bytes_per_tier_follow_the_hierarchy(make_topology):
    topology = make_topology(plants=[[3], [2]], edge_rounds=2, cloud_rounds=1)
    result = simulate(topology)
    model_bytes = sum(np.asarray(p).nbytes for p in jax.tree.leaves(result.params))
    assert model_bytes == (64 * 128 + 128 + 128 * 10 + 10) * 4
    sent = result.history[0]["bytes"]
    assert sent["device_to_edge"] == 5 * 2 * model_bytes  # 5 devices, 2 edge rounds
    assert sent["edge_to_cloud"] == 2 * model_bytes and sent["cloud_to_edge"] == 2 * model_bytes


def test_per_plant_accuracy_is_measured_on_each_plants_own_test_set(make_topology):
    topology = make_topology(plants=[[3], [2]], cloud_rounds=1)
    result = simulate(topology)
    plan, record = result.plan, result.history[0]
    logits = result.model.apply(result.params, jnp.asarray(plan.test.x))
    correct = np.asarray(jnp.argmax(logits, -1) == plan.test.y)
    for p, name in enumerate(topology.plant_names):
        assert record["plant_accuracy"][name] == pytest.approx(
            correct[plan.test.plant == p].mean(), abs=1e-6
        )
    assert record["accuracy"] == pytest.approx(correct.mean(), abs=1e-6)


def test_diverging_devices_are_rejected_and_never_corrupt_the_global_model(make_topology):
    # A learning rate of 1e30 makes every local update overflow to inf/NaN.
    topology = make_topology(plants=[[3], [2]], edge_rounds=2, cloud_rounds=2, learning_rate=1e30)
    plan = make_plan(topology)
    _, initial = init_global_model(plan)
    result = simulate(topology)
    assert [r["rejected_updates"] for r in result.history] == [5 * 2, 5 * 2]
    for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(initial)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert all(np.isfinite(r["loss"]) for r in result.history)


def test_screen_nonfinite_keeps_finite_results_untouched():
    from hierfl.core.algorithms import LocalResult, screen_nonfinite

    good = LocalResult({"w": jnp.array([1.0, -2.0])}, jnp.float32(7.0), jnp.float32(0.3))
    kept, ok = screen_nonfinite(good)
    assert bool(ok) and float(kept.weight) == 7.0
    np.testing.assert_array_equal(np.asarray(kept.delta["w"]), [1.0, -2.0])
    bad = LocalResult({"w": jnp.array([1.0, jnp.nan])}, jnp.float32(7.0), jnp.float32(0.3))
    dropped, ok = screen_nonfinite(bad)
    assert not bool(ok) and float(dropped.weight) == 0.0
    np.testing.assert_array_equal(np.asarray(dropped.delta["w"]), [0.0, 0.0])
