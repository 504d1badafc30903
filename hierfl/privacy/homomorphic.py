"""Homomorphic encryption of edge summaries (CKKS, TenSEAL): the cloud adds what it cannot read.

Key setup. One plant runs `generate_keys(parameters)` and hands the resulting *secret
context* (CKKS parameters, public key and secret key) to every other plant out of band (the
plants' own channel; never through the cloud). The cloud receives `public_context(secret)`:
the same parameters and public key without the secret key, so it can scale and add
ciphertexts but not decrypt them (`weighted_sum` refuses a context that holds a secret key).

Each round (one message per edge each way, plain msgpack-able dicts):

| step | message |
|---|---|
| edge -> cloud | `encrypt_summary(ctx, summary, weight, round)`: `{"kind": "he_summary", "round", "size": P, "weight", "chunks": [ciphertext bytes]}` |
| cloud -> edges | `weighted_sum(public_ctx, messages, weights)`: `{"kind": "he_aggregate", "round", "size": P, "chunks": [...]}` |
| edge | `decrypt_aggregate(ctx, message)` -> float32 `[P]`, `sum_i weights[i] * summary_i` |

The distributed runtime (`hierfl.runtime.encrypted`) sends the same steps with each
ciphertext chunk as a raw ZeroMQ frame after a msgpack header, not inside a dict.

A flat float32 summary of P values is split into `ceil(P / slots)` ciphertexts of
`slots = poly_modulus_degree / 2` values. The weights are plaintext scalars chosen by the
cloud (e.g. `weight_i / sum(weight)`, from the plaintext `weight` each edge reports).

Parameters (`CkksParameters`, from `[privacy] he_poly_modulus_degree`, `he_scale_bits`):
degree 8192 (4096 slots), coefficient moduli `(scale + 20, scale, scale + 20)` bits =
`(60, 40, 60)` by default (160 of the 218 bits SEAL allows for 128-bit security at this
degree), scale 2^40. The middle prime is the one level the weight product consumes; 20
bits above the scale hold the integer part, so |values| must stay below 2^19.

Precision (measured, `tests/test_homomorphic.py` and `benchmarks/privacy.py`): the weighted
mean of 4 summaries decrypts to within about 2e-8 absolute of the float64 reference for
N(0, 0.01^2) values and 4e-7 for N(0, 1) values, i.e. about 1e-6 of the values' magnitude
(some 20 bits; float32 keeps 24), far below the noise of SGD updates. Ciphertexts are
about 14x the float32 bytes on the way up and 8x on the way down (one level fewer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from hierfl.errors import HomomorphicError

try:
    import tenseal as ts
except ImportError as error:  # an optional dependency: the `he` extra
    raise HomomorphicError('CKKS summaries need TenSEAL: pip install "hierfl[he]"') from error
from hierfl.topology import Privacy
from hierfl.topology.schema import he_coeff_mod_bit_sizes

__all__ = [
    "CkksParameters",
    "check_ciphertext",
    "decrypt_aggregate",
    "encrypt_summary",
    "generate_keys",
    "load_context",
    "public_context",
    "weighted_sum",
]


class CkksParameters(NamedTuple):
    """CKKS ring degree and scale; see the module docstring for the moduli and precision."""

    poly_modulus_degree: int = 8192
    scale_bits: int = 40

    @classmethod
    def of(cls, privacy: Privacy) -> CkksParameters:
        """The parameters a topology's `[privacy]` table sets."""
        return cls(privacy.he_poly_modulus_degree, privacy.he_scale_bits)

    @property
    def coeff_mod_bit_sizes(self) -> tuple[int, int, int]:
        return he_coeff_mod_bit_sizes(Privacy(he_scale_bits=self.scale_bits))

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return self.poly_modulus_degree // 2


def generate_keys(parameters: CkksParameters = CkksParameters()) -> bytes:
    """A fresh secret context (parameters, public and secret key), serialized, for the plants only."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=parameters.poly_modulus_degree,
        coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes),
    )
    context.global_scale = 2.0**parameters.scale_bits
    return context.serialize(save_secret_key=True, save_relin_keys=False)


def public_context(secret_context: bytes) -> bytes:
    """The context the cloud gets: the same parameters and public key, no secret key."""
    context = load_context(secret_context)
    context.make_context_public()
    return context.serialize(save_relin_keys=False)


def load_context(data: bytes) -> ts.Context:
    """A context from `generate_keys` or `public_context` bytes."""
    try:
        return ts.context_from(data)
    except Exception as error:  # SEAL raises several types for malformed input
        raise HomomorphicError(
            f"not a serialized CKKS context ({len(data)} bytes): {error}"
        ) from None


def encrypt_summary(
    context: ts.Context, summary: np.ndarray, weight: float, round: int
) -> dict[str, Any]:
    """An edge's summary (float `[P]`) encrypted in chunks of `slots` values, with its plaintext weight."""
    values = np.asarray(summary, dtype=np.float64).ravel()
    slots = context.seal_context().data.key_context_data().parms().poly_modulus_degree() // 2
    chunks = [
        ts.ckks_vector(context, values[start : start + slots]).serialize()
        for start in range(0, len(values), slots)
    ]
    return {
        "kind": "he_summary",
        "round": round,
        "size": len(values),
        "weight": float(weight),
        "chunks": chunks,
    }


