"""Tests of hierfl.kernels aggregation means and robust statistics against float64 numpy.

The weighted semantics documented in kernels/aggregation.py ("each update counts as
weights[k] copies of itself") are checked independently: integer weights are expanded
into repeated rows with np.repeat and compared with the plain, unweighted numpy statistic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl.kernels import coordinate_median, segment_weighted_mean, trimmed_mean, weighted_mean

FAST = settings(max_examples=30, deadline=None)
TRAILING_SHAPES = [(), (3,), (2, 5)]
TOL = {"rtol": 1e-5, "atol": 1e-5}

jit_segment_mean = jax.jit(segment_weighted_mean, static_argnums=3)
CASES = 40
"""Random cases per shape in the weighted robust tests, checked in one vmapped call."""

# --- numpy references (float64) ----------------------------------------------------------


def np_trim_mean(stack, proportion):
    """scipy.stats.trim_mean's convention: cut int(proportion * n) sorted values from each end."""
    stack = np.asarray(stack, np.float64)
    n = stack.shape[0]
    cut = int(proportion * n)
    return np.sort(stack, axis=0)[cut : n - cut].mean(axis=0)


def np_trim_mean_cut(stack, cut):
    """The mean after removing exactly `cut` sorted values from each end."""
    stack = np.asarray(stack, np.float64)
    return np.sort(stack, axis=0)[cut : stack.shape[0] - cut].mean(axis=0)


def expand(stack, weights):
    """Each row repeated weights[k] times: an update that counts as weights[k] copies of itself."""
    return np.repeat(np.asarray(stack, np.float64), np.asarray(weights, np.int64), axis=0)


def np_segment_mean(stack, weights, ids, num_segments):
    out = np.zeros((num_segments, *stack.shape[1:]))
    for s in range(num_segments):
        rows = ids == s
        total = np.sum(weights[rows], dtype=np.float64)
        if total > 0:
            out[s] = np.average(
                stack[rows].astype(np.float64), axis=0, weights=weights[rows].astype(np.float64)
            )
    return out


def random_case(rng, k, trailing, max_weight=4):
    stack = rng.normal(size=(k, *trailing)).astype(np.float32)
    weights = rng.integers(0, max_weight + 1, size=k)
    return stack, weights


# --- weighted_mean and segment_weighted_mean -------------------------------------------------


def test_weighted_mean_hand_example():
    stack = jnp.array([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    # (1*1 + 3*10 + 0*100) / 4 and (1*2 + 3*20) / 4
    np.testing.assert_allclose(weighted_mean(stack, jnp.array([1.0, 3.0, 0.0])), [7.75, 15.5])


@pytest.mark.parametrize("trailing", TRAILING_SHAPES)
def test_weighted_mean_matches_numpy_average(trailing):
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(9, *trailing)).astype(np.float32)
    weights = rng.uniform(0, 100, size=9).astype(np.float32)
    out = weighted_mean(jnp.asarray(stack), jnp.asarray(weights))
    assert out.shape == trailing and out.dtype == jnp.float32
    np.testing.assert_allclose(
        out, np.average(stack.astype(np.float64), axis=0, weights=weights.astype(np.float64)), **TOL
    )


def test_weighted_mean_with_integer_weights_equals_mean_of_repeated_rows():
    rng = np.random.default_rng(1)
    stack, weights = random_case(rng, 8, (6,))
    weights[0] = 5  # at least one positive weight
    out = weighted_mean(jnp.asarray(stack), jnp.asarray(weights, jnp.int32))
    np.testing.assert_allclose(out, expand(stack, weights).mean(axis=0), **TOL)


def test_weighted_mean_of_zero_total_weight_is_zero():
    out = weighted_mean(jnp.ones((3, 4)), jnp.zeros(3))
    np.testing.assert_array_equal(out, np.zeros(4))


def test_segment_weighted_mean_hand_example():
    stack = jnp.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    weights = jnp.array([1.0, 1.0, 3.0, 0.5, 2.0])
    ids = jnp.array([0, 2, 0, 2, 5])  # id 5 is padding; segment 1 is empty
    out = segment_weighted_mean(stack, weights, ids, 3)
    # segment 0: (1*1 + 3*3) / 4; segment 2: (1*2 + 0.5*4) / 1.5
    np.testing.assert_allclose(out, [[2.5], [0.0], [4.0 / 1.5]], rtol=1e-6)


@FAST
@given(
    k=st.sampled_from([1, 5, 12]), num_segments=st.sampled_from([1, 4]), seed=st.integers(0, 2**16)
)
def test_segment_weighted_mean_matches_numpy(k, num_segments, seed):
    rng = np.random.default_rng(seed)
    stack = rng.normal(size=(k, 2, 8)).astype(np.float32)
    weights = rng.uniform(0, 10, size=k).astype(np.float32)
    weights[rng.uniform(size=k) < 0.2] = 0.0
    ids = rng.integers(-1, num_segments + 1, size=k).astype(np.int32)  # some out of range
    out = jit_segment_mean(jnp.asarray(stack), jnp.asarray(weights), jnp.asarray(ids), num_segments)
    assert out.shape == (num_segments, 2, 8)
    np.testing.assert_allclose(
        out, np_segment_mean(stack, weights, ids, num_segments), rtol=1e-5, atol=1e-5
    )


def test_segment_means_weighted_by_their_totals_give_the_whole_mean():
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(10, 3)).astype(np.float32)
    weights = rng.uniform(1, 5, size=10).astype(np.float32)
    ids = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    means = segment_weighted_mean(jnp.asarray(stack), jnp.asarray(weights), jnp.asarray(ids), 3)
    totals = np.array([weights[ids == s].sum() for s in range(3)])
    np.testing.assert_allclose(
        weighted_mean(means, jnp.asarray(totals)),
        weighted_mean(jnp.asarray(stack), jnp.asarray(weights)),
        **TOL,
    )


