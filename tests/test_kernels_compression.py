"""Tests of hierfl.kernels.compression (every codec) and hierfl.kernels.dither.

References are numpy (and ml_dtypes for bfloat16); the statistical tests compare with
rates derived by hand in each test's comments, so a biased quantizer, a wrong selection
or a correlated dither fails them.
"""

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl.kernels import CODECS, dither, make_codec, roundtrip

KEY = jax.random.key(0)
BLOCK = 256

# Codecs are hashable (a NamedTuple of a name, sizes and functions), so they can be static arguments;
# jitting whole round trips compiles one program per codec instead of one per operation and shape.
jit_roundtrip = jax.jit(roundtrip, static_argnums=0)
jit_encode = jax.jit(
    lambda codec, x, residual, key: codec.encode(x, residual, key), static_argnums=0
)
jit_decode = jax.jit(lambda codec, payload: codec.decode(payload), static_argnums=0)
jit_uniform = jax.jit(dither.uniform, static_argnums=1)


def encode(codec, x, key=KEY, residual=None):
    residual = jnp.zeros((codec.residual_size,), jnp.float32) if residual is None else residual
    return jit_encode(codec, jnp.asarray(x, jnp.float32), residual, key)


def decode_once(codec, x, key=KEY):
    return jit_roundtrip(
        codec, jnp.asarray(x, jnp.float32), jnp.zeros((codec.residual_size,), jnp.float32), key
    )[0]


def normal(size, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=size) * scale).astype(np.float32)


def chi_square_limit(dof, z=4.75):
    """Wilson-Hilferty approximation of the chi-square quantile at standard normal z (4.75: p ~ 1e-6)."""
    h = 2.0 / (9.0 * dof)
    return dof * (1.0 - h + z * math.sqrt(h)) ** 3


# --- every codec -------------------------------------------------------------------------

# Bytes on the wire for P = 1000, by hand: float32 4 P; casts 2 P; int8: 1000 int8 values and one float32
# scale for each of the 4 blocks of (at most) 256; topk at 1%: 10 (float32 value, int32 index) pairs.
PAYLOAD_BYTES_P1000 = {
    "none": 4000,
    "float16": 2000,
    "bfloat16": 2000,
    "int8": 1000 + 4 * 4,
    "topk": 80,
}


def test_every_codec_has_a_hand_computed_size():
    assert set(CODECS) == set(PAYLOAD_BYTES_P1000)


@pytest.mark.parametrize("name", CODECS)
def test_payload_bytes_by_hand(name):
    assert make_codec(name, 1000).payload_bytes == PAYLOAD_BYTES_P1000[name]


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("size", [1, 1000])
def test_payload_bytes_is_the_real_size_of_the_payload(name, size):
    codec = make_codec(name, size)
    payload, residual = encode(codec, normal(size))
    assert isinstance(payload, tuple)
    assert sum(np.asarray(a).nbytes for a in payload) == codec.payload_bytes
    assert residual.shape == (codec.residual_size,)
    decoded = codec.decode(payload)  # eagerly, once per codec
    assert decoded.shape == (size,) and decoded.dtype == jnp.float32


@pytest.mark.parametrize("name", CODECS)
def test_every_codec_is_close_on_a_smooth_update(name):
    x = normal(1000, seed=1)
    decoded = decode_once(make_codec(name, 1000, fraction=1.0), x)
    np.testing.assert_allclose(decoded, x, atol=2 * np.abs(x).max() / 127)


