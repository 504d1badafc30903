"""The key tree: every random number of a run derives from its one seed, by position.

    run = key(seed)
    ├── fold_in(run, 0)                          model initialisation
    ├── fold_in(run, 1)
    │   └── fold_in(., cloud_round)              one cloud round (1-based)
    │       └── fold_in(., edge_round)           one edge round (0-based)
    │           └── fold_in(., device_index)     one device's local training
    ├── fold_in(run, 2)                          device -> edge uploads (stochastic rounding)
    │   └── cloud_round / edge_round / device_index, as above
    └── fold_in(run, 3)                          edge -> cloud uploads
        └── fold_in(., cloud_round)
            └── fold_in(., edge_index)           one edge's summary

Keys are derived by position, not by splitting in sequence, so a device process in the
runtime computes the very same key as the simulator from (seed, rounds, index) alone.
Numpy generators for data follow the same idea: `np.random.default_rng([seed, purpose, ...])`.
"""

from __future__ import annotations

import jax


def init_key(seed: int) -> jax.Array:
    """The key that initialises the global model's parameters."""
    return jax.random.fold_in(jax.random.key(seed), 0)


TRAINING, DEVICE_UPLOAD, EDGE_UPLOAD, ATTACK, PRIVACY, PRIVACY_SUM, PRIVACY_COUNT, SAMPLING = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
)


def edge_round_key(
    seed: int, cloud_round: jax.Array | int, edge_round: jax.Array | int, branch: int = TRAINING
) -> jax.Array:
    """The key of one edge round in `branch`; devices fold in their index (see `device_key`)."""
    rounds = jax.random.fold_in(jax.random.key(seed), branch)
    return jax.random.fold_in(jax.random.fold_in(rounds, cloud_round), edge_round)


def device_key(
    seed: int,
    cloud_round: jax.Array | int,
    edge_round: jax.Array | int,
    device_index: jax.Array | int,
) -> jax.Array:
    """The key a device trains with in the given cloud round and edge round."""
    return jax.random.fold_in(edge_round_key(seed, cloud_round, edge_round), device_index)


def device_upload_key(
    seed: int,
    cloud_round: jax.Array | int,
    edge_round: jax.Array | int,
    device_index: jax.Array | int,
) -> jax.Array:
    """The key that encodes a device's update for its edge (e.g. int8 stochastic rounding)."""
    return jax.random.fold_in(
        edge_round_key(seed, cloud_round, edge_round, DEVICE_UPLOAD), device_index
    )


def edge_upload_key(
    seed: int, cloud_round: jax.Array | int, edge_index: jax.Array | int
) -> jax.Array:
    """The key that encodes an edge's summary for the cloud."""
    uploads = jax.random.fold_in(jax.random.key(seed), EDGE_UPLOAD)
    return jax.random.fold_in(jax.random.fold_in(uploads, cloud_round), edge_index)


def attack_key(
    seed: int,
    cloud_round: jax.Array | int,
    edge_round: jax.Array | int,
    device_index: jax.Array | int,
) -> jax.Array:
    """The key a simulated faulty device draws its garbage update with (`hierfl.core.attack`)."""
    return jax.random.fold_in(edge_round_key(seed, cloud_round, edge_round, ATTACK), device_index)


def privacy_key(
    seed: int,
    cloud_round: jax.Array | int,
    edge_round: jax.Array | int,
    device_index: jax.Array | int,
) -> jax.Array:
    """The key of a device's own DP noise (local DP) in one edge round."""
    return jax.random.fold_in(edge_round_key(seed, cloud_round, edge_round, PRIVACY), device_index)


def sampling_key(
    seed: int,
    cloud_round: jax.Array | int,
    edge_round: jax.Array | int,
    device_index: jax.Array | int,
) -> jax.Array:
    """The key that decides whether a device takes part in an edge round (Poisson sampling under DP)."""
    return jax.random.fold_in(edge_round_key(seed, cloud_round, edge_round, SAMPLING), device_index)


def sum_noise_key(
    seed: int, cloud_round: jax.Array | int, edge_round: jax.Array | int, node: jax.Array | int
) -> jax.Array:
    """The key of the DP noise an aggregator adds to a sum: `node` is the edge index (the cloud uses num_edges)."""
    return jax.random.fold_in(edge_round_key(seed, cloud_round, edge_round, PRIVACY_SUM), node)


def count_noise_key(
    seed: int, cloud_round: jax.Array | int, edge_round: jax.Array | int, node: jax.Array | int
) -> jax.Array:
    """The key of the noise on an aggregator's count of unclipped updates (adaptive clipping)."""
    return jax.random.fold_in(edge_round_key(seed, cloud_round, edge_round, PRIVACY_COUNT), node)
