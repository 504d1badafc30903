"""Top-k by magnitude: the same indices as `jax.lax.top_k(|x|, k)`, without sorting `x`.

XLA:CPU's `top_k` sorts: at P = 1e6, k = 1e4 it costs about 70 memory passes, and so do
its sort and cumulative sum, so no exact XLA formulation gets near a pass on a CPU. On the
host numpy selects in a few passes instead:

1. a threshold from a strided sample of `|x|`, set so that about `MARGIN * k` entries
   reach it;
2. the candidates: one compare pass over `x` and the indices where it holds;
3. the exact top k among the candidates (a partition at the k-th largest magnitude, ties
   to the lower index), ordered by magnitude with one sort of k 64-bit keys.

If fewer than k entries reach the threshold (an unlucky sample), every entry is a
candidate, so the result is always exact. `top_k_indices` runs inside jitted code through
`jax.pure_callback` on a CPU and is `jax.lax.top_k` on other devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_SIZE = 4096
"""About this many entries of `x` estimate the threshold."""
MARGIN = 1.25
"""The threshold aims at `MARGIN * k` candidates, so that at least k reach it."""


def top_k_indices(x: jax.Array, k: int) -> jax.Array:
    """Indices (int32 `[k]`) of the `k` entries of `x` `[P]` largest in magnitude, largest first.

    Ties go to the lower index, as in `jax.lax.top_k`; `x` must be finite. Traceable: jit
    and vmap it like any jax function.
    """
    return jax.lax.platform_dependent(
        x,
        cpu=lambda v: _host_top_k(v, k),
        default=lambda v: jax.lax.top_k(jnp.abs(v), k)[1].astype(jnp.int32),
    )


def _host_top_k(x: jax.Array, k: int) -> jax.Array:
    return jax.pure_callback(
        lambda v: top_k_magnitude(np.asarray(v), k),
        jax.ShapeDtypeStruct((k,), jnp.int32),
        x,
        vmap_method="sequential",
    )


def top_k_magnitude(x: np.ndarray, k: int) -> np.ndarray:
    """`top_k_indices` in numpy: int32 `[k]` indices of the largest `|x|`, largest first."""
    candidates = _candidates(x, k)
    magnitude = np.abs(x[candidates])
    keep = _top_k_of_candidates(magnitude, k)
    chosen = _largest_first(magnitude[keep], candidates[keep])
    return chosen if len(chosen) == k else _with_nan(x, k)


def _with_nan(x: np.ndarray, k: int) -> np.ndarray:
    """Exactly k indices where NaNs kept the selection short: NaN counts as the largest
    magnitude (as in `jax.lax.top_k`), ties to the lower index. A diverged update takes this
    path, and is then sent with weight 0."""
    magnitude = np.nan_to_num(np.abs(x), nan=np.inf, posinf=np.inf)
    return np.argsort(-magnitude, kind="stable")[:k].astype(np.int32)


def _candidates(x: np.ndarray, k: int) -> np.ndarray:
    """Ascending indices of every entry whose magnitude reaches a sampled threshold (at least k)."""
    size = x.shape[0]
    sample = np.abs(x[:: max(1, size // SAMPLE_SIZE)])
    rank = min(len(sample), int(MARGIN * k * len(sample) / size) + 8)
    threshold = np.partition(sample, len(sample) - rank)[len(sample) - rank]
    candidates = np.flatnonzero((x >= threshold) | (x <= -threshold))
    return candidates if len(candidates) >= k else np.arange(size)


def _top_k_of_candidates(magnitude: np.ndarray, k: int) -> np.ndarray:
    """A mask of the k largest `magnitude`s, ties at the k-th taken in order (lowest index first)."""
    kth = np.partition(magnitude, len(magnitude) - k)[len(magnitude) - k]
    keep = magnitude > kth
    ties = np.flatnonzero(magnitude == kth)
    keep[ties[: k - int(keep.sum())]] = True
    return keep


def _largest_first(magnitude: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """`indices` ordered by descending `magnitude`, then ascending index: one sort of uint64 keys.

    A non-negative float32's bits order like its value, so `(2^32 - 1 - bits) << 32 | index`
    sorts as (larger magnitude, lower index) first.
    """
    bits = magnitude.astype(np.float32).view(np.uint32).astype(np.uint64)
    keys = ((np.uint64(0xFFFFFFFF) - bits) << np.uint64(32)) | indices.astype(np.uint64)
    return (np.sort(keys) & np.uint64(0xFFFFFFFF)).astype(np.int32)