@pytest.mark.parametrize("name", CODECS)
def test_every_codec_under_jit_and_vmap_matches_one_update_at_a_time(name):
    k, size = 4, 300
    codec = make_codec(name, size)
    stack = jnp.asarray(np.stack([normal(size, seed=s) for s in range(k)]))
    residuals = jnp.asarray(
        np.stack([normal(codec.residual_size, seed=10 + s, scale=0.1) for s in range(k)])
    )
    keys = jax.random.split(KEY, k)
    decoded, new_residuals = jax.jit(jax.vmap(lambda x, r, key: roundtrip(codec, x, r, key)))(
        stack, residuals, keys
    )
    for i in range(k):
        one, residual = jit_roundtrip(codec, stack[i], residuals[i], keys[i])
        np.testing.assert_allclose(decoded[i], one, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(new_residuals[i], residual, rtol=1e-6, atol=1e-7)


def test_make_codec_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown codec 'gzip'"):
        make_codec("gzip", 10)
    with pytest.raises(ValueError, match="block_size"):
        make_codec("int8", 10, block_size=0)
    for fraction in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            make_codec("topk", 10, fraction=fraction)


# --- none and the casts --------------------------------------------------------------------


def test_none_is_bit_exact():
    # (float32 subnormals are not in this list: XLA on CPU flushes them to zero in any computation)
    x = np.array([0.0, -0.0, 1.2e-38, 3.4e38, -1.5, np.pi], np.float32)
    (payload,), _ = encode(make_codec("none", 6), x)
    np.testing.assert_array_equal(np.asarray(payload).view(np.uint32), x.view(np.uint32))


@pytest.mark.parametrize(
    ("name", "numpy_dtype"), [("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)]
)
def test_casts_round_like_numpy(name, numpy_dtype):
    x = normal(2000, seed=2, scale=100.0)
    x[:3] = [1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 2.0**-20]  # float16 ties to even, and a subnormal
    (payload,), _ = encode(make_codec(name, 2000), x)
    assert payload.dtype == jnp.dtype(name)
    np.testing.assert_array_equal(
        np.asarray(payload.astype(jnp.float32)), x.astype(numpy_dtype).astype(np.float32)
    )


def test_float16_clips_huge_values_instead_of_inf():
    codec = make_codec("float16", 6)
    # 65504 is float16's largest finite value; a plain cast sends 65520 and above to inf.
    x = np.array([1e6, -1e6, 65520.0, -70000.0, 3e38, 0.5], np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(x.astype(np.float16)[2])
    np.testing.assert_array_equal(
        decode_once(codec, x), [65504.0, -65504.0, 65504.0, -65504.0, 65504.0, 0.5]
    )


def test_bfloat16_clips_to_its_largest_finite_value():
    codec = make_codec("bfloat16", 2)
    x = np.array(
        [3.4e38, -3.4e38], np.float32
    )  # above bfloat16's max 3.3895e38: a plain cast rounds to inf
    assert np.isinf(x.astype(ml_dtypes.bfloat16).astype(np.float32)).all()
    decoded = decode_once(codec, x)
    largest = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    np.testing.assert_array_equal(decoded, [largest, -largest])


# --- int8 ----------------------------------------------------------------------------------


def block_scales(x, block_size=BLOCK):
    """max |x| / 127 per block of the zero-padded update (numpy float64)."""
    blocks = math.ceil(len(x) / block_size)
    padded = np.zeros(blocks * block_size)
    padded[: len(x)] = x
    return np.abs(padded.reshape(blocks, block_size)).max(axis=1) / 127


def test_int8_hand_example():
    # One block of 4: scale = 31.75 / 127 = 0.25 (exact in binary), x / scale = [127, -63.5, 10, 0]:
    # whole levels stay put, -63.5 rounds to -64 or -63.
    codec = make_codec("int8", 4, block_size=4)
    (q, scales), _ = encode(codec, [31.75, -15.875, 2.5, 0.0])
    np.testing.assert_array_equal(scales, [0.25])
    q = np.asarray(q)
    assert q.dtype == np.int8
    assert q[0] == 127 and q[2] == 10 and q[3] == 0
    assert q[1] in (-64, -63)


def test_int8_payload_is_int8_levels_times_numpy_scales():
    size = 1000  # 3 full blocks of 256 and a short one of 232
    x = normal(size, seed=3) * np.repeat([0.01, 1.0, 100.0, 0.5], 250).astype(np.float32)
    codec = make_codec("int8", size)
    (q, scales), _ = encode(codec, x)
    q = np.asarray(q)
    assert q.shape == (size,) and q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127
    assert scales.shape == (4,) and scales.dtype == jnp.float32
    np.testing.assert_allclose(scales, block_scales(x), rtol=1e-6)
    expected = q.astype(np.float64) * np.repeat(np.asarray(scales, np.float64), BLOCK)[:size]
    np.testing.assert_allclose(jit_decode(codec, (jnp.asarray(q), scales)), expected, rtol=1e-6)


INT8_5000 = make_codec("int8", 5000)


@pytest.mark.parametrize("seed", range(3))
def test_int8_error_is_below_each_blocks_scale(seed):
    size = 5000
    x = normal(size, seed=seed) * (
        10.0 ** np.random.default_rng(seed).integers(-4, 4, size=size)
    ).astype(np.float32)
    decoded = decode_once(INT8_5000, x, jax.random.key(seed))
    scale_of_each = np.repeat(block_scales(x), BLOCK)[:size]
    error = np.abs(np.asarray(decoded, np.float64) - x)
    assert np.all(error < scale_of_each * (1 + 1e-5))


def test_int8_zero_block_decodes_to_zeros():
    x = np.zeros(2 * BLOCK, np.float32)
    x[BLOCK:] = normal(BLOCK)
    decoded = decode_once(make_codec("int8", 2 * BLOCK), x)
    np.testing.assert_array_equal(decoded[:BLOCK], 0.0)
    assert np.all(np.isfinite(decoded))


def test_int8_same_key_same_payload_other_key_other_payload():
    codec = make_codec("int8", 1000)
    x = normal(1000, seed=4)
    (q1, _), _ = encode(codec, x, jax.random.key(7))
    (q2, _), _ = encode(codec, x, jax.random.key(7))
    (q3, _), _ = encode(codec, x, jax.random.key(8))
    np.testing.assert_array_equal(q1, q2)
    assert np.mean(np.asarray(q1) != np.asarray(q3)) > 0.3


def test_int8_is_unbiased_mean_error_shrinks_like_one_over_sqrt_n():
    # Stochastic rounding of y = x / scale gives floor(y) + Bernoulli(f), f = y - floor(y): the error has mean 0 and
    # variance scale^2 f (1 - f). The mean error of a coordinate over n keys therefore has mean 0 and standard
    # deviation scale sqrt(f (1 - f) / n); its root mean square over coordinates must match that, for every n
    # (a rounding bias would not shrink with n and would fail at the larger n).
    size, n_max = 512, 4096
    rng = np.random.default_rng(5)
    x = rng.normal(size=size).astype(np.float32)
    codec = make_codec("int8", size)
    keys = jax.random.split(jax.random.key(11), n_max)
    decoded = jax.jit(jax.vmap(lambda key: roundtrip(codec, jnp.asarray(x), jnp.zeros(0), key)[0]))(
        keys
    )
    errors = np.asarray(decoded, np.float64) - x
    scale = np.repeat(block_scales(x), BLOCK)[:size]
    y = x / scale
    per_value_sd = scale * np.sqrt((y - np.floor(y)) * (1 - (y - np.floor(y))))
    for n in (64, 256, 1024, 4096):
        mean_error = errors[:n].mean(axis=0)
        expected_rms = np.sqrt(np.mean(per_value_sd**2 / n))
        assert 0.85 < np.sqrt(np.mean(mean_error**2)) / expected_rms < 1.15, n
    # and the overall signed mean error, over all coordinates and keys, is within 5 standard errors of 0
    assert abs(errors.mean()) < 5 * np.sqrt(np.mean(per_value_sd**2) / errors.size)


# --- topk and error feedback -------------------------------------------------------------


def test_topk_hand_example():
    codec = make_codec("topk", 5, fraction=0.4)  # k = ceil(0.4 * 5) = 2
    (values, indices), residual = encode(codec, [0.5, -3.0, 1.0, 2.0, -0.1])
    np.testing.assert_array_equal(values, [-3.0, 2.0])
    np.testing.assert_array_equal(indices, [1, 3])
    assert indices.dtype == jnp.int32
    np.testing.assert_array_equal(residual, np.float32([0.5, 0.0, 1.0, 0.0, -0.1]))
    np.testing.assert_array_equal(jit_decode(codec, (values, indices)), [0.0, -3.0, 0.0, 2.0, 0.0])
    # the residual is added to the next update before selection: 1.0 + 1.5 now beats -3.0 + 0.4
    (values, indices), residual = encode(codec, [0.0, 0.4, 1.5, 0.0, 0.0], residual=residual)
    np.testing.assert_allclose(values, [2.5, 0.5])
    np.testing.assert_array_equal(indices, [2, 0])
    np.testing.assert_allclose(residual, [0.0, 0.4, 0.0, 0.0, -0.1], rtol=1e-6)


TOPK_FRACTIONS = (0.001, 0.01, 0.1, 0.5, 1.0)
TOPK_1000 = {fraction: make_codec("topk", 1000, fraction=fraction) for fraction in TOPK_FRACTIONS}


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), fraction=st.sampled_from(TOPK_FRACTIONS))
def test_topk_selects_the_largest_magnitudes_like_numpy(seed, fraction):
    size = 1000
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=size) * rng.uniform(0.1, 10, size=size)).astype(
        np.float32
    )  # distinct magnitudes
    residual = (rng.normal(size=size) * 0.1).astype(np.float32)
    codec = TOPK_1000[fraction]
    k = max(1, math.ceil(fraction * size))
    (values, indices), new_residual = encode(codec, x, residual=jnp.asarray(residual))
    corrected = x + residual
    expected = np.argsort(-np.abs(corrected), kind="stable")[:k]
    assert values.shape == (k,) and codec.payload_bytes == 8 * k
    np.testing.assert_array_equal(np.sort(indices), np.sort(expected))
    np.testing.assert_array_equal(values, corrected[np.asarray(indices)])
    assert np.all(np.diff(np.abs(np.asarray(values))) <= 0)  # largest first
    dense = np.zeros(size, np.float32)
    dense[expected] = corrected[expected]
    np.testing.assert_array_equal(jit_decode(codec, (values, indices)), dense)
    np.testing.assert_allclose(new_residual, corrected - dense, atol=1e-7)


