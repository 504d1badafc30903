"""The privacy accountant: epsilon of a federation's training after some cloud rounds.

The privacy unit is one device's data (user-level DP; add/remove one device). What one
device's data influences each round, by `privacy.dp`:

- `edge` (central DP, the plant's edge trusted): every edge round, the edge adds
  N(0, (z C)^2) to the sum of its devices' clipped updates (each device is in one edge).
  With Poisson sampling at rate q this is a sampled Gaussian mechanism of noise
  multiplier z, `edge_rounds` times per cloud round.
- `cloud` (central DP, edges and cloud trusted; one edge round per cloud round): the
  cloud adds the noise to the sum of all devices' clipped updates, once per cloud round.
- `device` (local DP, nobody trusted): each device adds N(0, (z C)^2) to its own
  clipped update, `edge_rounds` times per cloud round. Its message must hide its data
  from the edge that receives it, which also sees whether it took part, so the
  neighbouring relation is replace-one (sensitivity 2C, noise multiplier z / 2) and
  sampling gives no amplification.

With adaptive clipping (`clip_quantile`), each release also includes the noised count of
updates under the clip (std `quantile_noise`, sensitivity 1); the update noise is then
`update_noise_multiplier` so that the pair costs exactly a Gaussian of multiplier z
(Andrew et al. 2021, Thm. 1): `z_update = (z^-2 - (2 sigma_b)^-2)^-1/2`.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING

from hierfl.topology import Privacy, Topology
from hierfl.topology.schema import quantile_noise

if TYPE_CHECKING:
    from dp_accounting import dp_event


def update_noise_multiplier(privacy: Privacy, topology: Topology) -> float:
    """The noise multiplier applied to the update sum: z, or z_update with adaptive clipping."""
    z = privacy.noise_multiplier
    if privacy.clip_quantile is None or z == 0:
        return z
    return (z**-2 - (2 * quantile_noise(privacy, topology)) ** -2) ** -0.5


def mechanism_events(privacy: Privacy, edge_rounds: int) -> tuple[dp_event.DpEvent, int]:
    """One release's DP event and how many releases one cloud round makes."""
    from dp_accounting import dp_event  # imported where used: it costs a process ~1 s of CPU

    if privacy.dp == "device":
        return dp_event.GaussianDpEvent(privacy.noise_multiplier / 2), edge_rounds
    gaussian = dp_event.GaussianDpEvent(privacy.noise_multiplier)
    event = (
        gaussian
        if privacy.sample_rate == 1
        else dp_event.PoissonSampledDpEvent(privacy.sample_rate, gaussian)
    )
    return event, (1 if privacy.dp == "cloud" else edge_rounds)


@functools.lru_cache(maxsize=4096)
def epsilon(privacy: Privacy, edge_rounds: int, rounds: int) -> float:
    """epsilon at `privacy.delta` after `rounds` cloud rounds (inf without noise, 0 before any round)."""
    if not privacy.enabled:
        raise ValueError("epsilon: privacy.dp is 'none'")
    if rounds == 0:
        return 0.0
    if privacy.noise_multiplier == 0:
        return math.inf
    from dp_accounting import dp_event, pld, rdp

    event, per_round = mechanism_events(privacy, edge_rounds)
    composed = dp_event.SelfComposedDpEvent(event, per_round * rounds)
    accountant = rdp.RdpAccountant() if privacy.accountant == "rdp" else pld.PLDAccountant()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # RDP warns about orders it skips; the bound stays valid
    try:
        accountant.compose(composed)
        return float(accountant.get_epsilon(privacy.delta))
    finally:
        absl.setLevel(level)


def rounds_within_budget(privacy: Privacy, edge_rounds: int, limit: int) -> int:
    """The most cloud rounds (<= `limit`) whose epsilon stays within `target_epsilon` (`limit` without a target)."""
    if privacy.target_epsilon is None:
        return limit
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if epsilon(privacy, edge_rounds, middle) <= privacy.target_epsilon:
            low = middle
        else:
            high = middle - 1
    return low


def privacy_record(topology: Topology, rounds: int, clip_norm: float) -> dict[str, float]:
    """The metrics of a round under DP: epsilon spent after `rounds` cloud rounds, delta, the clip norm in use."""
    settings = topology.privacy
    if not settings.enabled:
        return {}
    spent = epsilon(settings, topology.federation.edge_rounds, rounds)
    return {"epsilon": spent, "delta": settings.delta, "clip_norm": float(clip_norm)}
