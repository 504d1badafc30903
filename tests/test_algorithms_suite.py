"""FedProx, FedNova, SCAFFOLD and the FedOpt server optimizers against hand-computed numbers.

The device model is one weight `w` on one example (x = 2, y = 1) with squared loss
`0.5 * (2w - 1)^2`, so a gradient step is `w -= lr * 2 * (2w - 1)`: every expected number
below is that recursion worked out by hand (learning rate 0.1, start w = 0).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierfl.core.algorithms import (
    DeviceData,
    Summary,
    effective_steps,
    fedavg,
    fednova,
    fedprox,
    scaffold,
    server_optimizer,
)
from hierfl.core.algorithms.fedavg import make_server_update
from hierfl.topology import ServerOptimizer


def apply(params, x):
    return x @ params["w"]


def squared(prediction, y):
    return 0.5 * (prediction - y) ** 2


PARAMS = {"w": jnp.zeros(1)}
DATA = DeviceData(jnp.array([[2.0]]), jnp.array([1.0]), jnp.int32(1))
KEY = jax.random.key(0)
HYPER = dict(local_steps=2, batch_size=1, learning_rate=0.1)


def delta_of(algorithm, data=DATA, correction=None):
    result = algorithm.local_update(PARAMS, data, KEY, correction)
    return float(result.delta["w"][0])


def test_fedavg_two_steps_by_hand():
    # w1 = 0 - 0.1 * 2 * (0 - 1) = 0.2; w2 = 0.2 - 0.1 * 2 * (0.4 - 1) = 0.32.
    assert delta_of(fedavg(apply, squared, **HYPER)) == pytest.approx(0.32, abs=1e-6)


def test_fedprox_adds_the_proximal_gradient():
    # mu = 1: step 2's gradient is 2 * (0.4 - 1) + 1 * (0.2 - 0) = -1.0, so w2 = 0.2 + 0.1 = 0.3.
    assert delta_of(fedprox(apply, squared, mu=1.0, **HYPER)) == pytest.approx(0.3, abs=1e-6)


def test_fedprox_with_mu_zero_is_fedavg():
    assert delta_of(fedprox(apply, squared, mu=0.0, **HYPER)) == delta_of(
        fedavg(apply, squared, **HYPER)
    )


def test_fedprox_rejects_negative_mu():
    with pytest.raises(ValueError, match="mu must be >= 0"):
        fedprox(apply, squared, mu=-0.1, **HYPER)


def test_a_device_stops_at_its_own_step_budget():
    # steps = 1 of local_steps = 2: only the first step, w1 = 0.2.
    one_step = DATA._replace(steps=jnp.int32(1))
    assert delta_of(fedavg(apply, squared, **HYPER), one_step) == pytest.approx(0.2, abs=1e-6)


def test_fednova_rescales_each_delta_to_the_effective_steps():
    # tau_eff = 1.5: a 1-step device's 0.2 becomes 0.2 * 1.5 / 1 = 0.3, a 2-step device's
    # 0.32 becomes 0.32 * 1.5 / 2 = 0.24.
    algorithm = fednova(apply, squared, effective_steps=1.5, **HYPER)
    assert delta_of(algorithm, DATA._replace(steps=jnp.int32(1))) == pytest.approx(0.3, abs=1e-6)
    assert delta_of(algorithm, DATA._replace(steps=jnp.int32(2))) == pytest.approx(0.24, abs=1e-6)


def test_fednova_with_equal_steps_is_fedavg():
    algorithm = fednova(apply, squared, effective_steps=2.0, **HYPER)
    assert delta_of(algorithm, DATA._replace(steps=jnp.int32(2))) == pytest.approx(
        delta_of(fedavg(apply, squared, **HYPER)), abs=1e-7
    )


def test_effective_steps_is_the_example_weighted_mean():
    # (2 * 10 + 5 * 30 + 10 * 60) / 100 = 7.7; a device without data does not count.
    assert effective_steps([2, 5, 10, 99], [10, 30, 60, 0]) == pytest.approx(7.7)


def test_scaffold_corrects_gradients_and_updates_its_variate_by_option_two():
    # correction c - c_i = 0.5: w1 = 0 - 0.1 * (-2 + 0.5) = 0.15;
    # w2 = 0.15 - 0.1 * (2 * (0.3 - 1) + 0.5) = 0.24.
    algorithm = scaffold(apply, squared, **HYPER)
    delta = delta_of(algorithm, correction={"w": jnp.array([0.5])})
    assert delta == pytest.approx(0.24, abs=1e-6)
    # delta_c_i = -c - delta / (K * lr) with c = 0.2, K = 2: -0.2 - 0.24 / 0.2 = -1.4.
    change = algorithm.variate_delta(jnp.array([0.24]), jnp.int32(2), jnp.array([0.2]))
    assert float(change[0]) == pytest.approx(-1.4, abs=1e-6)
    assert not fedavg(apply, squared, **HYPER).control_variates and algorithm.control_variates


def run_server(
    spec: ServerOptimizer, learning_rate: float, deltas: list[list[float]]
) -> np.ndarray:
    tx = server_optimizer(spec, learning_rate)
    update = make_server_update(tx)
    params = {"w": jnp.zeros(len(deltas[0]))}
    state = tx.init(params)
    for delta in deltas:
        params, state = update(
            params, state, Summary({"w": jnp.asarray(delta) * 4.0}, jnp.float32(4.0))
        )
    return np.asarray(params["w"])


def test_fedavgm_is_heavy_ball_on_the_negated_mean_delta():
    # g = -delta; v1 = g1, x1 = -v1 = [1, 2]; v2 = 0.9 v1 + g2 = [-1.4, -0.8]; x2 = x1 - v2 = [2.4, 2.8].
    got = run_server(ServerOptimizer("momentum", momentum=0.9), 1.0, [[1.0, 2.0], [0.5, -1.0]])
    np.testing.assert_allclose(got, [2.4, 2.8], rtol=1e-6)


def fedopt_reference(deltas, lr, b1, b2, tau, variant):
    """Reddi et al. 2021, Algorithm 2, in plain Python floats per coordinate: m and v from 0,
    no bias correction, x += lr * m / (sqrt(v) + tau)."""
    out = []
    for coordinate in zip(*deltas):
        x, m, v = 0.0, 0.0, 0.0
        for delta in coordinate:
            m = b1 * m + (1 - b1) * delta
            if variant == "adam":
                v = b2 * v + (1 - b2) * delta * delta
            elif variant == "yogi":
                v = v - (1 - b2) * delta * delta * math.copysign(1.0, v - delta * delta)
            else:
                v = v + delta * delta
            x += lr * m / (math.sqrt(v) + tau)
        out.append(x)
    return out


@pytest.mark.parametrize("name", ["adam", "yogi"])
def test_fedadam_and_fedyogi_match_the_papers_update(name):
    deltas = [[0.5, -2.0], [0.5, 0.0], [-0.25, 1.0]]
    got = run_server(ServerOptimizer(name, beta1=0.9, beta2=0.99, tau=1e-3), 0.1, deltas)
    np.testing.assert_allclose(got, fedopt_reference(deltas, 0.1, 0.9, 0.99, 1e-3, name), rtol=1e-5)


def test_fedadam_first_step_by_hand():
    # d = 0.5: m = 0.1 * 0.5 = 0.05, v = 0.01 * 0.25 = 0.0025, sqrt(v) = 0.05;
    # x = 0.1 * 0.05 / (0.05 + 0.001) = 0.0980392 (optax's bias-corrected adam gives 0.0998).
    got = run_server(ServerOptimizer("adam", beta1=0.9, beta2=0.99, tau=1e-3), 0.1, [[0.5]])
    assert got[0] == pytest.approx(0.1 * 0.05 / 0.051, rel=1e-5)


def test_fedadagrad_adds_tau_to_the_root_of_the_summed_squares():
    # eta = 0.1, tau = 0.5, d = 0.5 twice: v1 = 0.25, step 0.1 * 0.5 / (0.5 + 0.5) = 0.05
    # (from 0.1 to 0.15, the paper's and Flower's value; tau inside the root gave 0.1577);
    # v2 = 0.5, step 0.1 * 0.5 / (sqrt(0.5) + 0.5).
    got = run_server(ServerOptimizer("adagrad", tau=0.5), 0.1, [[0.5]])
    assert got[0] == pytest.approx(0.05, rel=1e-6)
    got = run_server(ServerOptimizer("adagrad", tau=0.5), 0.1, [[0.5], [0.5]])
    assert got[0] == pytest.approx(0.05 + 0.05 / (math.sqrt(0.5) + 0.5), rel=1e-6)
    assert got[0] == pytest.approx(
        fedopt_reference([[0.5], [0.5]], 0.1, 0.0, 0.0, 0.5, "adagrad")[0]
    )


def test_server_step_is_skipped_when_nobody_answered():
    tx = server_optimizer(ServerOptimizer("adam"), 0.1)
    update = make_server_update(tx)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    new_params, new_state = update(params, state, Summary({"w": jnp.zeros(2)}, jnp.float32(0.0)))
    np.testing.assert_array_equal(np.asarray(new_params["w"]), [1.0, 1.0])
    assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(new_state))
