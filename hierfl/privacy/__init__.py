"""Privacy across tiers: differential privacy of device updates with a proper accountant.

`accounting` turns a topology's `[privacy]` table into epsilon (at its delta) after any
number of cloud rounds, with Google's `dp-accounting` (RDP or PLD); `dp` holds the pure
functions the simulator applies at the configured place (device, edge or cloud).
"""

from hierfl.privacy.accounting import epsilon, mechanism_events, rounds_within_budget, update_noise_multiplier
from hierfl.privacy.dp import adapt_clip_norm, privatize_sum, privatize_update

__all__ = [
    "adapt_clip_norm",
    "epsilon",
    "mechanism_events",
    "privatize_sum",
    "privatize_update",
    "rounds_within_budget",
    "update_noise_multiplier",
]
