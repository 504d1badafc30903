"""SCAFFOLD (Karimireddy et al. 2020) across the device -> edge -> cloud tiers.

Every device `i` keeps a control variate `c_i` (its estimate of its own gradient), the
cloud keeps `c` (the federation's). A device corrects every local gradient by `c - c_i`,
so its steps follow the federation's gradient rather than its own data's, and afterwards
updates its variate with the paper's option II:

    c_i+ = c_i - c + (x - y_i) / (K_i * lr)        (x: start model, y_i: trained, K_i: steps)
    delta_c_i = c_i+ - c_i = -c - delta_i / (K_i * lr)

Tiers. The cloud keeps `c` as the example-weighted mean of the devices' variates,
`c = sum_i n_i c_i / N`. Each device sends `delta_c_i` with its update; the edge adds up
`sum_i n_i delta_c_i` over its edge rounds and sends it up with its summary; the cloud adds
`sum_e (...) / N` to `c`. `N` counts the examples of all devices, answered or not (the
paper's `|S| / N` scaling), so a device that did not answer keeps its variate and changes
nobody's mean: `c` stays the mean of the devices' `c_i` after every round. (An edge's own
mean `c_e` is never used, so no tier keeps it.)
Devices use the cloud's `c`, fixed during a cloud round (edges forward it with the model).

The model side is FedAvg's (weighted means, the cloud's optimizer); every tier must
aggregate with the mean rule (the topology validation enforces it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from hierfl.core.algorithms.fedavg import Algorithm, fedavg


def make_variate_delta(learning_rate: float):
    """`variate_delta(delta, steps, c) = -c - delta / (steps * learning_rate)` on flat buffers."""

    def variate_delta(delta: jax.Array, steps: jax.Array, cloud_variate: jax.Array) -> jax.Array:
        scale = 1.0 / (jnp.maximum(steps, 1).astype(delta.dtype) * learning_rate)
        return -cloud_variate - delta * scale

    return variate_delta


def scaffold(apply_fn, example_loss, *, learning_rate: float, **hyperparameters: Any) -> Algorithm:
    """SCAFFOLD: FedAvg's local SGD with the `c - c_i` gradient correction and variate updates."""
    return fedavg(
        apply_fn,
        example_loss,
        learning_rate=learning_rate,
        variate_delta=make_variate_delta(learning_rate),
        name="scaffold",
        **hyperparameters,
    )
