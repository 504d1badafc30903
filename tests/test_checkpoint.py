"""Tests of hierfl.runs.checkpoint: params of real models survive a save/load round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierfl.data.tasks import TASKS
from hierfl.data.tasks.models import build_model
from hierfl.errors import RunDirError
from hierfl.runs.checkpoint import flatten_params, load_params, save_params, unflatten_params

MODELS = [("digits", "mlp"), ("digits", "cnn"), ("bearing-fault", "cnn1d")]


def leaves_by_path(tree):
    """{path tuple: leaf} with the dict keys as they are (ints stay ints)."""
    return {
        tuple(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def assert_same_params(loaded, original):
    want, got = leaves_by_path(original), leaves_by_path(loaded)
    assert got.keys() == want.keys()
    for path, leaf in want.items():
        assert got[path].shape == leaf.shape, path
        assert got[path].dtype == leaf.dtype, path
        np.testing.assert_array_equal(got[path], np.asarray(leaf), err_msg=str(path))


@pytest.mark.parametrize("task, model", MODELS)
def test_round_trip_of_real_model_params(tmp_path, task, model):
    _, params = build_model(model, TASKS[task].models[model], jax.random.key(0))
    path = save_params(tmp_path / "model.npz", params)
    assert path == tmp_path / "model.npz"
    assert not (tmp_path / "model.npz.tmp").exists()
    loaded = load_params(path)
    assert_same_params(loaded, params)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)


def test_mlp_file_layout_is_plain_numpy(tmp_path):
    # The digits MLP is Linear(64, 128) in an nnx.List, then a Linear(128, 10) head.
    _, params = build_model("mlp", TASKS["digits"].models["mlp"], jax.random.key(1))
    save_params(tmp_path / "m.npz", params)
    with np.load(tmp_path / "m.npz") as data:
        shapes = {name: data[name].shape for name in data.files if name != "__dtypes__"}
    assert shapes == {
        "hidden/0/kernel": (64, 128),
        "hidden/0/bias": (128,),
        "head/kernel": (128, 10),
        "head/bias": (10,),
    }
    loaded = load_params(tmp_path / "m.npz")
    assert set(loaded["hidden"]) == {0}  # the list index comes back as an int key


def test_loaded_params_drive_the_model(tmp_path):
    model, params = build_model("cnn", TASKS["digits"].models["cnn"], jax.random.key(2))
    save_params(tmp_path / "c.npz", params)
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(4, 8, 8, 1)), jnp.float32)
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply(load_params(tmp_path / "c.npz"), x), apply(params, x))


def test_flatten_unflatten_nested_int_keys():
    tree = {"a": {0: np.arange(3), 1: {"w": np.ones((2, 2), np.int8)}}, "b": np.float32(2.5)}
    flat = flatten_params(tree)
    assert set(flat) == {"a/0", "a/1/w", "b"}
    back = unflatten_params(flat)
    assert set(back["a"]) == {0, 1}
    np.testing.assert_array_equal(back["a"][1]["w"], tree["a"][1]["w"])
    assert back["a"][1]["w"].dtype == np.int8


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "m.npz"
    save_params(path, {"w": np.zeros(3, np.float32)})
    save_params(path, {"w": np.ones(3, np.float32)})
    np.testing.assert_array_equal(load_params(path)["w"], np.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_missing_file_is_a_run_dir_error_naming_the_path(tmp_path):
    path = tmp_path / "nope" / "model.npz"
    with pytest.raises(RunDirError, match="nope/model.npz"):
        load_params(path)


def test_non_npz_file_is_a_run_dir_error_naming_the_path(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"definitely not numpy " * 10)
    with pytest.raises(RunDirError, match="junk.npz"):
        load_params(path)


def saved_model_bytes(tmp_path) -> bytes:
    _, params = build_model("mlp", TASKS["digits"].models["mlp"], jax.random.key(0))
    return save_params(tmp_path / "good.npz", params).read_bytes()


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: b"",  # empty
        lambda raw: raw[: len(raw) // 2],  # truncated in the middle
        lambda raw: raw[:-30],  # central directory cut short
        lambda raw: (
            raw[: len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 0xFF]) + raw[len(raw) // 2 + 1 :]
        ),  # a flipped byte
    ],
    ids=["empty", "truncated", "tail-cut", "bit-flip"],
)
def test_corrupt_file_is_a_run_dir_error_naming_the_path(tmp_path, corrupt):
    path = tmp_path / "broken.npz"
    path.write_bytes(corrupt(saved_model_bytes(tmp_path)))
    with pytest.raises(RunDirError, match="broken.npz"):
        load_params(path)


def test_bfloat16_params_round_trip(tmp_path):
    _, params = build_model("mlp", TASKS["digits"].models["mlp"], jax.random.key(0))
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    save_params(tmp_path / "bf16.npz", params)
    assert_same_params(load_params(tmp_path / "bf16.npz"), params)
