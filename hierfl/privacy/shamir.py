"""Shamir's t-of-n secret sharing over the prime field GF(2^521 - 1), in exact Python ints.

A secret (an int below the prime, e.g. a 32-byte key read big-endian) is the constant term of
a random polynomial of degree `t - 1`; share `x` is `(x, f(x))` for `x = 1..n`. Any `t`
shares give back the secret by Lagrange interpolation at 0; any `t - 1` shares are uniformly
distributed whatever the secret (perfect secrecy), so fewer than `t` reveal nothing and
interpolating them yields an unrelated value, never an error: the caller counts shares.

The prime is the Mersenne prime 2^521 - 1 (well above any 256-bit secret); a share's value
is sent as 66 big-endian bytes.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66
"""Bytes of one share value (521 bits, big-endian)."""

Share = tuple[int, int]
"""`(x, y)`: the polynomial's value `y` at the point `x` (1..n)."""


def split(secret: int, count: int, threshold: int) -> list[Share]:
    """`count` shares of `secret`, any `threshold` of which reconstruct it (x = 1..count)."""
    if not 0 <= secret < PRIME:
        raise ValueError("shamir.split: the secret must be an int in [0, 2^521 - 1)")
    if not 1 <= threshold <= count:
        raise ValueError(
            f"shamir.split: need 1 <= threshold <= count, got threshold={threshold}, count={count}"
        )
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [(x, _evaluate(coefficients, x)) for x in range(1, count + 1)]


def reconstruct(shares: Sequence[Share]) -> int:
    """The polynomial's value at 0 through `shares` (distinct nonzero x): the secret if there
    are at least `threshold` genuine shares, an unrelated field element otherwise."""
    weights = lagrange_at_zero([x for x, _ in shares])
    return sum(y * weight for (_, y), weight in zip(shares, weights)) % PRIME


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """The Lagrange weights `l_i(0)` for the points `xs`: `secret = sum(y_i * l_i(0)) mod p`.

    Computed once per set of points, they reconstruct every secret shared to the same holders.
    """
    if not xs or len(set(xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ValueError(
            f"shamir: need one or more shares with distinct nonzero x, got x = {list(xs)}"
        )
    weights = []
    for i, x_i in enumerate(xs):
        numerator, denominator = 1, 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = numerator * -x_j % PRIME
                denominator = denominator * (x_i - x_j) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return weights


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):  # Horner
        value = (value * x + coefficient) % PRIME
    return value
