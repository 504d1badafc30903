"""A topology's `[privacy]` table resolved into what a training round needs.

The simulator's jitted round and the runtime's nodes read the same `DpConfig`, so both
add the same noise with the same multipliers (the update noise is `z_update`, not `z`,
when adaptive clipping takes its share of the budget) and the same keys, and stop at the
same round. With `noise_source = "os"` each process salts its DP keys with a secret from
the OS: runs are then no longer reproducible, which is the point.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from hierfl.privacy.accounting import rounds_within_budget, update_noise_multiplier
from hierfl.topology import Privacy, Topology
from hierfl.topology.schema import quantile_noise


@dataclasses.dataclass(frozen=True)
class DpConfig:
    """The `[privacy]` settings a round applies: where the noise goes and how much."""

    place: str
    noise_multiplier: float
    sample_rate: float
    clip_quantile: float | None
    clip_learning_rate: float
    quantile_noise: float
    salt: int | None = None

    @classmethod
    def of(cls, topology: Topology) -> DpConfig | None:
        """The topology's DP settings, or None without DP (`dp = "none"`)."""
        settings: Privacy = topology.privacy
        if not settings.enabled:
            return None
        return cls(
            settings.dp,
            update_noise_multiplier(settings, topology),
            settings.sample_rate,
            settings.clip_quantile,
            settings.clip_learning_rate,
            quantile_noise(settings, topology),
            int.from_bytes(os.urandom(4), "little") if settings.noise_source == "os" else None,
        )

    @property
    def central(self) -> bool:
        """Whether a trusted aggregator (edge or cloud) adds the noise, rather than each device."""
        return self.place in ("edge", "cloud")

    def key(self, key: jax.Array) -> jax.Array:
        """A DP noise or sampling key as used: the seed's key, salted with this process's secret if any."""
        return key if self.salt is None else jax.random.fold_in(key, self.salt)

    @property
    def adaptive(self) -> bool:
        """Whether the clip norm follows a quantile of the update norms (Andrew et al.)."""
        return self.clip_quantile is not None


def rounds_to_run(topology: Topology, rounds: int) -> int:
    """How many of `rounds` cloud rounds to train: all, or as many as `privacy.target_epsilon` allows."""
    settings = topology.privacy
    if not settings.enabled:
        return rounds
    return rounds_within_budget(settings, topology.federation.edge_rounds, rounds)