def stable_top_k(x, k):
    """Indices of the k largest |x|, largest first, ties to the lower index (numpy's stable sort)."""
    return np.argsort(-np.abs(np.asarray(x, np.float64)), kind="stable")[:k]


@pytest.mark.parametrize(
    "size, fraction, levels", [(1000, 0.01, 3), (1000, 0.3, 2), (200_000, 0.01, 50), (4096, 0.5, 1)]
)
def test_topk_with_ties_is_a_sort_of_the_magnitudes(size, fraction, levels):
    # Rounded values: thousands of equal magnitudes, so the k-th largest is tied and the pick
    # among the tied entries decides the indices. Sent: the same magnitudes as a sort, largest
    # first, ties to the lower index (what jax.lax.top_k returns), and the residual keeps the rest.
    rng = np.random.default_rng(size + levels)
    x = np.round(rng.normal(size=size) * levels).astype(np.float32)
    codec = make_codec("topk", size, fraction=fraction)
    k = math.ceil(fraction * size)
    (values, indices), residual = encode(codec, x)
    expected = stable_top_k(x, k)
    np.testing.assert_array_equal(np.abs(values), np.abs(x[expected]))
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(indices, jax.lax.top_k(jnp.abs(jnp.asarray(x)), k)[1])
    kept = x.copy()
    kept[expected] = 0.0
    np.testing.assert_array_equal(residual, kept)


