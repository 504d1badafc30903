"""Privacy across tiers: differential privacy with a proper accountant, and two cryptographic protections.

`accounting` turns a topology's `[privacy]` table into epsilon (at its delta) after any
number of cloud rounds, with Google's `dp-accounting` (RDP or PLD); `dp` holds the pure
functions the simulator applies at the configured place (device, edge or cloud).

`secagg` (with `fixed_point` and `shamir`) is secure aggregation at the edge, and
`homomorphic` is CKKS encryption of edge summaries; both are imported explicitly (they
pull in `cryptography` and TenSEAL), e.g. `from hierfl.privacy import secagg`.
"""

from hierfl.privacy.accounting import (
    epsilon,
    mechanism_events,
    privacy_record,
    rounds_within_budget,
    update_noise_multiplier,
)
from hierfl.privacy.config import DpConfig, rounds_to_run
from hierfl.privacy.dp import (
    adapt_clip_norm,
    device_release,
    privatize_sum,
    privatize_update,
)

__all__ = [
    "DpConfig",
    "adapt_clip_norm",
    "device_release",
    "epsilon",
    "mechanism_events",
    "privacy_record",
    "privatize_sum",
    "privatize_update",
    "rounds_to_run",
    "rounds_within_budget",
    "update_noise_multiplier",
]
