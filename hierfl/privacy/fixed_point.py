"""Fixed-point encoding of float updates as integers mod 2^32, for secure aggregation.

Masking works in the group Z_(2^32): a device's float32 `[P]` update becomes P uint32 words,
the edge adds words mod 2^32, and the sum decodes back to floats. Each value is clipped to
`[-clip, clip]` and rounded to the nearest multiple of `1 / scale`, with `scale` the largest
power of two for which a sum of `summands` values never leaves the signed 32-bit range:

    summands * clip * scale <= 2^31 - 1,  scale = 2^floor(log2((2^31 - 1) / (summands * clip)))

so the sum of up to `summands` encoded values, read as a signed int32, is exactly the sum of
the rounded values (no wrap-around), and dividing by a power of two is exact in float.

Precision: one value is off by at most `1 / (2 scale)` (rounding), a sum of N values by at
most `N / (2 scale)`; `1 / scale` lies in `(summands * clip / 2^31, summands * clip / 2^30]`.
For clip 1 and 100 devices, `scale = 2^24`: a step of 6.0e-8 (float32's own spacing at 1.0
is 1.2e-7). The step grows linearly with `clip * summands`: pick `clip` just above the
largest coordinate a device sends (with DP at the device, its `clip_norm` bounds every
coordinate of the clipped update, before noise).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

MODULUS_BITS = 32
INT32_MAX = 2**31 - 1


class FixedPoint(NamedTuple):
    """The codec for a sum of at most `summands` values, each clipped to `[-clip, clip]`."""

    clip: float
    summands: int

    @property
    def scale_bits(self) -> int:
        """log2 of `scale`; may be negative when `summands * clip` exceeds 2^31 (steps above 1)."""
        if self.clip <= 0 or self.summands < 1:
            raise ValueError(
                f"FixedPoint: clip must be > 0 and summands >= 1, got clip={self.clip}, summands={self.summands}"
            )
        return math.floor(math.log2(INT32_MAX / (self.summands * self.clip)))

    @property
    def scale(self) -> float:
        """Integer units per 1.0: values are rounded to multiples of `1 / scale`."""
        return math.ldexp(1.0, self.scale_bits)

    @property
    def step(self) -> float:
        """The spacing of representable values, `1 / scale` (a sum is exact to `summands * step / 2`)."""
        return math.ldexp(1.0, -self.scale_bits)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """float `[P]` -> uint32 `[P]`: `round(clip(values) * scale) mod 2^32` (two's complement)."""
        clipped = np.clip(np.asarray(values, dtype=np.float64), -self.clip, self.clip)
        return np.rint(clipped * self.scale).astype(np.int64).astype(np.uint32)

    def decode(self, words: np.ndarray) -> np.ndarray:
        """uint32 `[P]` (one encoded value or a sum of <= `summands`) -> float32 `[P]`."""
        signed = np.asarray(words, dtype=np.uint32).view(np.int32).astype(np.float64)
        return (signed * self.step).astype(np.float32)

    def clipped(self, values: np.ndarray) -> int:
        """How many of `values` lie outside `[-clip, clip]` (and so would be clipped by `encode`)."""
        return int(np.count_nonzero(np.abs(np.asarray(values)) > self.clip))