# --- coordinate_median -------------------------------------------------------------------


def test_median_hand_examples():
    stack = jnp.array([[0.0, 5.0], [10.0, -1.0], [40.0, 3.0], [7.0, 100.0]])
    np.testing.assert_allclose(coordinate_median(stack), [8.5, 4.0])  # (7 + 10) / 2, (3 + 5) / 2
    # weights 1, 2, 1, 0 -> first coordinate as [0, 10, 10, 40]: 10; second as [5, -1, -1, 3]: (-1 + 3) / 2
    np.testing.assert_allclose(
        coordinate_median(stack, jnp.array([1.0, 2.0, 1.0, 0.0])), [10.0, 1.0]
    )
    # weights 3, 1, 0, 0 -> [0, 0, 0, 10]: 0; [5, 5, 5, -1]: 5
    np.testing.assert_allclose(coordinate_median(stack, jnp.array([3, 1, 0, 0])), [0.0, 5.0])


@pytest.mark.parametrize(
    ("k", "trailing"), [(1, (2, 5)), (2, (2, 5)), (5, (2, 5)), (8, (2, 5)), (5, ()), (4, (3,))]
)
def test_unweighted_median_matches_numpy(k, trailing):
    stack = np.random.default_rng(k).normal(size=(k, *trailing)).astype(np.float32)
    out = coordinate_median(jnp.asarray(stack))
    assert out.shape == trailing
    np.testing.assert_allclose(out, np.median(stack.astype(np.float64), axis=0), **TOL)


def test_median_with_equal_weights_is_the_unweighted_median():
    stack = np.random.default_rng(3).normal(size=(6, 10)).astype(np.float32)
    for weight in (1.0, 0.25, 7.0):
        out = coordinate_median(jnp.asarray(stack), jnp.full(6, weight))
        np.testing.assert_allclose(out, np.median(stack, axis=0), **TOL)


