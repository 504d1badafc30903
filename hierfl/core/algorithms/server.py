"""The cloud's server optimizer (FedOpt, Reddi et al. 2021) as an optax transformation.

The cloud treats the negated mean update of a round as a pseudo-gradient and steps with
an optax optimizer at `federation.server_learning_rate`: `sgd` (FedAvg; learning rate 1
is plain averaging), `momentum` (FedAvgM), `adam` (FedAdam), `yogi` (FedYogi), `adagrad`
(FedAdagrad). FedOpt's adaptivity `tau` is optax's `eps`: added to the root of the
second moment for adam and yogi, and inside the root for adagrad (optax's convention);
adagrad starts its accumulator at 0, as in the paper.
"""

from __future__ import annotations

import optax

from hierfl.topology.schema import ServerOptimizer


def server_optimizer(spec: ServerOptimizer, learning_rate: float) -> optax.GradientTransformation:
    """The optax transformation `[aggregation.cloud] optimizer = ...` names."""
    if spec.optimizer == "sgd":
        return optax.sgd(learning_rate)
    if spec.optimizer == "momentum":
        return optax.sgd(learning_rate, momentum=spec.momentum)
    if spec.optimizer == "adam":
        return optax.adam(learning_rate, b1=spec.beta1, b2=spec.beta2, eps=spec.tau)
    if spec.optimizer == "yogi":
        return optax.yogi(learning_rate, b1=spec.beta1, b2=spec.beta2, eps=spec.tau)
    if spec.optimizer == "adagrad":
        return optax.adagrad(learning_rate, initial_accumulator_value=0.0, eps=spec.tau)
    raise ValueError(f"unknown server optimizer {spec.optimizer!r}")
