"""How an aggregating tier (a plant's edge, the cloud) combines the updates it receives.

A tier's rule comes from the topology (`[aggregation.edge]`, `[aggregation.cloud]`,
`[plants.aggregation]`): `mean` (FedAvg's example-weighted mean), or a robust rule for
federations where some senders misbehave (broken sensors, drifting firmware, attackers):
coordinate-wise `median`, `trimmed_mean` (beta), `krum` and `multi_krum`. Any rule may
first clip every received update to an L2 norm (`clip_norm`).

Example counts in robust rules (`weighting`): with "examples" (the default) an update
counts as many times as the examples behind it, exactly as in the mean: the median and
trimmed mean are weighted statistics (`hierfl.kernels.aggregation`), multi-Krum averages
its chosen updates by examples. With "uniform" every sender counts once, so a sender
that overstates its example count gains nothing. Krum's distance scores always count
each sender once. Whatever the rule, the tier passes up the total examples it heard
from, so the weights of the tier above stay example counts.

`reduce(rule, stack, weights)` is the one function both the simulator and the runtime
call: a `[K, P]` stack of flat updates and their weights in, a `Summary` out whose mean
delta is the rule's result. Updates of weight 0 (absent, rejected) never count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hierfl.core.algorithms import Summary
from hierfl.kernels import (
    clip_by_l2,
    coordinate_median,
    multi_krum,
    segment_weighted_sum,
    trimmed_mean,
    weighted_mean,
    weighted_sum,
)
from hierfl.topology.schema import TierRule


def clip(rule: TierRule, stack: jax.Array) -> jax.Array:
    """The stack with every update's L2 norm clipped to `rule.clip_norm` (unchanged without one)."""
    if rule.clip_norm is None:
        return stack
    clipped, _ = clip_by_l2(stack, rule.clip_norm)
    return clipped


def rule_mean(rule: TierRule, stack: jax.Array, weights: jax.Array) -> jax.Array:
    """The rule's combined update `[P]` of a clipped `[K, P]` stack with weights `[K]`."""
    if rule.weighting == "uniform" and rule.rule != "mean":
        weights = (weights > 0).astype(weights.dtype)
    if rule.rule == "mean":
        return weighted_mean(stack, weights)
    if rule.rule == "median":
        return coordinate_median(stack, weights)
    if rule.rule == "trimmed_mean":
        return trimmed_mean(stack, rule.beta, weights)
    if rule.rule == "krum":
        return multi_krum(stack, weights, rule.byzantine, select=1)
    if rule.rule == "multi_krum":
        return multi_krum(stack, weights, rule.byzantine, rule.select)
    raise ValueError(f"unknown aggregation rule {rule.rule!r}")


def reduce(rule: TierRule, stack: jax.Array, weights: jax.Array) -> Summary:
    """What a tier makes of the updates it received: a summary of the rule's result.

    `stack` `[K, P]` flat deltas, `weights` `[K]` example counts (0 = absent). The
    summary's weight is the total examples heard from and its `delta_sum` is the rule's
    update times that weight, so `mean_delta` gives the rule's update and the summary
    travels up like any other.
    """
    total = weights.sum()
    stack = clip(rule, stack)
    if rule.rule == "mean":
        return Summary(weighted_sum(stack, weights), total)
    return Summary(rule_mean(rule, stack, weights) * total, total)


def segment_reduce(
    segment_rules: tuple[TierRule, ...],
    stack: jax.Array,
    weights: jax.Array,
    segment_ids: jax.Array,
    num_segments: int,
) -> Summary:
    """`reduce`'s weighted mean for many tiers at once, as per-segment sums that can be
    streamed over chunks of senders: what the simulator's edges do with their devices.

    Row `k` of `stack` goes to segment `segment_ids[k]` (rows with an id outside
    `[0, num_segments)`, e.g. padding, are dropped) and is first clipped to that segment's
    rule's `clip_norm`. Returns `[num_segments, P]` delta sums and `[num_segments]` weights.
    A segment whose rule is robust needs the whole stack: its caller replaces its row by
    `reduce` over all of its rows.
    """
    norms = [rule.clip_norm for rule in segment_rules]
    if any(norm is not None for norm in norms):
        limits = jnp.array([jnp.inf if n is None else n for n in norms] + [jnp.inf], jnp.float32)
        stack, _ = clip_by_l2(stack, limits[jnp.clip(segment_ids, 0, num_segments)])
    delta_sum = segment_weighted_sum(stack, weights, segment_ids, num_segments)
    return Summary(delta_sum, jax.ops.segment_sum(weights, segment_ids, num_segments=num_segments))
