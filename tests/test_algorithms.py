"""FedAvg's pure functions against references computed by hand or with plain numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hierfl.core import rules
from hierfl.core.algorithms import (
    DeviceData,
    Summary,
    apply_summary,
    edge_result,
    fedavg,
    fedsgd,
    mean_delta,
)
from hierfl.data.tasks.base import cross_entropy
from hierfl.topology import TierRule


def linear_apply(params, x):
    return x @ params["w"] + params["b"]


def test_the_mean_rule_is_the_hand_computed_weighted_mean():
    # Three devices with deltas 1, 2, 4 (every coordinate) and 10, 30, 60 examples:
    # weighted mean = (10*1 + 30*2 + 60*4) / 100 = 3.1.
    deltas = jnp.array([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]])
    summary = rules.reduce(TierRule(), deltas, jnp.array([10.0, 30.0, 60.0]))
    assert float(summary.weight) == 100.0
    np.testing.assert_allclose(np.asarray(summary.delta_sum), [310.0, 310.0])
    np.testing.assert_allclose(np.asarray(mean_delta(summary)), [3.1, 3.1], rtol=1e-6)


def test_segment_reduce_sums_per_edge_and_drops_padding():
    deltas = jnp.array([[1.0], [2.0], [3.0], [100.0]])
    # Device 3 is padding: segment id 2 == num_segments, so it must vanish.
    summary = rules.segment_reduce(
        (TierRule(), TierRule()),
        deltas,
        jnp.array([1.0, 1.0, 2.0, 5.0]),
        jnp.array([0, 1, 1, 2]),
        2,
    )
    np.testing.assert_allclose(np.asarray(summary.weight), [1.0, 3.0])
    np.testing.assert_allclose(np.asarray(summary.delta_sum)[:, 0], [1.0, 2.0 + 6.0])
    means = summary.delta_sum[:, 0] / summary.weight
    np.testing.assert_allclose(np.asarray(means), [1.0, 8.0 / 3.0], rtol=1e-6)


def test_segment_reduce_clips_each_row_by_its_edges_rule():
    deltas = jnp.array([[3.0, 4.0], [3.0, 4.0], [0.3, 0.4]])
    edge_rules = (TierRule(clip_norm=1.0), TierRule())
    summary = rules.segment_reduce(edge_rules, deltas, jnp.ones(3), jnp.array([0, 1, 0]), 2)
    # Edge 0 clips [3, 4] (norm 5) to [0.6, 0.8] and keeps [0.3, 0.4]; edge 1 does not clip.
    np.testing.assert_allclose(np.asarray(summary.delta_sum), [[0.9, 1.2], [3.0, 4.0]], rtol=1e-6)
    for e, rows in [(0, [0, 2]), (1, [1])]:
        one = rules.reduce(edge_rules[e], deltas[jnp.array(rows)], jnp.ones(len(rows)))
        np.testing.assert_allclose(
            np.asarray(summary.delta_sum[e]), np.asarray(one.delta_sum), rtol=1e-6
        )


def test_summaries_compose_across_tiers():
    # Summing device summaries per edge, then the edges, equals summing all devices at once.
    rng = np.random.default_rng(0)
    deltas = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    weights = jnp.asarray(rng.integers(1, 50, 6), jnp.float32)
    flat = rules.reduce(TierRule(), deltas, weights)
    per_edge = rules.segment_reduce(
        (TierRule(),) * 3, deltas, weights, jnp.array([0, 0, 1, 1, 1, 2]), 3
    )
    edge_means = per_edge.delta_sum / per_edge.weight[:, None]
    two_tier = rules.reduce(TierRule(), edge_means, per_edge.weight)
    np.testing.assert_allclose(
        np.asarray(two_tier.delta_sum), np.asarray(flat.delta_sum), rtol=1e-5
    )
    assert float(two_tier.weight) == float(flat.weight)


def test_mean_delta_of_an_empty_summary_is_zero_not_nan():
    empty = Summary({"w": jnp.zeros(3)}, jnp.float32(0.0))
    np.testing.assert_array_equal(np.asarray(mean_delta(empty)["w"]), np.zeros(3))
    np.testing.assert_array_equal(
        np.asarray(apply_summary({"w": jnp.ones(3)}, empty)["w"]), np.ones(3)
    )


def _linear_problem(n=40, count=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    params = {
        "w": jnp.asarray(rng.normal(size=(3, 2)) * 0.1, jnp.float32),
        "b": jnp.zeros(2, jnp.float32),
    }
    return params, DeviceData(jnp.asarray(x), jnp.asarray(y), jnp.int32(count))


def _numpy_grad(params, x, y):
    """Softmax cross-entropy gradient of the linear model, by hand in float64."""
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    logits = x @ w + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return {"w": x.T @ p, "b": p.sum(axis=0)}


def test_fedsgd_delta_is_one_full_batch_gradient_step():
    params, data = _linear_problem(n=40, count=30)
    algorithm = fedsgd(linear_apply, cross_entropy, learning_rate=0.5)
    result = algorithm.local_update(params, data, jax.random.key(0))
    # Only the 30 real examples count; the 10 padding rows must be masked out.
    grad = _numpy_grad(params, np.asarray(data.x[:30], np.float64), np.asarray(data.y[:30]))
    np.testing.assert_allclose(
        np.asarray(result.delta["w"]), -0.5 * grad["w"], rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(result.delta["b"]), -0.5 * grad["b"], rtol=1e-4, atol=1e-6
    )
    assert float(result.weight) == 30.0


def test_local_sgd_steps_follow_the_sampled_batches():
    params, data = _linear_problem(n=40, count=30)
    algorithm = fedavg(linear_apply, cross_entropy, local_steps=4, batch_size=8, learning_rate=0.3)
    key = jax.random.key(7)
    result = algorithm.local_update(params, data, key)
    # Reproduce the documented batch order: a permutation of the 30 real examples by
    # uniform keys, walked in consecutive batches of 8 (wrapping around).
    u = np.asarray(jax.random.uniform(key, (40,)))
    order = np.argsort(np.where(np.arange(40) < 30, u, 2.0), kind="stable")
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x, y = np.asarray(data.x, np.float64), np.asarray(data.y)
    for step in range(4):
        batch = order[(step * 8 + np.arange(8)) % 30]
        grad = _numpy_grad(p, x[batch], y[batch])
        p = {k: p[k] - 0.3 * grad[k] for k in p}
    np.testing.assert_allclose(
        np.asarray(result.delta["w"]), p["w"] - np.asarray(params["w"]), rtol=1e-4, atol=1e-6
    )
    assert set(order[:30].tolist()) == set(range(30)), (
        "every real example is in the permutation's first 30"
    )


def test_device_with_no_examples_contributes_nothing():
    params, data = _linear_problem(n=40, count=0)
    algorithm = fedavg(linear_apply, cross_entropy, local_steps=2, batch_size=4, learning_rate=0.1)
    result = algorithm.local_update(params, data, jax.random.key(0))
    assert float(result.weight) == 0.0
    assert (
        float(rules.reduce(TierRule(), result.delta["w"][None], result.weight[None]).weight) == 0.0
    )


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_server_update_is_sgd_on_the_negated_mean_delta(server_lr):
    algorithm = fedavg(
        linear_apply,
        cross_entropy,
        local_steps=1,
        batch_size=1,
        learning_rate=0.1,
        server_learning_rate=server_lr,
    )
    params = {"w": jnp.array([1.0, -1.0]), "b": jnp.array([0.5])}
    summary = Summary({"w": jnp.array([4.0, 8.0]), "b": jnp.array([2.0])}, jnp.float32(4.0))
    new, _ = algorithm.server_update(params, algorithm.server_init(params), summary)
    np.testing.assert_allclose(
        np.asarray(new["w"]), [1.0 + server_lr * 1.0, -1.0 + server_lr * 2.0]
    )
    np.testing.assert_allclose(np.asarray(new["b"]), [0.5 + server_lr * 0.5])


def test_server_update_without_answers_keeps_the_model():
    algorithm = fedavg(linear_apply, cross_entropy, local_steps=1, batch_size=1, learning_rate=0.1)
    params = {"w": jnp.array([1.0, -1.0])}
    state = algorithm.server_init(params)
    new, new_state = algorithm.server_update(
        params, state, Summary({"w": jnp.zeros(2)}, jnp.float32(0.0))
    )
    np.testing.assert_array_equal(np.asarray(new["w"]), [1.0, -1.0])
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_state, state))
    assert isinstance(optax.sgd(1.0).init(params), type(state))


def test_edge_result_is_the_edge_models_change_weighted_by_its_examples():
    global_params = jnp.array([1.0, 2.0])
    edges = jnp.array([[1.5, 2.0], [0.0, 4.0]])  # two edges, stacked
    result = edge_result(edges, global_params, jnp.array([10.0, 30.0]))
    np.testing.assert_allclose(np.asarray(result.delta), [[0.5, 0.0], [-1.0, 2.0]])
    # The cloud's mean: (10 * [0.5, 0] + 30 * [-1, 2]) / 40 = [-0.625, 1.5].
    summary = rules.reduce(TierRule(), result.delta, result.weight)
    np.testing.assert_allclose(np.asarray(mean_delta(summary)), [-0.625, 1.5])