def test_topk_is_exact_when_the_sampled_threshold_keeps_too_few():
    # The threshold comes from every 2nd entry here (P = 10,000, a sample of about 4,096): the
    # sampled entries are the 5,000 large ones, so a threshold from them admits fewer than
    # k = 6,000 entries; the selection then takes every entry as a candidate.
    size, k = 10_000, 6_000
    x = np.full(size, 0.5, np.float32)
    x[::2] = 100.0 + np.arange(size // 2, dtype=np.float32)
    x[1::2] += np.arange(size // 2, dtype=np.float32) * 1e-4
    codec = make_codec("topk", size, fraction=k / size)
    (values, indices), _ = encode(codec, x)
    np.testing.assert_array_equal(indices, stable_top_k(x, k))
    np.testing.assert_array_equal(values, x[stable_top_k(x, k)])


def run_topk_rounds(codec, updates, feedback=True):
    """Decoded updates and residuals over the rounds, the sender keeping (or dropping) its residual."""

    def step(residual, x):
        decoded, new_residual = roundtrip(codec, x, residual, KEY)
        new_residual = new_residual if feedback else jnp.zeros_like(new_residual)
        return new_residual, (decoded, new_residual)

    _, (decoded, residuals) = jax.lax.scan(
        step, jnp.zeros((codec.residual_size,)), jnp.asarray(updates)
    )
    return np.asarray(decoded, np.float64), np.asarray(residuals, np.float64)


def test_error_feedback_sent_sum_tracks_the_true_sum():
    # Updates with a common drift plus noise, P = 200, k = 10 (delta = k / P = 0.05), 400 rounds.
    size, rounds, fraction = 200, 400, 0.05
    rng = np.random.default_rng(6)
    updates = (rng.normal(size=size) + rng.normal(size=(rounds, size))).astype(np.float32)
    codec = make_codec("topk", size, fraction=fraction)
    decoded, residuals = run_topk_rounds(codec, updates)
    true_sums = np.cumsum(updates.astype(np.float64), axis=0)
    sent_sums = np.cumsum(decoded, axis=0)
    gaps = true_sums - sent_sums
    # What was not sent is exactly what the sender still holds: sum of true - sum of sent = residual, every round.
    np.testing.assert_allclose(gaps, residuals, atol=1e-3)
    # The residual stays bounded: top-k keeps ||x - C(x)||^2 <= (1 - delta) ||x||^2, so with e' = (e + g) - C(e + g),
    # ||e'|| <= sqrt(1 - delta) (||e|| + ||g||) and by induction ||e|| <= sqrt(1 - delta) / (1 - sqrt(1 - delta)) max ||g||.
    shrink = math.sqrt(1 - fraction)
    bound = shrink / (1 - shrink) * np.linalg.norm(updates, axis=1).max()
    assert np.linalg.norm(residuals, axis=1).max() <= bound
    # So the relative gap vanishes as the sums grow: small after 400 rounds, smaller than after 100.
    relative = np.linalg.norm(gaps, axis=1) / np.linalg.norm(true_sums, axis=1)
    assert relative[-1] < 0.1
    assert relative[-1] < 0.5 * relative[99]
    # Without error feedback the sent sum misses most of the drift for good.
    decoded_without, _ = run_topk_rounds(codec, updates, feedback=False)
    gap_without = np.linalg.norm(true_sums[-1] - decoded_without.sum(axis=0)) / np.linalg.norm(
        true_sums[-1]
    )
    assert gap_without > 0.5


# --- dither ------------------------------------------------------------------------------


def test_dither_is_uniform_on_the_2_to_the_minus_24_grid():
    n = 1 << 20
    u = np.asarray(jit_uniform(jax.random.key(3), (n,)), np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    grid = u * 2**24
    np.testing.assert_array_equal(grid, np.floor(grid))
    # mean 1/2 and variance 1/12, each within 5 standard errors (var of u: 1/12; var of (u - 1/2)^2: 1/180)
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    # 64 equal bins by the top bits, and 64 by the lowest 6 bits of the grid: chi-square with 63 degrees of freedom
    for bins in (np.floor(u * 64), np.mod(grid, 64)):
        counts = np.bincount(bins.astype(np.int64), minlength=64)
        assert counts.size == 64
        chi2 = np.sum((counts - n / 64) ** 2 / (n / 64))
        assert chi2 < chi_square_limit(63)


def test_dither_same_key_same_noise_other_key_uncorrelated():
    n = 1 << 18
    a = np.asarray(jit_uniform(jax.random.key(1), (n,)), np.float64)
    again = np.asarray(jit_uniform(jax.random.key(1), (n,)), np.float64)
    b = np.asarray(jit_uniform(jax.random.key(2), (n,)), np.float64)
    folded = np.asarray(jit_uniform(jax.random.fold_in(jax.random.key(1), 1), (n,)), np.float64)
    np.testing.assert_array_equal(a, again)
    # Pearson correlations of independent uniforms have standard error 1/sqrt(n): allow 5 of them.
    limit = 5 / math.sqrt(n)
    assert abs(np.corrcoef(a, b)[0, 1]) < limit
    assert abs(np.corrcoef(a, folded)[0, 1]) < limit
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < limit  # neighbours within one key
    # a joint 8 x 8 histogram of (a, b) is flat: independence, not only zero correlation
    joint = np.bincount((np.floor(a * 8) * 8 + np.floor(b * 8)).astype(np.int64), minlength=64)
    assert np.sum((joint - n / 64) ** 2 / (n / 64)) < chi_square_limit(63)


def test_dither_shape_jit_and_vmap():
    key = jax.random.key(4)
    u = dither.uniform(key, (3, 5, 7))  # eagerly
    assert u.shape == (3, 5, 7) and u.dtype == jnp.float32
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda k: dither.uniform(k, (3, 5, 7))))(keys)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], jit_uniform(keys[i], (3, 5, 7)))


def test_top_k_selection_returns_k_indices_even_for_an_update_of_nans():
    """A diverged device's update (NaN) still gets exactly k indices (and weight 0 later)."""
    from hierfl.kernels.selection import top_k_magnitude

    x = np.full(10_000, np.nan, np.float32)
    assert top_k_magnitude(x, 50).tolist() == list(range(50))
    x = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
    x[[7, 9]] = np.nan
    chosen = top_k_magnitude(x, 50)
    assert len(chosen) == 50 and len(set(chosen.tolist())) == 50
