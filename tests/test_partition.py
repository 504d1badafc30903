"""Tests of hierfl.data.partition: every partitioner places exactly the examples it is asked to.

Reference numbers (class counts, entropies, size spreads) are computed here with plain
numpy from the returned indices, never with the partitioners' own helpers.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl.data.partition import dirichlet, iid, proportional_sizes, quantity, split_stratified
from hierfl.errors import DataError

FAST = settings(max_examples=40, deadline=None)


def assert_disjoint_cover(parts, expected):
    """The parts are disjoint index arrays whose union is exactly `expected`."""
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)), "an example was placed twice"
    np.testing.assert_array_equal(np.sort(joined), np.sort(np.asarray(expected)))


def class_counts(labels, part, num_classes):
    return np.bincount(labels[part], minlength=num_classes)


def assert_stratified(labels, parts, share):
    """Each part's class counts are within 2 (+5%) of its size times the class share."""
    for j, part in enumerate(parts):
        expected = len(part) * share
        counts = class_counts(labels, part, len(share))
        off = np.abs(counts - expected) > 2 + 0.05 * expected
        assert not off.any(), (
            f"part {j} of {len(part)}: class counts {counts.tolist()}, expected about {np.round(expected, 1).tolist()}"
        )


def mean_entropy(labels, parts, num_classes):
    """Mean over parts of the entropy (nats) of the part's label distribution."""
    values = []
    for part in parts:
        p = class_counts(labels, part, num_classes) / len(part)
        p = p[p > 0]
        values.append(-(p * np.log(p)).sum())
    return float(np.mean(values))


def size_cv(parts):
    sizes = np.array([len(p) for p in parts], dtype=np.float64)
    return sizes.std() / sizes.mean()


labels_strategy = st.lists(st.integers(0, 5), min_size=1, max_size=200).map(
    lambda v: np.array(v, np.int32)
)


# --- split_stratified ----------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_split_stratified_sizes_exact_and_disjoint(data):
    labels = data.draw(labels_strategy)
    num_parts = data.draw(st.integers(1, 6))
    cuts = np.sort(
        data.draw(
            st.lists(st.integers(0, len(labels)), min_size=num_parts + 1, max_size=num_parts + 1)
        )
    )
    sizes = np.diff(cuts)  # non-negative, summing to at most len(labels)
    seed = data.draw(st.integers(0, 2**16))
    parts = split_stratified(labels, sizes, np.random.default_rng(seed))
    assert [len(p) for p in parts] == sizes.tolist()
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == sizes.sum()
    assert joined.size == 0 or (joined.min() >= 0 and joined.max() < len(labels))
    for p in parts:
        assert np.all(np.diff(p) > 0)  # sorted, no repeats


def test_split_stratified_whole_pool_is_covered():
    labels = np.repeat(np.arange(7), [5, 9, 13, 2, 20, 11, 4])
    parts = split_stratified(labels, np.array([30, 20, 14]), np.random.default_rng(3))
    assert_disjoint_cover(parts, np.arange(64))


def test_split_stratified_deterministic_in_rng():
    labels = np.repeat(np.arange(5), 40)
    sizes = np.array([70, 50, 30])
    a = split_stratified(labels, sizes, np.random.default_rng(11))
    b = split_stratified(labels, sizes, np.random.default_rng(11))
    c = split_stratified(labels, sizes, np.random.default_rng(12))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_split_stratified_too_many_requested():
    with pytest.raises(DataError, match="10 examples"):
        split_stratified(np.zeros(10, np.int32), np.array([6, 5]), np.random.default_rng(0))


@pytest.mark.parametrize(
    "per_class, sizes",
    [
        ([100] * 10, [500, 500]),
        ([100] * 10, [100] * 10),
        ([100] * 10, [250] * 4),
        ([100] * 10, [300, 200, 100]),
        ([50] * 4, [100, 100]),  # the bearing task's balanced 4 classes
        ([600, 300, 100], [500, 300, 200]),
    ],
)
def test_split_stratified_parts_follow_the_pool_mix(per_class, sizes):
    labels = np.repeat(np.arange(len(per_class)), per_class)
    parts = split_stratified(labels, np.array(sizes), np.random.default_rng(0))
    assert_stratified(labels, parts, np.array(per_class) / sum(per_class))


# --- iid ---------------------------------------------------------------------------------


