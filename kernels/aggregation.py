"""Aggregation kernels: weighted sums of K stacked updates, whole or per segment (edge).

An update stack is an array `[K, ...]`; weights are `[K]`. Sums, not means, are returned:
a *summary* is a weighted sum plus its total weight, and sums compose across tiers
(an edge's sum of device sums is the sum over its subtree), while means do not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_sum(stack: jax.Array, weights: jax.Array) -> jax.Array:
    """`sum_k weights[k] * stack[k]`, shape `stack.shape[1:]`, accumulated in the stack dtype."""
    return jnp.tensordot(weights.astype(stack.dtype), stack, axes=(0, 0))


def segment_weighted_sum(stack: jax.Array, weights: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Per-segment weighted sums: out[s] = sum over k with segment_ids[k] == s of weights[k] * stack[k].

    Shape `[num_segments, *stack.shape[1:]]`. `segment_ids` must lie in [0, num_segments);
    out-of-range ids are dropped (jax.ops.segment_sum semantics), which is how padded
    updates are excluded.
    """
    weighted = stack * weights.astype(stack.dtype).reshape((-1,) + (1,) * (stack.ndim - 1))
    return jax.ops.segment_sum(weighted, segment_ids, num_segments=num_segments)