@pytest.mark.parametrize("k", [1, 2, 7])
def test_weighted_median_equals_median_of_repeated_rows(k):
    rng = np.random.default_rng(k)
    stacks = rng.normal(size=(CASES, k, 16)).astype(np.float32)
    stacks[: CASES // 3] = np.round(stacks[: CASES // 3])  # ties across updates
    weights = rng.integers(0, 5, size=(CASES, k))  # 0 acts as an absent update
    out = jax.vmap(coordinate_median)(jnp.asarray(stacks), jnp.asarray(weights, jnp.float32))
    for c in range(CASES):
        if weights[c].sum() == 0:
            np.testing.assert_array_equal(out[c], np.zeros(16))
        else:
            np.testing.assert_allclose(
                out[c], np.median(expand(stacks[c], weights[c]), axis=0), **TOL
            )


def test_zero_weight_outliers_do_not_move_the_median():
    stack = jnp.array([[1.0], [2.0], [3.0], [1e9], [-1e9]])
    out = coordinate_median(stack, jnp.array([1.0, 1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(out, [2.0])


# --- trimmed_mean ------------------------------------------------------------------------


def test_trimmed_mean_hand_examples():
    stack = jnp.array([[1.0], [2.0], [3.0], [4.0], [100.0]])
    np.testing.assert_allclose(trimmed_mean(stack, 0.2), [3.0])  # drop 1 and 100: (2 + 3 + 4) / 3
    np.testing.assert_allclose(
        trimmed_mean(stack, 0.19), [22.0]
    )  # int(0.95) = 0: plain mean 110 / 5
    np.testing.assert_allclose(trimmed_mean(stack, 0.4), [3.0])  # int(2.0) = 2: only 3 is left
    # weighted, fractional cut: values 0, 10, 40 with weights 1, 2, 1, beta 0.2 -> 0.8 of 4 cut from each end,
    # kept weights 0.2, 2, 0.2: (0 * 0.2 + 10 * 2 + 40 * 0.2) / 2.4
    values = jnp.array([[0.0], [10.0], [40.0]])
    np.testing.assert_allclose(
        trimmed_mean(values, 0.2, jnp.array([1.0, 2.0, 1.0])), [28.0 / 2.4], rtol=1e-6
    )
    # beta 0: the weighted mean (0 + 20 + 40) / 4
    np.testing.assert_allclose(
        trimmed_mean(values, 0.0, jnp.array([1.0, 2.0, 1.0])), [15.0], rtol=1e-6
    )


@pytest.mark.parametrize(
    ("k", "beta"),
    [
        (1, 0.1),
        (1, 0.45),
        (7, 0.1),
        (7, 0.25),
        (7, 0.3),
        (10, 0.0),
        (10, 0.1),
        (10, 0.25),
        (10, 0.45),
    ],
)
def test_unweighted_trimmed_mean_matches_numpy(k, beta):
    stack = np.random.default_rng(k).standard_cauchy(size=(k, 3, 2)).astype(np.float32)
    out = trimmed_mean(jnp.asarray(stack), beta)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, np_trim_mean(stack, beta), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("k", "cut"), [(1, 0), (1, 9), (3, 3), (8, 0), (8, 3), (8, 9)])
def test_weighted_trimmed_mean_equals_trimmed_mean_of_repeated_rows(k, cut):
    # Integer weights summing to 20 and beta = cut / 20: the weighted cut is a whole number of copies,
    # so it equals the unweighted trimmed mean of the repeated rows.
    rng = np.random.default_rng(10 * k + cut)
    stacks = rng.normal(size=(CASES, k, 16)).astype(np.float32)
    weights = rng.multinomial(20, np.ones(k) / k, size=CASES)
    out = jax.vmap(lambda s, w: trimmed_mean(s, cut / 20, w))(
        jnp.asarray(stacks), jnp.asarray(weights, jnp.float32)
    )
    for c in range(CASES):
        np.testing.assert_allclose(
            out[c], np_trim_mean_cut(expand(stacks[c], weights[c]), cut), rtol=1e-4, atol=1e-5
        )


def test_weighted_trimmed_mean_with_unit_weights_matches_unweighted_when_cut_is_whole():
    stack = np.random.default_rng(4).normal(size=(10, 7)).astype(np.float32)
    for beta in (0.1, 0.2, 0.3, 0.4):
        out = trimmed_mean(jnp.asarray(stack), beta, jnp.ones(10))
        np.testing.assert_allclose(out, np_trim_mean(stack, beta), rtol=1e-5, atol=1e-5)


def test_trimmed_mean_ignores_zero_weights_and_zero_total():
    stack = jnp.array([[1.0], [2.0], [3.0], [1e9]])
    np.testing.assert_allclose(trimmed_mean(stack, 0.0, jnp.array([1.0, 1.0, 1.0, 0.0])), [2.0])
    np.testing.assert_array_equal(trimmed_mean(stack, 0.25, jnp.zeros(4)), [0.0])


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7])
def test_trimmed_mean_rejects_beta_outside_range(beta):
    with pytest.raises(ValueError, match="beta must be in"):
        trimmed_mean(jnp.ones((4, 2)), beta)


# --- jit and vmap ------------------------------------------------------------------------


def test_robust_kernels_under_jit():
    rng = np.random.default_rng(5)
    stack, weights = random_case(rng, 7, (4,))
    weights[:2] = [2, 3]
    s, w = jnp.asarray(stack), jnp.asarray(weights, jnp.float32)
    np.testing.assert_allclose(
        jax.jit(coordinate_median)(s, w), np.median(expand(stack, weights), axis=0), **TOL
    )
    np.testing.assert_allclose(jax.jit(coordinate_median)(s), np.median(stack, axis=0), **TOL)
    # beta is a Python float (it sets static slice bounds): close over it, or mark it static
    np.testing.assert_allclose(
        jax.jit(lambda s: trimmed_mean(s, 0.3))(s), np_trim_mean(stack, 0.3), **TOL
    )
    total = int(weights.sum())
    jitted = jax.jit(trimmed_mean, static_argnums=1)
    np.testing.assert_allclose(
        jitted(s, 2 / total, w), np_trim_mean_cut(expand(stack, weights), 2), **TOL
    )
    jitted_mean = jax.jit(segment_weighted_mean, static_argnums=3)
    ids = np.array([0, 1, 0, 1, 0, 1, 1])
    np.testing.assert_allclose(
        jitted_mean(s, w, jnp.asarray(ids), 2), np_segment_mean(stack, weights, ids, 2), **TOL
    )


def test_robust_kernels_vmap_over_independent_stacks():
    rng = np.random.default_rng(6)
    stacks = rng.normal(size=(3, 5, 4)).astype(np.float32)
    weights = rng.integers(1, 4, size=(3, 5))
    s, w = jnp.asarray(stacks), jnp.asarray(weights, jnp.float32)
    medians = jax.vmap(coordinate_median)(s, w)
    means = jax.vmap(weighted_mean)(s, w)
    trimmed = jax.vmap(lambda s: trimmed_mean(s, 0.2))(s)
    for b in range(3):
        np.testing.assert_allclose(
            medians[b], np.median(expand(stacks[b], weights[b]), axis=0), **TOL
        )
        np.testing.assert_allclose(means[b], expand(stacks[b], weights[b]).mean(axis=0), **TOL)
        np.testing.assert_allclose(trimmed[b], np_trim_mean(stacks[b], 0.2), **TOL)