@FAST
@given(num_examples=st.integers(1, 300), num_parts=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_iid_covers_pool_in_near_equal_parts(num_examples, num_parts, seed):
    if num_examples < num_parts:
        with pytest.raises(DataError):
            iid(num_examples, num_parts, np.random.default_rng(seed))
        return
    parts = iid(num_examples, num_parts, np.random.default_rng(seed))
    assert len(parts) == num_parts
    assert_disjoint_cover(parts, np.arange(num_examples))
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_iid_deterministic_in_rng():
    a = iid(100, 7, np.random.default_rng(5))
    b = iid(100, 7, np.random.default_rng(5))
    c = iid(100, 7, np.random.default_rng(6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


# --- dirichlet ---------------------------------------------------------------------------


@FAST
@given(
    labels=labels_strategy,
    num_parts=st.integers(1, 12),
    alpha=st.sampled_from([0.01, 0.1, 1.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_dirichlet_covers_pool_and_no_part_is_empty(labels, num_parts, alpha, seed):
    if len(labels) < num_parts:
        with pytest.raises(DataError):
            dirichlet(labels, num_parts, alpha, np.random.default_rng(seed))
        return
    parts = dirichlet(labels, num_parts, alpha, np.random.default_rng(seed))
    assert len(parts) == num_parts
    assert_disjoint_cover(parts, np.arange(len(labels)))
    assert min(len(p) for p in parts) >= 1


def test_dirichlet_tiny_alpha_many_parts_still_nonempty():
    labels = np.repeat(np.arange(2), 10)  # 20 examples, 2 classes, 20 parts: most would be empty
    parts = dirichlet(labels, 20, 0.01, np.random.default_rng(0))
    assert [len(p) for p in parts] == [1] * 20
    assert_disjoint_cover(parts, np.arange(20))


def test_dirichlet_deterministic_in_rng():
    labels = np.repeat(np.arange(10), 30)
    a = dirichlet(labels, 8, 0.5, np.random.default_rng(1))
    b = dirichlet(labels, 8, 0.5, np.random.default_rng(1))
    c = dirichlet(labels, 8, 0.5, np.random.default_rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 100)
    uniform = np.log(10)  # entropy of the pool's balanced mix
    entropy = {
        alpha: np.mean(
            [
                mean_entropy(labels, dirichlet(labels, 10, alpha, np.random.default_rng(s)), 10)
                for s in range(5)
            ]
        )
        for alpha in (0.1, 1.0, 100.0)
    }
    assert entropy[100.0] > 0.97 * uniform  # near IID
    assert entropy[0.1] < 0.6 * uniform  # each part dominated by a few classes
    assert entropy[0.1] < entropy[1.0] < entropy[100.0]


# --- quantity ----------------------------------------------------------------------------


@FAST
@given(
    num_examples=st.integers(1, 400),
    num_parts=st.integers(1, 25),
    sigma=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**16),
)
def test_quantity_covers_pool_and_no_part_is_empty(num_examples, num_parts, sigma, seed):
    if num_examples < num_parts:
        with pytest.raises(DataError):
            quantity(num_examples, num_parts, sigma, np.random.default_rng(seed))
        return
    parts = quantity(num_examples, num_parts, sigma, np.random.default_rng(seed))
    assert len(parts) == num_parts
    assert_disjoint_cover(parts, np.arange(num_examples))
    assert min(len(p) for p in parts) >= 1


def test_quantity_size_spread_grows_with_sigma():
    cv = {
        sigma: np.mean(
            [size_cv(quantity(2000, 20, sigma, np.random.default_rng(s))) for s in range(10)]
        )
        for sigma in (0.1, 1.0, 2.0)
    }
    # The CV of lognormal(0, sigma) is sqrt(exp(sigma^2) - 1): 0.10, 1.31, 7.3 (a sample of
    # 20 underestimates the large ones, so only the order and rough levels are checked).
    assert cv[0.1] < 0.2
    assert cv[1.0] > 0.5
    assert cv[0.1] < cv[1.0] < cv[2.0]


def test_quantity_deterministic_in_rng():
    a = quantity(200, 9, 1.0, np.random.default_rng(4))
    b = quantity(200, 9, 1.0, np.random.default_rng(4))
    c = quantity(200, 9, 1.0, np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


# --- errors and proportional_sizes -------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda rng: iid(3, 4, rng),
        lambda rng: dirichlet(np.arange(3), 4, 0.5, rng),
        lambda rng: quantity(3, 4, 1.0, rng),
    ],
    ids=["iid", "dirichlet", "quantity"],
)
def test_fewer_examples_than_parts_is_a_data_error(call):
    with pytest.raises(DataError, match="3 examples cannot give each of 4 devices"):
        call(np.random.default_rng(0))


def test_proportional_sizes_examples():
    assert proportional_sizes(10, np.array([1, 1])).tolist() == [5, 5]
    assert proportional_sizes(1438, np.array([14, 10])).tolist() == [839, 599]  # 838.83, 599.17
    assert proportional_sizes(10, np.array([1, 1, 1])).tolist() == [4, 3, 3]  # ties: first wins
    assert proportional_sizes(0, np.array([2, 3])).tolist() == [0, 0]


@FAST
@given(
    total=st.integers(0, 10_000),
    weights=st.lists(st.integers(1, 1000), min_size=1, max_size=20),
)
def test_proportional_sizes_sum_and_rounding(total, weights):
    sizes = proportional_sizes(total, np.array(weights))
    exact = np.array(weights, dtype=np.float64) / sum(weights) * total
    assert sizes.sum() == total
    assert np.all(sizes >= 0)
    assert np.all(np.abs(sizes - exact) < 1.0)