def weighted_sum(
    context: ts.Context, messages: Sequence[Mapping[str, Any]], weights: Sequence[float]
) -> dict[str, Any]:
    """The cloud's step: `sum_i weights[i] * summary_i`, computed on ciphertexts, still encrypted.

    `context` must be the public context (HomomorphicError if it holds the secret key, so a
    misconfigured cloud fails loudly instead of quietly being able to decrypt).
    """
    if context.has_secret_key():
        raise HomomorphicError(
            "the cloud's CKKS context holds the secret key; give the cloud public_context(...) only"
        )
    if not messages or len(messages) != len(weights):
        raise HomomorphicError(
            f"weighted_sum: need one weight per summary, got {len(messages)} summaries and {len(weights)} weights"
        )
    first = messages[0]
    for message in messages:
        if message.get("kind") != "he_summary" or message.get("round") != first.get("round"):
            raise HomomorphicError(
                f"weighted_sum: expected he_summary messages of round {first.get('round')}, "
                f"got {message.get('kind')!r} of round {message.get('round')!r}"
            )
        if message.get("size") != first["size"] or len(message.get("chunks", ())) != len(
            first["chunks"]
        ):
            raise HomomorphicError(
                f"weighted_sum: summaries differ in size ({message.get('size')} vs {first['size']} values)"
            )
    chunks = []
    for index in range(len(first["chunks"])):
        total = None
        for message, weight in zip(messages, weights):
            term = _vector(context, message["chunks"][index]) * float(weight)
            total = term if total is None else total + term
        chunks.append(total.serialize())
    return {
        "kind": "he_aggregate",
        "round": first["round"],
        "size": first["size"],
        "chunks": chunks,
    }


def decrypt_aggregate(context: ts.Context, message: Mapping[str, Any]) -> np.ndarray:
    """An edge's last step: the cloud's encrypted aggregate, decrypted to float32 `[P]`."""
    if not context.has_secret_key():
        raise HomomorphicError(
            "decrypt_aggregate needs the plants' secret context, not the public one"
        )
    size = message["size"]
    values = np.concatenate(
        [
            np.asarray(_vector(context, chunk).decrypt(), dtype=np.float64)
            for chunk in message["chunks"]
        ]
    )
    if len(values) != size:
        raise HomomorphicError(f"the aggregate holds {len(values)} values, expected {size}")
    return values.astype(np.float32)


def check_ciphertext(context: ts.Context, data: bytes, size: int) -> None:
    """HomomorphicError unless `data` is a CKKS ciphertext of `size` values under `context` (a fresh one, at the top level)."""
    vector = _vector(context, data)
    if vector.size() != size:
        raise HomomorphicError(f"a ciphertext of {vector.size()} values where {size} were expected")
    (ciphertext,) = vector.data.ciphertext()
    fresh = (
        context.seal_context().data.first_context_data().chain_index() + 1
    )  # moduli below the special prime
    if (ciphertext.size(), ciphertext.coeff_modulus_size(), ciphertext.scale) != (
        2,
        fresh,
        context.global_scale,
    ):
        raise HomomorphicError(
            f"not a freshly encrypted ciphertext ({ciphertext.size()} polynomials, {ciphertext.coeff_modulus_size()} moduli, scale "
            f"2^{math.log2(max(ciphertext.scale, 1.0)):g}; a fresh one has 2, {fresh}, 2^{math.log2(context.global_scale):g})"
        )


def chunk_count(size: int, parameters: CkksParameters) -> int:
    """Ciphertexts per summary of `size` values."""
    return math.ceil(size / parameters.slots)


def _vector(context: ts.Context, data: bytes) -> ts.CKKSVector:
    try:
        return ts.ckks_vector_from(context, data)
    except Exception as error:
        raise HomomorphicError(
            f"not a CKKS ciphertext under this context ({len(data)} bytes): {error}"
        ) from None
