"""Tests of hierfl.data.tasks: the models, PatchConv, and each task's per-plant data.

PatchConv is checked against `jax.lax.conv_general_dilated`; the digits sizes are derived
from scikit-learn's class counts, not from the task's own helpers.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.datasets import load_digits

from hierfl.data.tasks import TASKS, PlantRequest, get_task
from hierfl.data.tasks.base import stratified_test_split
from hierfl.data.tasks.models import PatchConv, build_model
from hierfl.errors import DataError

DIGITS = TASKS["digits"]
BEARING = TASKS["bearing-fault"]
DIGIT_COUNTS = np.bincount(
    load_digits().target
)  # [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def held_out(counts, test_fraction):
    """Per-class test counts of a stratified split: round(f * n_c), at least one."""
    return np.array([max(1, int(round(test_fraction * c))) for c in counts])


# --- registry and models -----------------------------------------------------------------


def test_registry():
    assert set(TASKS) == {
        "digits",
        "bearing-fault",
        "bearing-rul",
        "steel-defects",
        "energy-forecast",
        "appliance-id",
    }
    assert get_task("digits") is DIGITS
    with pytest.raises(KeyError, match="bearing-fault, bearing-rul, digits, energy-forecast"):
        get_task("mnist")
    assert DIGITS.input_shape == (8, 8, 1) and DIGITS.num_classes == 10
    assert BEARING.input_shape == (2048, 1) and BEARING.num_classes == 4
    assert DIGITS.default_model in DIGITS.models and BEARING.default_model in BEARING.models


@pytest.mark.parametrize(
    "task, model",
    [(t.name, m) for t in TASKS.values() for m in t.models],
)
def test_models_give_logits_per_class(task, model):
    # Classifiers give one logit per class; regression models one value per target.
    task = TASKS[task]
    net, params = build_model(model, task.models[model], jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, *task.input_shape)), jnp.float32)
    logits = jax.jit(net.apply)(params, x)
    assert logits.shape == (3, len(task.target_names) if task.target_names else task.num_classes)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert not np.allclose(logits[0], logits[1])  # the input reaches the output


def test_build_model_deterministic_in_key():
    make = DIGITS.models["mlp"]
    _, a = build_model("mlp", make, jax.random.key(7))
    _, b = build_model("mlp", make, jax.random.key(7))
    _, c = build_model("mlp", make, jax.random.key(8))
    assert all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)))
    assert not bool(jnp.array_equal(a["head"]["kernel"], c["head"]["kernel"]))


def test_loss_and_score():
    logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    labels = jnp.array([0, 0, 1])
    np.testing.assert_allclose(DIGITS.example_score(logits, labels), [1.0, 0.0, 0.0])
    expected = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(3)), math.log(2)]
    np.testing.assert_allclose(DIGITS.example_loss(logits, labels), expected, rtol=1e-6)


# --- PatchConv ---------------------------------------------------------------------------
#
# PatchConv builds its patch list one spatial axis at a time, replacing every patch p by
# [slice(p, i) for i in range(k)]: the patch for kernel offsets (i1, i2) lands at list
# position i1 * k2 + i2, and each contributes C channels. So feature row
# (i1 * k2 + i2) * C + c of the [K, C_out] kernel is offset (i1, i2), input channel c: a
# row-major reshape to [k1, k2, C, C_out], i.e. the HWIO layout of lax convolutions.


@pytest.mark.parametrize(
    "spatial, channels, kernel, strides",
    [
        ((20,), (1, 4), (7,), (2,)),
        ((33,), (3, 5), (4,), (3,)),
        ((9,), (2, 2), (1,), (1,)),
    ],
)
def test_patch_conv_1d_equals_lax_conv(spatial, channels, kernel, strides):
    check_patch_conv(spatial, channels, kernel, strides, ("NWC", "WIO", "NWC"))


@pytest.mark.parametrize(
    "spatial, channels, kernel, strides",
    [
        ((8, 8), (1, 16), (3, 3), (1, 1)),
        ((9, 7), (3, 4), (2, 3), (2, 1)),
        ((10, 11), (2, 3), (4, 2), (3, 2)),
    ],
)
def test_patch_conv_2d_equals_lax_conv(spatial, channels, kernel, strides):
    check_patch_conv(spatial, channels, kernel, strides, ("NHWC", "HWIO", "NHWC"))


def check_patch_conv(spatial, channels, kernel, strides, dimension_numbers):
    c_in, c_out = channels
    conv = PatchConv(c_in, c_out, kernel, strides, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(6)
    conv.bias[...] = jnp.asarray(rng.normal(size=c_out), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, *spatial, c_in)), jnp.float32)
    assert conv.kernel[...].shape == (math.prod(kernel) * c_in, c_out)
    w = conv.kernel[...].reshape(*kernel, c_in, c_out)
    want = (
        jax.lax.conv_general_dilated(
            x,
            w,
            window_strides=strides,
            padding="VALID",
            dimension_numbers=dimension_numbers,
            precision=jax.lax.Precision.HIGHEST,
        )
        + conv.bias[...]
    )
    got = jax.jit(lambda v: conv(v))(x)
    out_spatial = tuple((n - k) // s + 1 for n, k, s in zip(spatial, kernel, strides))
    assert got.shape == (2, *out_spatial, c_out)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- digits ------------------------------------------------------------------------------


def request(index, devices, train=None, shift=0.0):
    return PlantRequest(f"plant-{index}", index, devices, train, shift)


def test_digits_pool_is_the_real_dataset():
    bunch = load_digits()
    plants = DIGITS.make_plant_data([request(0, 1)], 0.2, 0)
    x = np.concatenate([plants[0].x_train, plants[0].x_test])
    y = np.concatenate([plants[0].y_train, plants[0].y_test])
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    # Same multiset of (image, label) as scikit-learn's, scaled to [0, 1].
    ours = sorted(
        map(tuple, np.concatenate([x.reshape(-1, 64) * 16, y[:, None]], axis=1).round().astype(int))
    )
    theirs = sorted(
        map(tuple, np.concatenate([bunch.data, bunch.target[:, None]], axis=1).astype(int))
    )
    assert ours == theirs


def test_digits_sizes_follow_requests():
    test_fraction = 0.2
    test_total = held_out(DIGIT_COUNTS, test_fraction).sum()  # 359
    train_total = 1797 - test_total  # 1438
    assert (test_total, train_total) == (359, 1438)
    # One exact request of 300, the remaining 1138 shared 1 : 3 by device count.
    plants = DIGITS.make_plant_data(
        [request(0, 2, 300), request(1, 1), request(2, 3)], test_fraction, 0
    )
    train_sizes = [len(p.y_train) for p in plants]
    assert train_sizes == [
        300,
        285,
        853,
    ]  # 1138 * [1, 3] / 4 = [284.5, 853.5]: the tie goes to the first
    test_sizes = [len(p.y_test) for p in plants]
    assert sum(test_sizes) == 359
    # Test sets are proportional to the train sets: 359 * [300, 284, 854] / 1438.
    np.testing.assert_allclose(test_sizes, np.array([300, 285, 853]) * 359 / 1438, atol=1)
    for p in plants:
        assert p.x_train.shape == (len(p.y_train), 8, 8, 1)
        assert p.x_test.shape == (len(p.y_test), 8, 8, 1)


def test_digits_plants_are_disjoint_and_cover_the_pool():
    plants = DIGITS.make_plant_data([request(0, 3), request(1, 5)], 0.25, 1)
    rows = np.concatenate([np.concatenate([p.x_train, p.x_test]).reshape(-1, 64) for p in plants])
    labels = np.concatenate([np.concatenate([p.y_train, p.y_test]) for p in plants])
    assert len(rows) == 1797
    np.testing.assert_array_equal(np.bincount(labels), DIGIT_COUNTS)
    test_total = sum(len(p.y_test) for p in plants)
    assert test_total == held_out(DIGIT_COUNTS, 0.25).sum()


def test_digits_too_many_requested_is_a_data_error():
    with pytest.raises(DataError, match="1438"):
        DIGITS.make_plant_data([request(0, 2, 1000), request(1, 2, 439)], 0.2, 0)


def test_digits_deterministic_in_seed():
    reqs = [request(0, 3, shift=0.5), request(1, 4)]
    a = DIGITS.make_plant_data(reqs, 0.2, 3)
    b = DIGITS.make_plant_data(reqs, 0.2, 3)
    c = DIGITS.make_plant_data(reqs, 0.2, 4)
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.x_train, pb.x_train)
        np.testing.assert_array_equal(pa.y_test, pb.y_test)
    assert not np.array_equal(a[0].y_train, c[0].y_train)


def test_digits_shift_changes_pixel_statistics():
    plain, shifted = DIGITS.make_plant_data([request(0, 3), request(1, 3, shift=1.0)], 0.2, 0)

    # Raw digits are multiples of 1/16 in [0, 1]; a camera shift with sensor noise is not.
    def on_grid(x):
        return np.mean(np.isclose(x * 16, np.round(x * 16), atol=1e-4))

    assert on_grid(plain.x_train) == 1.0 and on_grid(plain.x_test) == 1.0
    assert on_grid(shifted.x_train) < 0.8 and on_grid(shifted.x_test) < 0.8
    for x in (shifted.x_train, shifted.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
    # The noise (std 0.15) alone moves the pixel spread measurably.
    assert (
        abs(shifted.x_train.std() - plain.x_train.std()) > 0.01
        or abs(shifted.x_train.mean() - plain.x_train.mean()) > 0.02
    )


def test_digits_test_sets_are_stratified():
    plants = DIGITS.make_plant_data([request(0, 5), request(1, 5)], 0.2, 0)
    test_share = held_out(DIGIT_COUNTS, 0.2) / held_out(DIGIT_COUNTS, 0.2).sum()
    for p in plants:
        expected = len(p.y_test) * test_share
        counts = np.bincount(p.y_test, minlength=10)
        assert np.all(np.abs(counts - expected) <= 2 + 0.05 * expected), counts.tolist()


def test_digits_test_sets_of_unequal_plants_see_every_class():
    plants = DIGITS.make_plant_data([request(0, 1), request(1, 3)], 0.2, 0)
    for p in plants:
        assert set(np.unique(p.y_test)) == set(range(10))
        assert set(np.unique(p.y_train)) == set(range(10))


# --- bearing -----------------------------------------------------------------------------


def test_bearing_honours_train_samples_and_holds_out_test_fraction():
    plants = list(
        BEARING.make_plant_data([request(0, 4, 192), request(1, 2, 50, shift=0.3)], 0.2, 0)
    )
    assert [len(p.y_train) for p in plants] == [192, 50]
    # 192 / 0.8 / 4 = 60 windows per machine -> 240, 60 per class, 12 each held out.
    assert len(plants[0].y_test) == 48
    np.testing.assert_array_equal(np.bincount(plants[0].y_test, minlength=4), [12, 12, 12, 12])
    # 50 / 0.8 / 2 = 31.25 -> 32 per machine, 64 windows, 16 per class, round(3.2) = 3 held out each.
    assert len(plants[1].y_test) == 12
    for p in plants:
        assert p.x_train.shape == (len(p.y_train), 2048, 1) and p.x_train.dtype == np.float32
        assert p.x_test.shape == (len(p.y_test), 2048, 1)
        assert p.y_train.dtype == np.int32
        assert set(np.unique(p.y_train)) == {0, 1, 2, 3}


def test_bearing_default_samples_per_device():
    (plant,) = BEARING.make_plant_data([request(0, 3)], 0.2, 0)
    assert len(plant.y_train) == 48 * 3


def test_bearing_deterministic_in_seed():
    reqs = [request(0, 2, 40), request(1, 1, 20, shift=0.5)]
    a = list(BEARING.make_plant_data(reqs, 0.2, 1))
    b = list(BEARING.make_plant_data(reqs, 0.2, 1))
    c = list(BEARING.make_plant_data(reqs, 0.2, 2))
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.x_train, pb.x_train)
        np.testing.assert_array_equal(pa.y_train, pb.y_train)
        np.testing.assert_array_equal(pa.x_test, pb.x_test)
    assert not np.array_equal(a[0].x_train, c[0].x_train)
    # A plant's data does not depend on the other plants.
    (alone,) = BEARING.make_plant_data([reqs[1]], 0.2, 1)
    np.testing.assert_array_equal(alone.x_train, a[1].x_train)


def bearing_shortfalls():
    """(devices, train_samples, test_fraction) where naive sizing fails: the per-class
    rounding takes more than `test_fraction` of the windows, computed from the balanced
    class counts of `ceil(train / (1 - f) / devices) * devices` windows."""
    cases = []
    for devices, per_device, f in [(3, 20, 0.2), (1, 25, 0.2), (5, 28, 0.2)]:
        train = devices * per_device
        total = math.ceil(train / (1 - f) / devices) * devices
        counts = [total // 4 + (c < total % 4) for c in range(4)]
        assert total - held_out(counts, f).sum() == train - 1  # naive sizing would be one short
        cases.append((devices, train, f))
    return cases


@pytest.mark.parametrize("devices, train, test_fraction", bearing_shortfalls())
def test_bearing_honours_train_samples_when_rounding_is_tight(devices, train, test_fraction):
    (plant,) = BEARING.make_plant_data([request(0, devices, train)], test_fraction, 0)
    assert len(plant.y_train) == train


def test_stratified_test_split_holds_out_each_class():
    labels = np.repeat(np.arange(3), [10, 5, 1])
    train, test = stratified_test_split(labels, 0.3, np.random.default_rng(0))
    np.testing.assert_array_equal(
        np.bincount(labels[test]), [3, 2, 1]
    )  # 3, 1.5 -> 2, 0.3 -> at least 1
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(16))


def test_the_digits_pool_is_scikit_learns_load_digits():
    # The task reads scikit-learn's file itself (no sklearn import in a device process).
    from hierfl.data.tasks.digits import load_digits_pool

    x, y = load_digits_pool()
    bunch = load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x.reshape(1797, 64) * 16.0, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)
