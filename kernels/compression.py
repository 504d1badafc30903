"""Update compression for one link: encode a flat update `[P]` into a payload, and decode it.

A `Codec` is chosen per link in the topology file (device->edge, edge->cloud) and built
once for the model's size P with `make_codec`. Its pure functions:

    payload, residual = codec.encode(x, residual, key)   # sender
    x_hat = codec.decode(payload)                        # receiver, float32 [P]

`payload` is a tuple of arrays, each sent as one frame; `codec.payload_bytes` is their
size on the wire. `residual` is the sender's error-feedback memory, `[codec.residual_size]`
(0 for codecs without one); `key` seeds stochastic rounding. vmap any of them for a stack.

The codecs:
- `none`: the float32 update as is (4 bytes a parameter).
- `float16`, `bfloat16`: a cast, round to nearest (2 bytes a parameter). float16 values
  are clipped to its finite range so a large update never turns into inf.
- `int8`: per block of `block_size` parameters, a float32 scale `max|x| / 127` and the
  values stochastically rounded to integers in [-127, 127]: `floor(x / scale + u)` with
  u uniform in [0, 1), so `E[decode] = x` (unbiased) and the error of every value is below
  its block's scale. 1 + 4 / block_size bytes a parameter (the last block may be short).
- `topk`: the `k = ceil(fraction * P)` largest-magnitude entries of `x + residual` as
  (values float32, indices int32), 8 bytes each. Error feedback (Stich et al. 2018): what
  was not sent stays in the sender's residual and is added to its next update, so over
  rounds the sum of what was sent tracks the sum of the true updates. On a CPU the
  selection runs in numpy (`selection`: XLA:CPU's top_k sorts the whole update).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hierfl.kernels import dither, selection

CODECS = ("none", "float16", "bfloat16", "int8", "topk")
DEFAULT_BLOCK_SIZE = 256
DEFAULT_FRACTION = 0.01
INT8_LEVELS = 127

Payload = tuple[jax.Array, ...]


class Codec(NamedTuple):
    """A lossy encoding of one flat update of `size` parameters (see the module docstring)."""

    name: str
    size: int
    encode: Callable[[jax.Array, jax.Array, jax.Array], tuple[Payload, jax.Array]]
    decode: Callable[[Payload], jax.Array]
    payload_bytes: int
    residual_size: int


def make_codec(
    name: str,
    size: int,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    fraction: float = DEFAULT_FRACTION,
) -> Codec:
    """The codec `name` (one of `CODECS`) for updates of `size` parameters.

    `block_size` applies to `int8`, `fraction` (of the parameters sent, in (0, 1]) to `topk`.
    """
    if name == "none":
        return _cast_codec("none", size, jnp.float32)
    if name in ("float16", "bfloat16"):
        return _cast_codec(name, size, jnp.dtype(name))
    if name == "int8":
        return _int8_codec(size, block_size)
    if name == "topk":
        return _topk_codec(size, fraction)
    raise ValueError(f"unknown codec {name!r} (choose from: {', '.join(CODECS)})")


def roundtrip(
    codec: Codec, x: jax.Array, residual: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """What the receiver gets for `x`, and the sender's new residual: the wire, simulated."""
    payload, residual = codec.encode(x, residual, key)
    return codec.decode(payload), residual


def _cast_codec(name: str, size: int, dtype: jnp.dtype) -> Codec:
    limit = float(jnp.finfo(dtype).max)

    def encode(x, residual, key):
        del key
        return (jnp.clip(x, -limit, limit).astype(dtype),), residual

    def decode(payload):
        return payload[0].astype(jnp.float32)

    return Codec(name, size, encode, decode, size * jnp.dtype(dtype).itemsize, 0)


def quantize_int8(
    x: jax.Array, key: jax.Array, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[jax.Array, jax.Array]:
    """Stochastic int8 quantization of `x` `[P]`: `(q int8 [P], scales float32 [ceil(P / block_size)])`.

    Elementwise against a per-element view of the block scales, so nothing is padded or
    copied when P is not a multiple of `block_size` (XLA fuses it into one pass).
    """
    x = x.astype(jnp.float32)
    scales = _block_max_abs(x, block_size) / INT8_LEVELS
    inverse = jnp.where(scales > 0, 1.0 / jnp.where(scales > 0, scales, 1.0), 0.0)
    noise = dither.uniform(key, x.shape)
    q = jnp.clip(
        jnp.floor(x * _per_element(inverse, block_size, x.shape[0]) + noise),
        -INT8_LEVELS,
        INT8_LEVELS,
    )
    return q.astype(jnp.int8), scales


def dequantize_int8(
    q: jax.Array, scales: jax.Array, block_size: int = DEFAULT_BLOCK_SIZE
) -> jax.Array:
    """The float32 `[P]` update that `quantize_int8(x, key, block_size)` encoded (an unbiased estimate of x)."""
    return q.astype(jnp.float32) * _per_element(scales, block_size, q.shape[0])


def _block_max_abs(x: jax.Array, block_size: int) -> jax.Array:
    """`max |x|` of each block of `block_size` consecutive values (the last may be short).

    One windowed reduction: the short block is padded inside it, where slicing off the
    whole blocks first would make XLA copy the update (about 3x the time at P = 1e6).
    """
    blocks = max(1, math.ceil(x.shape[0] / block_size))
    padding = [(0, blocks * block_size - x.shape[0])]
    return jax.lax.reduce_window(
        jnp.abs(x), 0.0, jax.lax.max, (block_size,), (block_size,), padding
    )


def _per_element(per_block: jax.Array, block_size: int, size: int) -> jax.Array:
    """Each block's value repeated over its `block_size` elements, `[size]`."""
    return jnp.broadcast_to(per_block[:, None], (per_block.shape[0], block_size)).reshape(-1)[:size]


def _int8_codec(size: int, block_size: int) -> Codec:
    if block_size < 1:
        raise ValueError(f"int8 codec: block_size must be >= 1, got {block_size}")
    num_blocks = max(1, math.ceil(size / block_size))

    def encode(x, residual, key):
        return quantize_int8(x, key, block_size), residual

    def decode(payload):
        return dequantize_int8(*payload, block_size)

    return Codec("int8", size, encode, decode, size + 4 * num_blocks, 0)


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The `k` entries of `x` `[P]` largest in magnitude: `(values, indices int32)`, largest first.

    Ties go to the lower index; `selection.top_k_indices` says how they are found.
    """
    indices = selection.top_k_indices(x, k)
    return x[indices], indices


def scatter(values: jax.Array, indices: jax.Array, size: int) -> jax.Array:
    """The dense float32 `[size]` vector with `values` at `indices` and zeros elsewhere."""
    return jnp.zeros((size,), jnp.float32).at[indices].add(values.astype(jnp.float32))


def _topk_codec(size: int, fraction: float) -> Codec:
    if not 0 < fraction <= 1:
        raise ValueError(f"topk codec: fraction must be in (0, 1], got {fraction}")
    k = max(1, min(size, math.ceil(fraction * size)))

    def encode(x, residual, key):
        del key
        corrected = x + residual
        values, indices = top_k(corrected, k)
        return (values, indices), corrected.at[indices].set(0.0)

    def decode(payload):
        return scatter(*payload, size)

    return Codec("topk", size, encode, decode, 8 * k, size)
