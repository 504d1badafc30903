"""The core's round steps on overflowing input: an aggregate that is not finite never
replaces a model (the edge's or the cloud's), in the functions both engines call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.core import steps
from hierfl.core.algorithms import fedavg
from hierfl.core.algorithms.server import server_optimizer
from hierfl.data.tasks.base import cross_entropy
from hierfl.kernels import flat_spec
from hierfl.topology import ServerOptimizer, TierRule

HUGE = np.float32(3e38)  # finite as float32; ten of them, weighted, are not


def edge_step_on(deltas, weights):
    step = jax.jit(steps.make_edge_step(TierRule()))
    edge = jnp.ones(2, jnp.float32)
    args = (
        jnp.asarray(deltas, jnp.float32),
        jnp.asarray(weights, jnp.float32),
        jnp.zeros(len(weights)),
    )
    return step(edge, *args, 1, 0, 0, 1.0)


def test_an_edge_keeps_its_model_when_the_weighted_sum_overflows():
    outcome = edge_step_on([[HUGE, 0.0], [HUGE, 0.0]], [10.0, 10.0])
    assert np.isfinite(HUGE * 1)  # each update alone is finite
    np.testing.assert_array_equal(np.asarray(outcome.edge_flat), [1.0, 1.0])
    assert float(outcome.weight) == 0.0


def test_an_edge_applies_a_finite_aggregate():
    outcome = edge_step_on([[1.0, 0.0], [3.0, 2.0]], [1.0, 3.0])
    np.testing.assert_allclose(np.asarray(outcome.edge_flat), [1.0 + 2.5, 1.0 + 1.5])
    assert float(outcome.weight) == 4.0


def cloud_step(optimizer: str):
    params = {"w": jnp.ones(2, jnp.float32)}
    algorithm = fedavg(
        lambda p, x: x,
        cross_entropy,
        local_steps=1,
        batch_size=1,
        learning_rate=0.1,
        server_tx=server_optimizer(ServerOptimizer(optimizer), 1.0),
    )
    step = jax.jit(steps.make_cloud_step(algorithm, flat_spec(params), TierRule()))
    return step, params, algorithm.server_init(params)


def test_the_cloud_keeps_model_and_optimizer_state_when_summaries_overflow():
    for optimizer in ("sgd", "adam"):
        step, params, state = cloud_step(optimizer)
        deltas = jnp.asarray([[HUGE, 1.0], [HUGE, 1.0]], jnp.float32)
        new, new_state = step(params, state, deltas, jnp.asarray([10.0, 10.0]), 1, 1.0)
        np.testing.assert_array_equal(np.asarray(new["w"]), [1.0, 1.0])
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # An infinite weight (1e39 as float32) is refused the same way.
        new, _ = step(params, state, deltas * 0 + 1.0, jnp.asarray([np.inf, 1.0]), 1, 1.0)
        np.testing.assert_array_equal(np.asarray(new["w"]), [1.0, 1.0])


def test_the_cloud_steps_on_a_finite_aggregate():
    step, params, state = cloud_step("sgd")
    deltas = jnp.asarray([[1.0, 1.0], [3.0, -1.0]], jnp.float32)
    new, _ = step(params, state, deltas, jnp.asarray([1.0, 1.0]), 1, 1.0)
    np.testing.assert_allclose(np.asarray(new["w"]), [3.0, 1.0])
