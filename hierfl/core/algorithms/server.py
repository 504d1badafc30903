"""The cloud's server optimizer (FedOpt, Reddi et al. 2021) as an optax transformation.

The cloud treats the negated mean update of a round as a pseudo-gradient and steps at
`federation.server_learning_rate` (eta): `sgd` (FedAvg; learning rate 1 is plain
averaging), `momentum` (FedAvgM), and the paper's adaptive optimizers exactly as its
Algorithm 2 writes them, with the mean update `d_t`:

    m_t = beta1 m_{t-1} + (1 - beta1) d_t
    adagrad:  v_t = v_{t-1} + d_t^2                                 (FedAdagrad, beta1 = 0)
    adam:     v_t = beta2 v_{t-1} + (1 - beta2) d_t^2               (FedAdam)
    yogi:     v_t = v_{t-1} - (1 - beta2) d_t^2 sign(v_{t-1} - d_t^2)  (FedYogi)
    x_t+1 = x_t + eta m_t / (sqrt(v_t) + tau)

`m` and `v` start at zero; there is no bias correction and `tau` (the adaptivity) is added
to the root, not inside it. Optax's `adam`, `yogi` and `adagrad` differ on both counts, so
they are not used here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hierfl.topology.schema import ServerOptimizer

SecondMoment = Callable[[jax.Array, jax.Array], jax.Array]


class FedOptState(NamedTuple):
    """The adaptive optimizers' moments, pytrees shaped like the params."""

    m: Any
    v: Any


def adagrad_moment(v: jax.Array, squared: jax.Array) -> jax.Array:
    return v + squared


def adam_moment(beta2: float) -> SecondMoment:
    return lambda v, squared: beta2 * v + (1 - beta2) * squared


def yogi_moment(beta2: float) -> SecondMoment:
    return lambda v, squared: v - (1 - beta2) * squared * jnp.sign(v - squared)


def scale_by_fedopt(
    second_moment: SecondMoment, beta1: float, tau: float
) -> optax.GradientTransformation:
    """`g -> m_t / (sqrt(v_t) + tau)` with Reddi et al.'s moments of the pseudo-gradient `g`.

    The sign of `g` only flips `m`, so stepping by `-eta` times this moves the params by
    `+eta m_t / (sqrt(v_t) + tau)` of the mean update, as the paper's Algorithm 2 does.
    """

    def init(params) -> FedOptState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return FedOptState(zeros, zeros)

    def update(updates, state: FedOptState, params=None):
        del params
        m = jax.tree.map(lambda m, g: beta1 * m + (1 - beta1) * g, state.m, updates)
        v = jax.tree.map(lambda v, g: second_moment(v, g * g), state.v, updates)
        step = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), m, v)
        return step, FedOptState(m, v)

    return optax.GradientTransformation(init, update)


def server_optimizer(spec: ServerOptimizer, learning_rate: float) -> optax.GradientTransformation:
    """The optax transformation `[aggregation.cloud] optimizer = ...` names."""
    if spec.optimizer == "sgd":
        return optax.sgd(learning_rate)
    if spec.optimizer == "momentum":
        return optax.sgd(learning_rate, momentum=spec.momentum)
    moments = {
        "adam": (adam_moment(spec.beta2), spec.beta1),
        "yogi": (yogi_moment(spec.beta2), spec.beta1),
        "adagrad": (adagrad_moment, 0.0),
    }
    if spec.optimizer not in moments:
        raise ValueError(f"unknown server optimizer {spec.optimizer!r}")
    second_moment, beta1 = moments[spec.optimizer]
    return optax.chain(scale_by_fedopt(second_moment, beta1, spec.tau), optax.scale(-learning_rate))
