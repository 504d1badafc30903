"""Counter-based uniform noise for stochastic rounding, at memory bandwidth.

Stochastic quantization needs one uniform number per parameter. `jax.random.uniform`
(threefry) costs about 5x a pass over the buffer on a CPU, more than the quantization
itself, so the dither is an integer hash of each element's index instead: two rounds of
a 32-bit avalanche mix, keyed by 64 bits drawn from a `jax.random` key. It is a pure
elementwise function XLA fuses into the quantizer; the same key gives the same noise on
every machine. It is not for cryptography or for differential privacy noise (use
`jax.random` there); it only has to be uniform and uncorrelated across keys, which
tests/test_kernels_compression.py checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _mix(h: jax.Array) -> jax.Array:
    """A 32-bit avalanche mix: every input bit flips about half the output bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform float32 in [0, 1) on a 2^-24 grid, `shape`, determined by `key` alone."""
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    size = 1
    for d in shape:
        size *= d
    counter = jnp.arange(size, dtype=jnp.uint32).reshape(shape)
    bits = _mix(_mix(counter ^ seeds[0]) + seeds[1])
    return (bits >> 8).astype(jnp.float32) * jnp.float32(1.0 / (1 << 24))
