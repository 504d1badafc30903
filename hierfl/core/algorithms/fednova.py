"""FedNova (Wang et al. 2020): normalized averaging for devices with different compute budgets.

When devices run different numbers of local steps (the topology's per-line
`local_steps`), plain FedAvg weights a fast device's long walk the same as a slow
device's short one, and the federation converges to a different objective than the
example-weighted one. FedNova divides each device's delta by its own steps `tau_i` and
scales the average back up by the federation's effective steps
`tau_eff = sum_i n_i tau_i / sum_i n_i` (n_i = examples), so every device counts with
the same step length.

Here the normalization is applied on the device, `delta_i * tau_eff / tau_i`, with
`tau_eff` computed once from the topology's step budgets and the devices' example counts
over the whole federation; the edge and the cloud then take FedAvg's weighted means.
Normalizing to one federation-wide `tau_eff` (rather than per edge) also equalizes plants
whose devices are faster. With equal steps everywhere the scale is 1: FedAvg exactly.
With vanilla local SGD (what hierfl devices run), FedNova's `a_i` is `tau_i`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hierfl.core.algorithms.fedavg import Algorithm, fedavg


def effective_steps(steps: Sequence[int] | np.ndarray, counts: Sequence[int] | np.ndarray) -> float:
    """`tau_eff`: the example-weighted mean of the devices' local steps (devices without data ignored)."""
    steps, counts = np.asarray(steps, np.float64), np.asarray(counts, np.float64)
    if counts.sum() <= 0:
        raise ValueError("fednova: no device has any examples")
    return float((steps * counts).sum() / counts.sum())


def fednova(apply_fn, example_loss, *, effective_steps: float, **hyperparameters: Any) -> Algorithm:
    """FedNova: each device's delta rescaled to `effective_steps` steps; otherwise FedAvg."""
    if effective_steps <= 0:
        raise ValueError(f"fednova: effective_steps must be > 0, got {effective_steps}")
    return fedavg(
        apply_fn, example_loss, normalize_to=effective_steps, name="fednova", **hyperparameters
    )
