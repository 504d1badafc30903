"""Tier rules and the Krum kernels against numbers worked out by hand."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from hierfl.core.algorithms import mean_delta
from hierfl.core.rules import reduce, rule_mean
from hierfl.kernels import krum_scores, multi_krum
from hierfl.topology import TierRule

# Five 2-d updates: a, b, c near the origin, e in their middle, d far away (the attacker).
# Squared distances: a-b 2.25, a-c 4, a-e 0.5, a-d 200, b-c 6.25, b-e 1.25, b-d 172.25,
# c-e 2.5, c-d 164, e-d 180.5.
A, B, C, D, E = [0.0, 0.0], [1.5, 0.0], [0.0, 2.0], [10.0, 10.0], [0.5, 0.5]
STACK = jnp.array([A, B, C, D, E])
# With byzantine = 1, each sums its 5 - 1 - 2 = 2 nearest: a 0.5 + 2.25, b 1.25 + 2.25,
# c 2.5 + 4, d 164 + 172.25, e 0.5 + 1.25.
SCORES = [2.75, 3.5, 6.5, 336.25, 1.75]


def test_krum_scores_sum_the_nearest_neighbours():
    np.testing.assert_allclose(
        np.asarray(krum_scores(STACK, jnp.ones(5, bool), 1)), SCORES, rtol=1e-6
    )


def test_absent_updates_are_nobodys_neighbour():
    far = jnp.concatenate([STACK, jnp.array([[0.2, 0.2]])])
    present = jnp.array([True] * 5 + [False])
    scores = np.asarray(krum_scores(far, present, 1))
    np.testing.assert_allclose(scores[:5], SCORES, rtol=1e-6)
    assert scores[5] == np.inf


def test_krum_picks_the_best_scored_update():
    np.testing.assert_allclose(np.asarray(multi_krum(STACK, jnp.ones(5), 1, select=1)), E)


def test_multi_krum_averages_the_best_and_by_default_all_but_f():
    # Best three: e, a, b -> mean ((0.5 + 0 + 1.5) / 3, (0.5 + 0 + 0) / 3).
    np.testing.assert_allclose(
        np.asarray(multi_krum(STACK, jnp.ones(5), 1, select=3)), [2 / 3, 1 / 6], rtol=1e-6
    )
    # select None = 5 - 1 = 4: e, a, b, c -> (2 / 4, 2.5 / 4).
    np.testing.assert_allclose(
        np.asarray(multi_krum(STACK, jnp.ones(5), 1)), [0.5, 0.625], rtol=1e-6
    )
    # Weights weigh the chosen ones: e counts twice -> (2 * e + a + b) / 4.
    weights = jnp.array([1.0, 1.0, 1.0, 1.0, 2.0])
    np.testing.assert_allclose(
        np.asarray(multi_krum(STACK, weights, 1, select=3)), [0.625, 0.25], rtol=1e-6
    )


def test_rules_by_hand():
    stack = jnp.array([[1.0], [2.0], [3.0], [100.0]])
    ones = jnp.ones(4)
    assert float(rule_mean(TierRule("mean"), stack, ones)[0]) == pytest.approx(26.5)
    assert float(rule_mean(TierRule("median"), stack, ones)[0]) == pytest.approx(2.5)
    # An update with 5 examples is 5 copies: [1, 2, 3 x 5, 100] has median 3.
    assert float(
        rule_mean(TierRule("median"), stack, jnp.array([1.0, 1.0, 5.0, 1.0]))[0]
    ) == pytest.approx(3.0)
    # ... unless every sender counts once.
    uniform = TierRule("median", weighting="uniform")
    assert float(rule_mean(uniform, stack, jnp.array([1.0, 1.0, 5.0, 1.0]))[0]) == pytest.approx(
        2.5
    )
    # beta = 0.25 of the weight cut from each end: 1 and 100 go, mean(2, 3).
    assert float(rule_mean(TierRule("trimmed_mean", beta=0.25), stack, ones)[0]) == pytest.approx(
        2.5
    )
    # krum, f = 0 on 4 one-d points: 1, 2, 3 each have nearest-2 sums 1 + 4, 1 + 1, 1 + 4 -> 2 wins.
    assert float(rule_mean(TierRule("krum", byzantine=0), stack, ones)[0]) == pytest.approx(2.0)


def test_reduce_clips_then_passes_up_the_examples_heard_from():
    # [3, 4] has norm 5 -> clipped to [0.6, 0.8]; [0.3, 0.4] is inside the ball.
    stack = jnp.array([[3.0, 4.0], [0.3, 0.4], [9.0, 9.0]])
    weights = jnp.array([1.0, 3.0, 0.0])
    summary = reduce(TierRule("mean", clip_norm=1.0), stack, weights)
    assert float(summary.weight) == 4.0
    np.testing.assert_allclose(np.asarray(summary.delta_sum), [0.6 + 0.9, 0.8 + 1.2], rtol=1e-6)
    robust = reduce(TierRule("median", clip_norm=1.0), stack, weights)
    assert float(robust.weight) == 4.0
    # Weighted median of {0.6 x1, 0.3 x3} per coordinate is the 0.3 side.
    np.testing.assert_allclose(np.asarray(mean_delta(robust)), [0.3, 0.4], rtol=1e-6)


def test_updates_of_weight_zero_never_count():
    stack = jnp.array([[1.0], [2.0], [3.0], [1e6]])
    weights = jnp.array([1.0, 1.0, 1.0, 0.0])
    for rule in (
        TierRule("median"),
        TierRule("trimmed_mean", beta=0.0),
        TierRule("multi_krum", byzantine=0),
    ):
        assert float(rule_mean(rule, stack, weights)[0]) == pytest.approx(2.0), rule.rule
