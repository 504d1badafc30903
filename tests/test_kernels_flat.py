"""Tests of hierfl.kernels.flat: the layout of a params pytree in one float32 buffer, and back."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfl.kernels import flat_spec, ravel, unravel

FAST = settings(max_examples=8, deadline=None)


def mlp_params():
    """A small params tree with nested dicts, a list, a scalar and three float dtypes."""
    rng = np.random.default_rng(0)
    return {
        "hidden": [
            {
                "kernel": rng.normal(size=(3, 4)).astype(np.float32),
                "bias": rng.normal(size=(4,)).astype(np.float32),
            },
        ],
        "out": {
            "kernel": rng.normal(size=(4, 2)).astype(ml_dtypes.bfloat16),
            "bias": rng.normal(size=(2,)).astype(np.float16),
        },
        "scale": np.float32(1.5),
    }


def bits(array):
    """The raw bit pattern of an array (so -0.0 != 0.0 and every payload bit counts)."""
    array = np.asarray(array)
    return array.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[array.dtype.itemsize])


def assert_trees_bitwise_equal(got, want):
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def
    for g, w in zip(got_leaves, want_leaves, strict=True):
        assert np.shape(g) == np.shape(w)
        assert jnp.result_type(g) == jnp.result_type(w)
        np.testing.assert_array_equal(bits(g), bits(w))


def test_spec_layout_hand_example():
    # jax.tree orders dict keys alphabetically: hidden/0/bias, hidden/0/kernel, out/bias, out/kernel, scale.
    spec = flat_spec(mlp_params())
    assert spec.names == ("hidden/0/bias", "hidden/0/kernel", "out/bias", "out/kernel", "scale")
    assert spec.shapes == ((4,), (3, 4), (2,), (4, 2), ())
    assert spec.dtypes == ("float32", "float32", "float16", "bfloat16", "float32")
    assert spec.sizes == (4, 12, 2, 8, 1)
    assert spec.offsets == (0, 4, 16, 18, 26)
    assert spec.size == 27
    assert spec.nbytes == 27 * 4


def test_ravel_puts_each_leaf_at_its_offset():
    params = mlp_params()
    spec = flat_spec(params)
    buffer = np.asarray(ravel(spec, params))
    assert buffer.shape == (27,) and buffer.dtype == np.float32
    np.testing.assert_array_equal(buffer[0:4], params["hidden"][0]["bias"])
    np.testing.assert_array_equal(buffer[4:16], params["hidden"][0]["kernel"].reshape(-1))
    np.testing.assert_array_equal(buffer[16:18], params["out"]["bias"].astype(np.float32))
    np.testing.assert_array_equal(
        buffer[18:26], params["out"]["kernel"].astype(np.float32).reshape(-1)
    )
    assert buffer[26] == 1.5


def test_round_trip_preserves_every_leaf_bit_for_bit():
    params = mlp_params()
    spec = flat_spec(params)
    assert_trees_bitwise_equal(unravel(spec, ravel(spec, params)), params)


def test_round_trip_of_special_half_precision_values():
    # float16 subnormals, -0.0, the largest finite values and inf all survive the float32 buffer.
    half = np.array([0.0, -0.0, 6e-8, -6e-8, 65504.0, -65504.0, np.inf, -np.inf, 1e-5], np.float16)
    brain = np.array(
        [0.0, -0.0, 1e-40, 3.3895e38, -3.3895e38, np.inf, 1.0 / 3.0], ml_dtypes.bfloat16
    )
    single = np.array([0.0, -0.0, 1e-45, np.finfo(np.float32).max, -np.inf], np.float32)
    params = {"half": half, "brain": brain, "single": single}
    spec = flat_spec(params)
    assert_trees_bitwise_equal(unravel(spec, ravel(spec, params)), params)


@FAST
@given(
    shapes=st.lists(
        st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5
    ),
    dtype_names=st.lists(
        st.sampled_from(["float32", "float16", "bfloat16"]), min_size=5, max_size=5
    ),
    seed=st.integers(0, 2**16),
)
def test_round_trip_of_random_trees(shapes, dtype_names, seed):
    rng = np.random.default_rng(seed)
    params = {
        f"leaf{i}": (rng.normal(size=shape) * 10.0 ** rng.integers(-3, 4)).astype(
            jnp.dtype(dtype_names[i])
        )
        for i, shape in enumerate(shapes)
    }
    spec = flat_spec(params)
    buffer = ravel(spec, params)
    assert buffer.shape == (sum(int(np.prod(s)) for s in shapes),)
    assert_trees_bitwise_equal(unravel(spec, buffer), params)


def test_tuples_lists_and_scalars_keep_their_structure():
    params = (np.float32(2.0), [np.arange(3, dtype=np.float32), (np.ones((1, 2), np.float16),)])
    spec = flat_spec(params)
    assert spec.names == ("0", "1/0", "1/1/0")
    np.testing.assert_array_equal(ravel(spec, params), [2.0, 0.0, 1.0, 2.0, 1.0, 1.0])
    assert_trees_bitwise_equal(unravel(spec, ravel(spec, params)), params)


def test_empty_tree_is_an_empty_buffer():
    spec = flat_spec({})
    assert spec.size == 0 and spec.nbytes == 0
    buffer = ravel(spec, {})
    assert buffer.shape == (0,) and buffer.dtype == jnp.float32
    assert unravel(spec, buffer) == {}


def test_spec_only_reads_shapes_and_dtypes():
    shapes_only = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf), jnp.result_type(leaf)), mlp_params()
    )
    assert flat_spec(shapes_only).header() == flat_spec(mlp_params()).header()


def test_ravel_and_unravel_under_jit():
    params = mlp_params()
    spec = flat_spec(params)
    buffer = jax.jit(lambda p: ravel(spec, p))(params)
    np.testing.assert_array_equal(buffer, ravel(spec, params))
    assert_trees_bitwise_equal(jax.jit(lambda b: unravel(spec, b))(buffer), params)


def test_vmap_ravel_stacks_updates_row_by_row():
    params = mlp_params()
    spec = flat_spec(params)
    trees = [
        jax.tree.map(
            lambda leaf, k=k: (np.asarray(leaf, np.float32) + k).astype(np.asarray(leaf).dtype),
            params,
        )
        for k in range(3)
    ]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *trees)
    stack = jax.vmap(lambda t: ravel(spec, t))(stacked)
    assert stack.shape == (3, spec.size)
    for k in range(3):
        np.testing.assert_array_equal(stack[k], ravel(spec, trees[k]))
    back = jax.vmap(lambda b: unravel(spec, b))(stack)
    assert_trees_bitwise_equal(jax.tree.map(lambda leaf: leaf[1], back), trees[1])


def test_header_is_plain_lists_and_checks_itself():
    spec = flat_spec(mlp_params())
    header = spec.header()
    assert header == {
        "names": ["hidden/0/bias", "hidden/0/kernel", "out/bias", "out/kernel", "scale"],
        "shapes": [[4], [3, 4], [2], [4, 2], []],
        "dtypes": ["float32", "float32", "float16", "bfloat16", "float32"],
    }
    assert spec.check_header(header) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda h: h["shapes"].__setitem__(1, [4, 3]),
            "shapes[1] (hidden/0/kernel): expected [3, 4], got [4, 3]",
        ),
        (
            lambda h: h["dtypes"].__setitem__(3, "float32"),
            "dtypes[3] (out/kernel): expected 'bfloat16', got 'float32'",
        ),
        (lambda h: h["names"].pop(), "names: expected 5 entries, got 4 entries"),
        (lambda h: h.__setitem__("names", "hidden"), "names: expected 5 entries, got str"),
        (lambda h: h.pop("dtypes"), "exactly the keys names, shapes, dtypes"),
        (lambda h: h.__setitem__("extra", 1), "exactly the keys names, shapes, dtypes"),
    ],
)
def test_check_header_says_what_differs(change, expected):
    spec = flat_spec(mlp_params())
    header = spec.header()
    change(header)
    assert expected in spec.check_header(header)


def test_check_header_rejects_a_non_map():
    assert "must be a map" in flat_spec(mlp_params()).check_header(["names"])
