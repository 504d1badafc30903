"""Differential-privacy steps on flat updates: clip and noise, per device or per sum.

Pure functions over `[P]` buffers (vmap them over a stack), built on the
`hierfl.kernels.privacy` kernels; the noise comes from `jax.random` (threefry), never
from the quantization dither. Under DP every device counts once in its edge's mean
(example counts would leak and break the sensitivity bound), and a sum is divided by
the *expected* number of contributors, not the actual one, which is private too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hierfl.kernels import add_gaussian_noise, clip_by_l2


def privatize_update(
    delta: jax.Array, key: jax.Array, clip_norm: jax.Array, noise_std: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """A device's update clipped to `clip_norm` plus N(0, noise_std^2): `(update, norm before clipping)`.

    With `noise_std = 0` this is the clipping an aggregator applies to what it receives.
    """
    clipped, norms = clip_by_l2(delta[None, :], clip_norm)
    return add_gaussian_noise(clipped[0], key, noise_std), norms[0]


def privatize_sum(total: jax.Array, key: jax.Array, noise_std: jax.Array) -> jax.Array:
    """A sum of clipped updates plus N(0, noise_std^2) per coordinate (central DP)."""
    return add_gaussian_noise(total, key, noise_std)


def adapt_clip_norm(
    clip_norm: jax.Array,
    noised_unclipped: jax.Array,
    expected: jax.Array,
    quantile: float,
    learning_rate: float,
) -> jax.Array:
    """Geometric update of the clip norm towards the `quantile` of update norms (Andrew et al. 2021).

    `noised_unclipped` is the noised count of updates whose norm was <= `clip_norm`,
    `expected` the expected number of updates: `C * exp(-lr * (fraction - quantile))`.
    """
    fraction = noised_unclipped / jnp.maximum(expected, 1.0)
    return clip_norm * jnp.exp(-learning_rate * (fraction - quantile))


def device_release(
    delta: jax.Array,
    weight: jax.Array,
    sampling_key: jax.Array,
    noise_key: jax.Array,
    clip_norm: jax.Array,
    noise_std: jax.Array,
    sample_rate: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What one device sends under DP: `(update, weight, unclipped)`.

    The device takes part with probability `sample_rate` (Poisson sampling, drawn from
    `sampling_key`) if it has an update at all (`weight > 0`); then it counts once
    (weight 1), its update is clipped to `clip_norm` and gets N(0, noise_std^2) (local
    DP; 0 when an aggregator adds the noise). A device that does not take part sends a
    zero update of weight 0. `unclipped` says whether it took part with a norm inside
    the clip (adaptive clipping counts those). The simulator vmaps this; a runtime
    device calls it on its own update.
    """
    taking_part = weight > 0
    if sample_rate < 1:
        taking_part = taking_part & (jax.random.uniform(sampling_key) < sample_rate)
    released, norm = privatize_update(delta, noise_key, clip_norm, noise_std)
    return (
        jnp.where(taking_part, released, 0.0),
        taking_part.astype(jnp.float32),
        taking_part & (norm <= clip_norm),
    )
