"""Saving and loading a params pytree (nested dict of arrays) as one .npz file.

Keys are the '/'-joined dict paths (`hidden/0/kernel`), so the file is readable with
plain numpy and a model can be rebuilt from it with the task's model definition.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hierfl.errors import RunDirError


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """{'a/b': array} for every leaf of a nested dict pytree."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = np.asarray(leaf)
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
    """Writes params to `path` (.npz) atomically: a crash never leaves a half-written model."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **flatten_params(params))
    os.replace(tmp, path)
    return path


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Reads params saved by `save_params`; RunDirError if the file is missing or unreadable."""
    path = Path(path)
    try:
        with np.load(path) as data:
            return unflatten_params({k: data[k] for k in data.files})
    except (OSError, ValueError) as err:
        raise RunDirError(f"{path}: cannot read model parameters ({err})") from err
