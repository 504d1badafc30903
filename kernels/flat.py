"""Flat update buffers: a params pytree as one contiguous float32 vector, and back.

Every kernel works on `[K, P]` stacks of such vectors (K updates of P parameters), and
the transport sends one buffer as one frame. The layout is fixed once per model by a
`FlatSpec` (leaf names, shapes, dtypes, offsets), computed from any params pytree of
that model and reused for every update:

    spec = flat_spec(params)
    buffer = ravel(spec, params)           # [P] float32
    params = unravel(spec, buffer)         # the same pytree, leaf dtypes restored
    stack = jax.vmap(lambda t: ravel(spec, t))(stacked_trees)   # [K, P]

Leaves are laid out in `jax.tree` order and upcast to float32 (exact for float32,
bfloat16 and float16 leaves), so a round trip returns every leaf bit for bit.
`spec.header()` is the JSON/msgpack-safe description a message carries, and
`spec.check_header(h)` says why a peer's description differs from ours.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BUFFER_DTYPE = jnp.float32


def leaf_name(path: tuple[Any, ...]) -> str:
    """`hidden/0/kernel`: a pytree key path as a '/'-joined name (dict keys, indices, attributes)."""
    parts = []
    for key in path:
        for attribute in ("key", "idx", "name"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class FlatSpec:
    """The layout of a model's parameters in a flat buffer.

    `names[i]`, `shapes[i]`, `dtypes[i]` describe leaf i, stored at
    `buffer[offsets[i] : offsets[i] + sizes[i]]`; `size` is P, the buffer length.
    `treedef` rebuilds the pytree (it is not part of `header()`: both ends of a link build
    their spec from the same model definition, and the header lets them check that).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    offsets: tuple[int, ...]
    treedef: Any

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def size(self) -> int:
        """P: the number of parameters, the length of a buffer."""
        return self.offsets[-1] + self.sizes[-1] if self.names else 0

    @property
    def nbytes(self) -> int:
        """Bytes of one float32 buffer."""
        return self.size * jnp.dtype(BUFFER_DTYPE).itemsize

    def header(self) -> dict[str, list]:
        """`{"names", "shapes", "dtypes"}` as plain lists: what a message says its buffer holds."""
        return {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "dtypes": list(self.dtypes),
        }

    def check_header(self, header: object) -> str | None:
        """Why `header` (a peer's `header()`) does not describe this layout, or None if it does."""
        if not isinstance(header, dict) or set(header) != {"names", "shapes", "dtypes"}:
            return "array spec must be a map with exactly the keys names, shapes, dtypes"
        mine = self.header()
        for key in ("names", "shapes", "dtypes"):
            theirs = header[key]
            if not isinstance(theirs, list) or len(theirs) != len(mine[key]):
                return (
                    f"array spec {key}: expected {len(mine[key])} entries, got {_describe(theirs)}"
                )
            for i, (a, b) in enumerate(zip(mine[key], theirs)):
                if a != b:
                    return f"array spec {key}[{i}] ({self.names[i]}): expected {a!r}, got {b!r}"
        return None


def flat_spec(params: Any) -> FlatSpec:
    """The flat layout of `params` (any pytree of arrays; only shapes and dtypes are read)."""
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    names, shapes, dtypes, offsets = [], [], [], []
    offset = 0
    for path, leaf in leaves_with_paths:
        shape = tuple(int(d) for d in np.shape(leaf))
        names.append(leaf_name(path))
        shapes.append(shape)
        dtypes.append(str(jnp.result_type(leaf)))
        offsets.append(offset)
        offset += math.prod(shape)
    return FlatSpec(tuple(names), tuple(shapes), tuple(dtypes), tuple(offsets), treedef)


def ravel(spec: FlatSpec, params: Any) -> jax.Array:
    """`params` as one float32 vector `[P]` in `spec`'s layout (vmap it for a stack)."""
    leaves = spec.treedef.flatten_up_to(params)
    if not leaves:
        return jnp.zeros((0,), BUFFER_DTYPE)
    return jnp.concatenate([jnp.ravel(leaf).astype(BUFFER_DTYPE) for leaf in leaves])


def unravel(spec: FlatSpec, buffer: jax.Array) -> Any:
    """The pytree whose `ravel` is `buffer` `[P]`; leaves get their recorded shapes and dtypes."""
    leaves = [
        jax.lax.slice_in_dim(buffer, offset, offset + size).reshape(shape).astype(dtype)
        for offset, size, shape, dtype in zip(spec.offsets, spec.sizes, spec.shapes, spec.dtypes)
    ]
    return spec.treedef.unflatten(leaves)


def _describe(value: object) -> str:
    return f"{len(value)} entries" if isinstance(value, list) else type(value).__name__
