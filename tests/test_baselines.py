"""Tests of hierfl.studies.baselines: centralized and local-only training, flat FedAvg's traffic.

References are independent of the code under test: the simulator (a one-device federation
is plain SGD on that device's data), budgets counted by hand from the topology, a plan
whose other plants' data are poisoned with NaN (a model that reads them cannot stay
finite), and hand-made histories for the byte comparison.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from hierfl.data.plan import make_plan
from hierfl.sim.engine import simulate
from hierfl.studies.baselines import (
    flat_fedavg,
    flat_uplink_bytes,
    mean_final_accuracy,
    model_bytes,
    train_baselines,
    train_centralized,
    train_local_only,
    uplink_at_equal_accuracy,
)

MLP_BYTES = (64 * 128 + 128 + 128 * 10 + 10) * 4  # the digits MLP: 64-128-10, float32


def leaves(params):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def test_centralized_on_one_device_is_what_the_simulator_trains(make_topology):
    # One plant, one device: the edge and cloud averages are of one update, so the
    # federation is plain SGD on the device's data, segment by segment. Same budget:
    # 2 rounds x 2 edge rounds x 3 local steps of 8.
    topology = make_topology(
        plants=[[1]], edge_rounds=2, cloud_rounds=2, local_steps=3, batch_size=8
    )
    federated = simulate(topology)
    central = train_centralized(make_plan(topology))
    assert central.budget.steps == 12 and central.budget.examples == 96
    for a, b in zip(leaves(central.params), leaves(federated.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert central.final["accuracy"] == pytest.approx(federated.history[-1]["accuracy"], abs=1e-9)


def test_budgets_count_the_devices_steps(make_topology):
    # plant-0: lines of 2 and 1 devices; plant-1: 3 devices. Per round a device takes
    # edge_rounds x local_steps = 2 x 3 = 6 steps: plant pools 3 x 6 = 18, centralized 36.
    topology = make_topology(
        plants=[[2, 1], [3]], edge_rounds=2, cloud_rounds=2, local_steps=3, batch_size=8
    )
    plan = make_plan(topology)
    central, local = train_baselines(plan)
    assert [r["steps"] for r in central.history] == [36, 72]
    assert [r["examples_seen"] for r in central.history] == [288, 576]
    assert central.plants == ("plant-0", "plant-1")
    for result, plant in zip(local, ("plant-0", "plant-1")):
        assert result.plants == (plant,)
        assert [r["steps"] for r in result.history] == [18, 36]
    counts = plan.shards.counts
    assert central.train_examples == counts.sum()
    assert (local[0].train_examples, local[1].train_examples) == (
        counts[:3].sum(),
        counts[3:].sum(),
    )


def test_local_only_reads_only_its_own_plant(make_topology):
    topology = make_topology(plants=[[2], [2]], cloud_rounds=2, local_steps=4)
    plan = make_plan(topology)
    x = plan.shards.x.copy()
    for device in (2, 3):  # plant-1's devices: every real training image becomes NaN
        x[device, : plan.shards.counts[device]] = np.nan
    poisoned = dataclasses.replace(plan, shards=dataclasses.replace(plan.shards, x=x))

    clean_local = train_local_only(plan)
    central, local = train_baselines(poisoned)
    for a, b in zip(leaves(local[0].params), leaves(clean_local[0].params), strict=True):
        np.testing.assert_array_equal(a, b)  # plant-0's model never saw plant-1's data
    assert all(np.isfinite(a).all() for a in leaves(local[0].params))
    # The poison does reach whoever reads plant-1's data.
    assert not all(np.isfinite(a).all() for a in leaves(local[1].params))
    assert not all(np.isfinite(a).all() for a in leaves(central.params))


def test_local_only_models_are_tested_on_every_plant(make_topology):
    topology = make_topology(
        plants=[[2], [1, 1], [2]], cloud_rounds=3, local_steps=10, batch_size=16
    )
    plan = make_plan(topology)
    local = train_local_only(plan)
    test_counts = np.bincount(plan.test.plant)
    for result in local:
        final = result.final
        assert set(final["plant_accuracy"]) == {"plant-0", "plant-1", "plant-2"}
        per_plant = np.array(
            [final["plant_accuracy"][p] for p in ("plant-0", "plant-1", "plant-2")]
        )
        assert final["accuracy"] == pytest.approx(
            float(per_plant @ test_counts / test_counts.sum())
        )
    assert mean_final_accuracy(local) == pytest.approx(
        np.mean([r.final["accuracy"] for r in local])
    )


def test_centralized_learns_the_digits(make_topology):
    # 4 devices x 3 rounds x 10 steps of 16 = 1,920 examples, 1.3 epochs of the 1,438
    # training digits: a 64-128-10 MLP is far above chance (10 %) by then.
    topology = make_topology(plants=[[2], [2]], cloud_rounds=3, local_steps=10, batch_size=16)
    central = train_centralized(make_plan(topology))
    accuracy = [r["accuracy"] for r in central.history]
    assert accuracy[-1] > 0.8
    assert central.history[-1]["loss"] < central.history[0]["loss"]


# --- flat FedAvg and the edge->cloud comparison ------------------------------------------


def test_flat_fedavg_keeps_the_device_work_and_sends_every_update(make_topology):
    topology = make_topology(plants=[[3], [2]], edge_rounds=2, cloud_rounds=1, local_steps=3)
    flat = flat_fedavg(topology)
    assert (flat.federation.edge_rounds, flat.federation.cloud_rounds) == (1, 2)
    assert flat.federation.local_steps == 3 and flat.plants == topology.plants
    result = simulate(flat)
    assert model_bytes(result.params) == MLP_BYTES
    assert len(result.history) == 2
    for record in result.history:
        # 5 devices each send one update to the cloud per round.
        assert (
            flat_uplink_bytes(record, MLP_BYTES)
            == 5 * MLP_BYTES
            == record["bytes"]["device_to_edge"]
        )


def history(accuracies, edge_to_cloud=None, devices=None):
    return [
        {"round": r, "accuracy": a, "devices": devices, "bytes": {"edge_to_cloud": edge_to_cloud}}
        for r, a in enumerate(accuracies, start=1)
    ]


def test_uplink_at_equal_accuracy_by_hand():
    hierarchical = history([0.5, 0.7, 0.9, 0.88], edge_to_cloud=300)  # 3 edges x 100-byte model
    flat = history([0.4, 0.6, 0.8, 0.95], devices=18)  # 18 devices x 100 bytes per round
    # Default target: the best both reach, min(0.9, 0.95) = 0.9. The hierarchy first reaches
    # it in round 3 (3 x 300 = 900 bytes), flat FedAvg in round 4 (4 x 1,800 = 7,200 bytes).
    at = uplink_at_equal_accuracy(hierarchical, flat, message_bytes=100)
    assert (at.target, at.hierarchical_round, at.hierarchical_bytes) == (0.9, 3, 900)
    assert (at.flat_round, at.flat_bytes, at.saving) == (4, 7200, 8.0)
    # A lower target: round 2 (600 bytes) against round 3 (5,400 bytes).
    at = uplink_at_equal_accuracy(hierarchical, flat, message_bytes=100, target=0.7)
    assert (at.hierarchical_bytes, at.flat_bytes, at.saving) == (600, 5400, 9.0)
    # A target one run never reaches has no round and no saving.
    at = uplink_at_equal_accuracy(hierarchical, flat, message_bytes=100, target=0.93)
    assert (at.hierarchical_round, at.hierarchical_bytes, at.saving) == (None, None, None)
    assert (at.flat_round, at.flat_bytes) == (4, 7200)
