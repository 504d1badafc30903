"""Tests of hierfl.kernels (aggregation): exact against float64 numpy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl.kernels import segment_weighted_sum, weighted_sum

FAST = settings(max_examples=25, deadline=None)
TRAILING_SHAPES = [(), (3,), (2, 5), (4, 1, 3)]


def reference_weighted_sum(stack, weights):
    out = np.zeros(stack.shape[1:], np.float64)
    for k in range(len(weights)):
        out += float(weights[k]) * stack[k].astype(np.float64)
    return out


def reference_segment_sum(stack, weights, segment_ids, num_segments):
    out = np.zeros((num_segments, *stack.shape[1:]), np.float64)
    for k, s in enumerate(segment_ids):
        if 0 <= s < num_segments:
            out[s] += float(weights[k]) * stack[k].astype(np.float64)
    return out


def test_weighted_sum_hand_example():
    stack = jnp.array([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    weights = jnp.array([0.5, 2.0, 0.0])
    np.testing.assert_allclose(weighted_sum(stack, weights), [20.5, 41.0])


@pytest.mark.parametrize("trailing", TRAILING_SHAPES)
def test_weighted_sum_matches_numpy(trailing):
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(7, *trailing)).astype(np.float32)
    weights = rng.uniform(0, 50, size=7).astype(np.float32)
    out = weighted_sum(jnp.asarray(stack), jnp.asarray(weights))
    assert out.shape == trailing and out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference_weighted_sum(stack, weights), rtol=1e-5, atol=1e-4)


def test_weighted_sum_casts_weights_to_the_stack_dtype():
    stack = jnp.ones((3, 2), jnp.float32)
    out = weighted_sum(stack, jnp.array([1, 2, 3], jnp.int32))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, [6.0, 6.0])


def test_segment_weighted_sum_hand_example():
    stack = jnp.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    weights = jnp.array([1.0, 1.0, 2.0, 0.5, 3.0])
    ids = jnp.array([0, 2, 0, 2, 1])
    out = segment_weighted_sum(stack, weights, ids, 3)
    np.testing.assert_allclose(out, [[1 + 6], [15], [2 + 2]])


def test_segment_weighted_sum_drops_out_of_range_ids():
    stack = jnp.arange(1.0, 6.0)[:, None] * jnp.ones((1, 2))  # rows 1..5
    weights = jnp.ones(5)
    ids = jnp.array([0, 2, -1, 1, 7])  # -1 and 7 are padding
    out = segment_weighted_sum(stack, weights, ids, 3)
    np.testing.assert_allclose(out, [[1, 1], [4, 4], [2, 2]])


def test_segment_weighted_sum_empty_segment_is_zero():
    out = segment_weighted_sum(jnp.ones((2, 3)), jnp.ones(2), jnp.array([0, 0]), 4)
    np.testing.assert_array_equal(out[1:], np.zeros((3, 3)))
    np.testing.assert_array_equal(out[0], [2, 2, 2])


@FAST
@given(
    k=st.integers(1, 12),
    num_segments=st.integers(1, 5),
    trailing=st.sampled_from(TRAILING_SHAPES),
    seed=st.integers(0, 2**16),
)
def test_segment_weighted_sum_matches_numpy(k, num_segments, trailing, seed):
    rng = np.random.default_rng(seed)
    stack = rng.normal(size=(k, *trailing)).astype(np.float32)
    weights = rng.uniform(0, 10, size=k).astype(np.float32)
    ids = rng.integers(-1, num_segments + 2, size=k).astype(np.int32)  # some out of range
    out = segment_weighted_sum(
        jnp.asarray(stack), jnp.asarray(weights), jnp.asarray(ids), num_segments
    )
    assert out.shape == (num_segments, *trailing)
    np.testing.assert_allclose(
        out, reference_segment_sum(stack, weights, ids, num_segments), rtol=1e-5, atol=1e-4
    )


def test_segment_sums_compose_to_the_whole_sum():
    # Summaries compose: summing the per-edge sums gives the sum over all devices.
    rng = np.random.default_rng(1)
    stack = jnp.asarray(rng.normal(size=(9, 4, 2)).astype(np.float32))
    weights = jnp.asarray(rng.uniform(1, 5, size=9).astype(np.float32))
    ids = jnp.array([0, 0, 1, 2, 1, 0, 2, 2, 1])
    per_edge = segment_weighted_sum(stack, weights, ids, 3)
    np.testing.assert_allclose(
        per_edge.sum(axis=0), weighted_sum(stack, weights), rtol=1e-5, atol=1e-5
    )


def test_kernels_are_jit_compatible():
    rng = np.random.default_rng(2)
    stack = jnp.asarray(rng.normal(size=(6, 3, 2)).astype(np.float32))
    weights = jnp.asarray(rng.uniform(0, 1, size=6).astype(np.float32))
    ids = jnp.array([1, 0, 1, 3, 0, 1])
    jitted_segments = jax.jit(segment_weighted_sum, static_argnums=3)
    np.testing.assert_allclose(
        jax.jit(weighted_sum)(stack, weights),
        reference_weighted_sum(np.asarray(stack), np.asarray(weights)),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        jitted_segments(stack, weights, ids, 2),
        reference_segment_sum(np.asarray(stack), np.asarray(weights), np.asarray(ids), 2),
        rtol=1e-5,
        atol=1e-5,
    )


def test_kernels_vmap_over_a_leading_axis():
    rng = np.random.default_rng(3)
    stacks = rng.normal(size=(2, 5, 3)).astype(np.float32)
    weights = rng.uniform(0, 1, size=(2, 5)).astype(np.float32)
    out = jax.vmap(weighted_sum)(jnp.asarray(stacks), jnp.asarray(weights))
    for b in range(2):
        np.testing.assert_allclose(
            out[b], reference_weighted_sum(stacks[b], weights[b]), rtol=1e-5, atol=1e-5
        )
