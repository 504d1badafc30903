"""Tests of hierfl.kernels.privacy: L2 clipping against float64 numpy, Gaussian noise statistics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierfl.kernels import add_gaussian_noise, clip_by_l2, l2_norms

jit_clip = jax.jit(clip_by_l2)
jit_noise = jax.jit(add_gaussian_noise)


def np_clip(stack, max_norm):
    """Each row scaled by min(1, max_norm / ||row||) in float64 (a zero row stays zero)."""
    stack = np.asarray(stack, np.float64)
    norms = np.sqrt(np.sum(stack**2, axis=1))
    with np.errstate(divide="ignore"):
        scale = np.where(norms > max_norm, max_norm / norms, 1.0)
    return stack * scale[:, None], norms


def test_clip_hand_example():
    stack = jnp.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]])
    clipped, norms = clip_by_l2(stack, 1.0)
    np.testing.assert_allclose(norms, [5.0, 0.5, 0.0, 10.0], rtol=1e-6)
    np.testing.assert_allclose(
        clipped, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0], [-0.6, 0.8]], rtol=1e-6
    )


def test_l2_norms_match_numpy():
    stack = np.random.default_rng(0).normal(size=(6, 1000)).astype(np.float32) * np.float32(
        [[1e-3], [1], [10], [100], [0], [3]]
    )
    norms = l2_norms(jnp.asarray(stack))
    assert norms.shape == (6,) and norms.dtype == jnp.float32
    np.testing.assert_allclose(norms, np.linalg.norm(stack.astype(np.float64), axis=1), rtol=1e-5)


def test_l2_norms_accumulate_half_precision_in_float32():
    # 4096 entries of 1.0 in float16: the norm is 64, although the sum of squares (4096) is past what
    # float16 holds exactly in a running sum of ones (2048 + 1 rounds back to 2048).
    norms = l2_norms(jnp.ones((1, 4096), jnp.float16))
    assert norms.dtype == jnp.float32
    np.testing.assert_allclose(norms, [64.0], rtol=1e-6)


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 30.0, 1e6])
def test_clip_matches_numpy(max_norm):
    rng = np.random.default_rng(1)
    stack = (rng.normal(size=(8, 500)) * rng.uniform(0, 3, size=(8, 1))).astype(np.float32)
    clipped, norms = jit_clip(jnp.asarray(stack), max_norm)
    expected, expected_norms = np_clip(stack, max_norm)
    np.testing.assert_allclose(clipped, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(norms, expected_norms, rtol=1e-5)  # the norms before clipping
    after = np.linalg.norm(np.asarray(clipped, np.float64), axis=1)
    assert np.all(after <= max_norm * (1 + 1e-6))
    np.testing.assert_allclose(after[expected_norms > max_norm], max_norm, rtol=1e-5)


def test_clip_keeps_the_direction():
    x = np.random.default_rng(2).normal(size=(1, 300)).astype(np.float32) * 50
    clipped, _ = clip_by_l2(jnp.asarray(x), 2.0)
    cosine = np.dot(np.asarray(clipped[0], np.float64), x[0]) / (
        np.linalg.norm(clipped[0]) * np.linalg.norm(x[0])
    )
    assert cosine > 1 - 1e-6


def test_updates_inside_the_ball_are_unchanged_bit_for_bit():
    rng = np.random.default_rng(3)
    stack = rng.normal(size=(5, 200)).astype(np.float32)
    stack[2] = 0.0
    stack[3] = -0.0
    norms = np.linalg.norm(stack.astype(np.float64), axis=1)
    max_norm = float(norms.max()) * 1.001  # every update strictly inside
    for clip in (clip_by_l2, jit_clip):
        clipped, _ = clip(jnp.asarray(stack), max_norm)
        np.testing.assert_array_equal(np.asarray(clipped).view(np.uint32), stack.view(np.uint32))


def test_clip_leaves_the_small_rows_of_a_mixed_stack_bit_for_bit():
    rng = np.random.default_rng(4)
    stack = rng.normal(size=(6, 100)).astype(np.float32) * np.float32(
        [[0.01], [10], [0.02], [20], [0.03], [0]]
    )
    clipped, _ = jit_clip(jnp.asarray(stack), 1.0)
    small = [0, 2, 4, 5]
    np.testing.assert_array_equal(
        np.asarray(clipped)[small].view(np.uint32), stack[small].view(np.uint32)
    )


def test_clip_with_a_traced_bound_and_under_vmap():
    rng = np.random.default_rng(5)
    stacks = rng.normal(size=(3, 4, 50)).astype(np.float32) * 2
    bounds = np.array([1.0, 5.0, 100.0], np.float32)
    clipped, norms = jax.jit(jax.vmap(clip_by_l2))(jnp.asarray(stacks), jnp.asarray(bounds))
    for b in range(3):
        expected, expected_norms = np_clip(stacks[b], bounds[b])
        np.testing.assert_allclose(clipped[b], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(norms[b], expected_norms, rtol=1e-5)


def test_zero_bound_clips_everything_to_zero():
    clipped, _ = clip_by_l2(jnp.array([[1.0, -2.0], [0.0, 0.0]]), 0.0)
    np.testing.assert_array_equal(clipped, np.zeros((2, 2)))


# --- Gaussian noise ------------------------------------------------------------------------


@pytest.mark.parametrize("stddev", [0.01, 1.0, 3.0])
def test_noise_has_the_requested_mean_and_stddev(stddev):
    n = 1 << 20
    x = jnp.full((n,), 2.0)
    noise = np.asarray(jit_noise(x, jax.random.key(0), stddev), np.float64) - 2.0
    # standard errors: of the mean stddev / sqrt(n); of the sample variance stddev^2 sqrt(2 / n)
    assert abs(noise.mean()) < 5 * stddev / math.sqrt(n)
    assert abs(noise.var() / stddev**2 - 1) < 5 * math.sqrt(2 / n)
    # a normal puts 68.27% of its mass within one standard deviation (binomial standard error 0.00045 here)
    assert abs(np.mean(np.abs(noise) < stddev) - 0.6827) < 0.003


def test_noise_is_determined_by_the_key():
    x = jnp.zeros((4, 1000))
    a = jit_noise(x, jax.random.key(1), 1.0)
    again = add_gaussian_noise(x, jax.random.key(1), 1.0)
    b = jit_noise(x, jax.random.key(2), 1.0)
    np.testing.assert_array_equal(a, again)
    assert abs(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]) < 5 / math.sqrt(4000)


def test_noise_does_not_depend_on_x_and_keeps_its_dtype():
    key = jax.random.key(3)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 500)).astype(np.float32))
    np.testing.assert_allclose(
        jit_noise(x, key, 0.5) - x, jit_noise(jnp.zeros_like(x), key, 0.5), atol=1e-6
    )
    half = add_gaussian_noise(jnp.zeros((10,), jnp.bfloat16), key, 1.0)
    assert half.dtype == jnp.bfloat16


def test_zero_stddev_adds_nothing():
    x = jnp.asarray(np.random.default_rng(7).normal(size=(3, 20)).astype(np.float32))
    np.testing.assert_array_equal(jit_noise(x, jax.random.key(4), 0.0), x)
