"""FedProx (Li et al. 2020): FedAvg whose devices minimise `loss + mu/2 * ||w - w_start||^2`.

The proximal term keeps a device near the model it started from, so devices with very
different data (non-IID plants) or many local steps drift less. With `mu = 0` it is
FedAvg exactly. Aggregation and the cloud step are FedAvg's.
"""

from __future__ import annotations

from typing import Any

from hierfl.core.algorithms.fedavg import Algorithm, fedavg


def fedprox(apply_fn, example_loss, *, mu: float, **hyperparameters: Any) -> Algorithm:
    """FedProx with proximal weight `mu` (>= 0); the other hyperparameters as `fedavg`."""
    if mu < 0:
        raise ValueError(f"fedprox: mu must be >= 0, got {mu}")
    return fedavg(apply_fn, example_loss, proximal_mu=mu, name="fedprox", **hyperparameters)
