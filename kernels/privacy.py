"""Privacy kernels: per-update L2 clipping and seeded Gaussian noise.

The building blocks of differential privacy at any tier: clip each update to a maximum
L2 norm (bounding one participant's influence), then add Gaussian noise of a standard
deviation calibrated to that bound. The accounting lives elsewhere; these only compute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_norms(stack: jax.Array) -> jax.Array:
    """The L2 norm of each update of a `[K, P]` stack, `[K]` (float32 accumulation)."""
    return jnp.sqrt(jnp.sum(jnp.square(stack.astype(jnp.float32)), axis=1))


def clip_by_l2(stack: jax.Array, max_norm: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each update of `[K, P]` scaled down to L2 norm <= `max_norm`: `(clipped, norms before)`.

    Updates already inside the ball are returned unchanged (scale exactly 1).
    """
    norms = l2_norms(stack)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-30))
    return stack * scale[:, None].astype(stack.dtype), norms


def add_gaussian_noise(x: jax.Array, key: jax.Array, stddev: float | jax.Array) -> jax.Array:
    """`x + N(0, stddev^2)` elementwise, the noise drawn from `key` (jax.random, threefry)."""
    return x + (stddev * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)
