"""Partitioners: how a pool of labelled examples is divided among devices.

All functions are pure numpy, deterministic in the `np.random.Generator` passed in, and
return one index array per part (indices into the pool), disjoint and together covering
exactly the examples they were asked to place. Every part gets at least one example, so
no device is silently idle: a skew that would empty a device moves one example to it
from the largest part.
"""

from __future__ import annotations

import numpy as np

from hierfl.errors import DataError


def class_indices(labels, num_classes: int) -> np.ndarray:
    """`labels` as a 1-D integer array of class indices in [0, num_classes); DataError saying what is wrong otherwise."""
    labels = np.asarray(labels)
    if (
        labels.ndim != 1
        or not np.issubdtype(labels.dtype, np.integer)
        or (labels.size and (labels.min() < 0 or labels.max() >= num_classes))
    ):
        raise DataError(
            f"labels must be a 1-D integer array of class indices in [0, {num_classes}), "
            f"got shape {labels.shape}, dtype {labels.dtype}, values {np.unique(labels)[:8]}"
        )
    return labels


def split_stratified(
    labels: np.ndarray, sizes: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Splits the pool into parts of exactly `sizes`, each with (about) the pool's label mix.

    Used to give plants and lines their share. Classes are first interleaved into one
    sequence in which every class is spread evenly from start to end; any run of
    consecutive elements of it then holds each class in proportion (within one example),
    so part j is simply the j-th run. If `sizes` sum to less than the pool, the rest is
    left out, stratified too.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if total > len(labels):
        raise DataError(f"cannot split {len(labels)} examples into parts totalling {total}")
    interleaved = _class_interleaved_order(labels, rng)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(interleaved[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _class_interleaved_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of the pool in which classes alternate as evenly as their counts allow."""
    keys = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        # Rank within class over class size: each class spreads evenly over [0, 1).
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return np.argsort(keys, kind="stable")


def iid(num_examples: int, num_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffles the pool and cuts it into `num_parts` parts of (almost) equal size."""
    _check_enough(num_examples, num_parts)
    return [np.sort(p) for p in np.array_split(rng.permutation(num_examples), num_parts)]


def dirichlet(
    labels: np.ndarray, num_parts: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew: each class is divided among the parts by proportions ~ Dirichlet(alpha).

    Small `alpha` (0.1) gives parts dominated by one or two classes; large `alpha` (100)
    approaches IID. Part sizes vary as a consequence (Hsu et al. 2019).
    """
    _check_enough(len(labels), num_parts)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_parts, alpha))) * len(members)).astype(
            np.int64
        )[:-1]
        for part, chunk in zip(parts, np.split(members, cuts)):
            part.append(chunk)
    return _ensure_nonempty([np.sort(np.concatenate(p)) for p in parts])


def quantity(
    num_examples: int, num_parts: int, sigma: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Quantity skew: part sizes proportional to lognormal(0, sigma) draws, contents IID."""
    _check_enough(num_examples, num_parts)
    shares = rng.lognormal(0.0, sigma, size=num_parts)
    sizes = 1 + _largest_remainder(shares / shares.sum() * (num_examples - num_parts))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    order = rng.permutation(num_examples)
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def proportional_sizes(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer sizes summing to `total`, proportional to `weights` (largest remainder)."""
    weights = np.asarray(weights, dtype=np.float64)
    return _largest_remainder(weights / weights.sum() * total)


def quantile_bins(values: np.ndarray, num_bins: int) -> np.ndarray:
    """Integer strata `[N]` in [0, num_bins): each value's quantile bin among `values`.

    Stratifies a continuous target (a regression task's) so that stratified splits and
    Dirichlet skew can work on it as on class labels: bin k holds the values between the
    k/num_bins and (k+1)/num_bins quantiles, so bins are (about) equally full. Ties fall in
    one bin; with fewer distinct values than bins some bins stay empty.
    """
    values = np.asarray(values, np.float64)
    if num_bins < 1:
        raise DataError(f"num_bins must be >= 1, got {num_bins}")
    if len(values) == 0:
        return np.zeros(0, np.int64)
    edges = np.quantile(values, np.linspace(0, 1, num_bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").astype(np.int64)


def _largest_remainder(quotas: np.ndarray) -> np.ndarray:
    floors = np.floor(quotas).astype(np.int64)
    short = int(round(quotas.sum())) - int(floors.sum())
    floors[np.argsort(-(quotas - floors), kind="stable")[:short]] += 1
    return floors


def _ensure_nonempty(parts: list[np.ndarray]) -> list[np.ndarray]:
    for i, part in enumerate(parts):
        if len(part) == 0:
            donor = max(range(len(parts)), key=lambda j: len(parts[j]))
            parts[i], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return parts


def _check_enough(num_examples: int, num_parts: int) -> None:
    if num_examples < num_parts:
        raise DataError(
            f"{num_examples} examples cannot give each of {num_parts} devices at least one"
        )
