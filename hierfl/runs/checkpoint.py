"""Saving and loading a params pytree (nested dict of arrays) as one .npz file.

Keys are the '/'-joined dict paths (`hidden/0/kernel`), so the file is readable with
plain numpy and a model can be rebuilt from it with the task's model definition.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.errors import RunDirError

DTYPES_KEY = "__dtypes__"


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """{'a/b': array} for every leaf of a nested dict pytree."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = np.asarray(
            leaf
        )
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """The nested dict of `flatten_params`; integer path parts become int keys again."""
    tree: dict[Any, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, last = [int(p) if p.isdigit() else p for p in name.split("/")]
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def save_params(path: str | os.PathLike, params: Any) -> Path:
    """Writes params to `path` (.npz) atomically: a crash never leaves a half-written model.

    Leaf dtypes are recorded by name, so dtypes numpy cannot store natively (bfloat16)
    come back as they went in.
    """
    path = Path(path)
    flat = flatten_params(params)
    dtypes = {name: str(value.dtype) for name, value in flat.items()}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            **{name: _storable(v) for name, v in flat.items()},
            **{DTYPES_KEY: np.array(json.dumps(dtypes))},
        )
    os.replace(tmp, path)
    return path


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Reads params saved by `save_params`; RunDirError if the file is missing or unreadable."""
    path = Path(path)
    try:
        with np.load(path) as data:
            dtypes = json.loads(str(data[DTYPES_KEY])) if DTYPES_KEY in data.files else {}
            flat = {k: _restore(data[k], dtypes.get(k)) for k in data.files if k != DTYPES_KEY}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise RunDirError(
            f"{path}: cannot read model parameters ({type(err).__name__}: {err})"
        ) from err
    return unflatten_params(flat)


def _storable(value: np.ndarray) -> np.ndarray:
    """Arrays of dtypes numpy's .npz cannot name (ml_dtypes' bfloat16, ...) as raw same-size ints."""
    if value.dtype.kind == "V" or value.dtype.name not in np.sctypeDict:
        return value.view(f"u{value.dtype.itemsize}")
    return value


def _restore(value: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is None or value.dtype.name == dtype:
        return value
    return value.view(jnp.dtype(dtype))
