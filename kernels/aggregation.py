"""Aggregation kernels over a stack of K updates `[K, P]` (or `[K, ...]`) with weights `[K]`.

- `weighted_sum`, `segment_weighted_sum`: sums, not means. A *summary* is a weighted sum
  plus its total weight, and sums compose across tiers (an edge's sum of device sums is
  the sum over its subtree), while means do not.
- `weighted_mean`, `segment_weighted_mean`: the same divided by the total weight (zero
  where a segment has no weight).
- `coordinate_median`, `trimmed_mean`: the robust statistics, per coordinate.
- `krum_scores`, `multi_krum`: Krum's distance scores and the mean of the best-scored updates.

How weights enter the robust statistics: each update counts as `weights[k]` copies of
itself (its example count), not as one vote, so a device with 10x the data has 10x the
say, exactly as in the weighted mean. The weighted median is the value where the
cumulative weight, in sorted order, crosses half the total (the mean of the two
neighbours when it lands exactly on half, so equal weights give numpy's median). The
weighted trimmed mean drops `beta` of the total *weight* from each end (an update may be
cut partly) and averages the rest. With `weights=None` every update counts once and
`trimmed_mean` drops `floor(beta * K)` whole updates from each end (scipy's
`trim_mean` convention). Updates of weight 0 never influence a result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EXACT = jax.lax.Precision.HIGHEST
"""Full float32 products: on GPUs the default precision of a float32 dot may be TF32."""

MATMUL_SEGMENTS = 64
"""Up to this many segments a segment sum is a one-hot matmul (gemv speed); beyond, a scatter."""


def weighted_sum(stack: jax.Array, weights: jax.Array) -> jax.Array:
    """`sum_k weights[k] * stack[k]`, shape `stack.shape[1:]`, accumulated in the stack dtype."""
    return jnp.tensordot(weights.astype(stack.dtype), stack, axes=(0, 0), precision=EXACT)


def weighted_mean(stack: jax.Array, weights: jax.Array) -> jax.Array:
    """`weighted_sum / sum(weights)`; zeros when the total weight is 0."""
    return weighted_sum(stack, weights) * _inverse(weights.sum()).astype(stack.dtype)


def segment_weighted_sum(
    stack: jax.Array, weights: jax.Array, segment_ids: jax.Array, num_segments: int
) -> jax.Array:
    """Per-segment weighted sums: out[s] = sum over k with segment_ids[k] == s of weights[k] * stack[k].

    Shape `[num_segments, *stack.shape[1:]]`. `segment_ids` must lie in [0, num_segments);
    out-of-range ids are dropped (jax.ops.segment_sum semantics), which is how padded
    updates are excluded.
    """
    if num_segments <= MATMUL_SEGMENTS:
        # One row of weights per segment (zero where another segment's update sits): a
        # [S, K] x [K, ...] product streams the stack once, where a scatter-add is ~10x slower.
        rows = jax.nn.one_hot(
            segment_ids, num_segments, dtype=stack.dtype, axis=0
        ) * weights.astype(stack.dtype)
        return jnp.tensordot(rows, stack, axes=(1, 0), precision=EXACT)
    weighted = stack * _expand(weights.astype(stack.dtype), stack.ndim)
    return jax.ops.segment_sum(weighted, segment_ids, num_segments=num_segments)


def segment_weighted_mean(
    stack: jax.Array, weights: jax.Array, segment_ids: jax.Array, num_segments: int
) -> jax.Array:
    """Per-segment weighted means `[num_segments, ...]`; zeros for a segment without weight."""
    totals = jax.ops.segment_sum(weights, segment_ids, num_segments=num_segments)
    sums = segment_weighted_sum(stack, weights, segment_ids, num_segments)
    return sums * _expand(_inverse(totals).astype(stack.dtype), stack.ndim)


def coordinate_median(stack: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """The (weighted) median of every coordinate over the K updates, shape `stack.shape[1:]`.

    See the module docstring for how weights count; zeros when the total weight is 0.
    """
    if weights is None:
        return jnp.median(stack, axis=0)
    values, _, cumulative, total = _sorted_by_value(stack, weights)
    lower = jnp.argmax(2 * cumulative >= total, axis=0)
    upper = jnp.argmax(2 * cumulative > total, axis=0)
    pick = lambda index: jnp.take_along_axis(values, index[None], axis=0)[0]  # noqa: E731
    median = 0.5 * (pick(lower) + pick(upper))
    return jnp.where(total > 0, median, jnp.zeros_like(median))


def trimmed_mean(stack: jax.Array, beta: float, weights: jax.Array | None = None) -> jax.Array:
    """The mean of every coordinate after dropping the `beta` smallest and largest share.

    `beta` in [0, 0.5). Unweighted: `floor(beta * K)` updates from each end; weighted:
    `beta` of the total weight from each end (module docstring). Shape `stack.shape[1:]`.
    """
    if not 0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean: beta must be in [0, 0.5), got {beta}")
    if weights is None:
        cut = int(beta * stack.shape[0])
        return jnp.sort(stack, axis=0)[cut : stack.shape[0] - cut].mean(axis=0)
    values, sorted_weights, cumulative, total = _sorted_by_value(stack, weights)
    low, high = beta * total, (1 - beta) * total
    kept = jnp.clip(
        jnp.minimum(cumulative, high) - jnp.maximum(cumulative - sorted_weights, low), 0, None
    )
    kept_total = kept.sum(axis=0)
    mean = (values * kept).sum(axis=0) / jnp.where(kept_total > 0, kept_total, 1)
    return jnp.where(kept_total > 0, mean, jnp.zeros_like(mean))


def krum_scores(stack: jax.Array, present: jax.Array, byzantine: int) -> jax.Array:
    """Krum's score of every update `[K]`: the sum of squared L2 distances to its nearest neighbours.

    With `n` updates present, each present update sums its `max(n - byzantine - 2, 1)`
    smallest squared distances to the other present updates (Blanchard et al. 2017);
    absent updates (`present` False: padding, rejected) score +inf and are nobody's
    neighbour. A lone present update scores the largest float, so it still ranks first.
    `stack` is `[K, P]`; the distances come from one Gram matrix at full float32 precision.
    """
    norms = jnp.sum(stack * stack, axis=1)
    gram = jnp.matmul(stack, stack.T, precision=EXACT)
    distances = jnp.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0)
    k = stack.shape[0]
    neighbour = present[None, :] & ~jnp.eye(k, dtype=bool)
    distances = jnp.sort(jnp.where(neighbour, distances, jnp.inf), axis=1)
    count = jnp.maximum(present.sum() - byzantine - 2, 1)
    nearest = jnp.where(jnp.arange(k)[None, :] < count, distances, 0).sum(axis=1)
    nearest = jnp.where(jnp.isfinite(nearest), nearest, jnp.finfo(stack.dtype).max)
    return jnp.where(present, nearest, jnp.inf)


def multi_krum(
    stack: jax.Array, weights: jax.Array, byzantine: int, select: int | None = None
) -> jax.Array:
    """The weighted mean of the `select` updates with the best Krum scores (shape `[P]`).

    Updates of weight 0 are absent. `select` None averages `n - byzantine` of the `n`
    present ones; `select=1` is Krum itself (the single best update). Scores count every
    present update once, whatever its weight; the weights only weigh the chosen ones.
    Zeros when no update is present.
    """
    present = weights > 0
    scores = krum_scores(stack, present, byzantine)
    rank = jnp.argsort(jnp.argsort(scores))
    count = present.sum() - byzantine if select is None else jnp.minimum(select, present.sum())
    chosen = present & (rank < jnp.maximum(count, 1))
    return weighted_mean(stack, jnp.where(chosen, weights, 0))


def _sorted_by_value(stack: jax.Array, weights: jax.Array) -> tuple[jax.Array, ...]:
    """Each coordinate's values sorted over K, their weights, the running sum of those, the total."""
    broadcast = jnp.broadcast_to(_expand(weights.astype(stack.dtype), stack.ndim), stack.shape)
    values, sorted_weights = jax.lax.sort((stack, broadcast), dimension=0, num_keys=1)
    cumulative = jnp.cumsum(sorted_weights, axis=0)
    return values, sorted_weights, cumulative, cumulative[-1]


def _expand(weights: jax.Array, ndim: int) -> jax.Array:
    """`[K]` weights shaped `[K, 1, ...]` to broadcast against a `[K, ...]` stack."""
    return weights.reshape(weights.shape + (1,) * (ndim - weights.ndim))


def _inverse(total: jax.Array) -> jax.Array:
    """1 / total, or 0 where total is 0 (nobody contributed)."""
    return jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)
