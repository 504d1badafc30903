"""hierfl.kernels: pure JAX array kernels for every tier.

Kernels take flat update buffers (`flat`: a params pytree as one float32 vector `[P]`,
stacked `[K, P]`) and return arrays: aggregation (weighted and per-segment sums and means,
coordinate median, trimmed mean, Krum), compression per link (`compression`: int8, top-k with
error feedback, float16/bfloat16 casts), and privacy building blocks (`privacy`: L2
clipping, Gaussian noise). They do no I/O and know nothing of topologies, so the
simulator and the runtime call the same code, on CPU or GPU through XLA (top-k's selection
on a CPU through numpy: `selection`).
"""

from hierfl.kernels.aggregation import (
    coordinate_median,
    krum_scores,
    multi_krum,
    segment_weighted_mean,
    segment_weighted_sum,
    trimmed_mean,
    weighted_mean,
    weighted_sum,
)
from hierfl.kernels.compression import CODECS, Codec, make_codec, roundtrip
from hierfl.kernels.flat import FlatSpec, flat_spec, ravel, unravel
from hierfl.kernels.privacy import add_gaussian_noise, clip_by_l2, l2_norms

__all__ = [
    "CODECS",
    "Codec",
    "FlatSpec",
    "add_gaussian_noise",
    "clip_by_l2",
    "coordinate_median",
    "flat_spec",
    "krum_scores",
    "l2_norms",
    "make_codec",
    "multi_krum",
    "ravel",
    "roundtrip",
    "segment_weighted_mean",
    "segment_weighted_sum",
    "trimmed_mean",
    "unravel",
    "weighted_mean",
    "weighted_sum",
]
