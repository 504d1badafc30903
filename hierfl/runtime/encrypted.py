"""Homomorphic encryption of the cloud link (`[privacy] homomorphic = true`): the cloud adds what it cannot read.

The cloud process never holds a plaintext summary or a plaintext global model. The
plants share one secret CKKS context (`hierfl keys ckks`; `hierfl.privacy.homomorphic`
holds the scheme); the cloud loads only the public one and refuses a context that holds
the secret key. So the **edges keep the global model**:

    version 0      every node builds the same initial model from the seed (`node_model`)
    cloud round r  the cloud opens the round with `he_aggregate` (round r, `model_version`
                   r - 1): the encrypted aggregate A_{r-1} of round r - 1 (no chunks for
                   r = 1, or when nobody answered: the model stays as it is)
    each edge      decrypts A_{r-1} and adds it to its copy of global model r - 2, giving
                   version r - 1 (every edge decrypts the same ciphertext, so all agree);
                   evaluates it on its plant's test examples and sends an `evaluation`;
                   runs its edge rounds; sends `he_summary`: its model's change since
                   version r - 1, encrypted, with its plaintext weight
    the cloud      A_r = sum_e c_e * summary_e over the ciphertexts, with the plaintext
                   coefficients c_e = server_learning_rate * w_e / sum(w) (the mean rule
                   and the `sgd` server optimizer, which the topology requires with HE),
                   so version r = version r - 1 + A_r, exactly the simulator's step
    after round R  the cloud sends A_R with `final`: the edges apply it, evaluate, write
                   the final model (`--model-out`), and the cloud stops them

The cloud writes round r's record to `metrics.jsonl` once the edges' evaluations of
version r arrive (during round r + 1, or after the final aggregate); a plant that does
not report in time is missing from that record's scores (NaN). Evaluations are
plaintext scalars rounded to `EVALUATION_DIGITS` significant digits: the threat model
forbids returning exact decryptions to the cloud (IND-CPA-D attacks on CKKS). A
classifier's evaluation also carries counts, exact: the confusion matrix (argmax
decisions) and, for two classes, the histogram of the probability of class 1 in
`hierfl.data.classification.BINS` bins, coarse functions of the decrypted model.

Stale summaries (an edge's offline progress, see `edge_cycle.py`) are encrypted the same way
and join the weighted sum with their discounted weight. Checkpoints and resume:

- the cloud saves, after each round, the round number, the encrypted aggregate A_r and
  the round's record so far (`EncryptedCheckpoints`); a resumed cloud reopens round r + 1
  with A_r and completes record r from the evaluations the edges (re)send;
- an edge saves its decrypted global model and its version (`edge-<plant>.npz`) and says
  `hello` with that version when it (re)starts. The cloud keeps the newest aggregates in
  memory, up to `CATCH_UP_BYTES`, and sends an edge that is behind the ones it misses
  (`catch_up: true`: applied in order, no round started) before the open round's; so an
  edge down for a while rejoins with `--resume` (for a 10k-parameter model, some 650
  rounds; for 1M parameters, 8). A resumed cloud has only its checkpointed aggregate: an
  edge catches up by one round then. An edge further behind (or ahead, after the cloud
  lost its checkpoints) cannot rebuild the model: it stops with an error naming the gap
  (`catch_up`; exit status 2, so it does not hold up rounds); copy the state file of
  another plant (same global model) to rejoin.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import numpy as np

from hierfl.errors import HomomorphicError
from hierfl.kernels import FlatSpec
from hierfl.privacy import homomorphic as he
from hierfl.runtime import protocol
from hierfl.topology import Topology

SECRET_FILE, PUBLIC_FILE = "ckks-secret.bin", "ckks-public.bin"
CODEC = "ckks"
EVALUATION_DIGITS = 4
"""Significant digits of the evaluation scalars an edge reports (exact up to 9999 test examples a plant)."""
KEEP = 2
CATCH_UP_BYTES = 1 << 28
"""Memory for the aggregates the cloud keeps for edges that fell behind (each about 8x the model's float32 bytes)."""


# -- keys ---------------------------------------------------------------------------------------


def write_key_files(
    directory: Path, parameters: he.CkksParameters, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """A fresh key pair: `DIR/ckks-secret.bin` (for every plant, mode 0600) and `DIR/ckks-public.bin` (for the cloud).

    Existing key files are kept (HomomorphicError) unless `overwrite`: new keys would cut
    off every plant that still holds the old secret context.
    """
    directory = Path(directory)
    secret_path, public_path = directory / SECRET_FILE, directory / PUBLIC_FILE
    existing = [str(p) for p in (secret_path, public_path) if p.exists()]
    if existing and not overwrite:
        raise HomomorphicError(
            f"{', '.join(existing)} already exist; the federation's plants may hold that key: remove the files to make new ones"
        )
    directory.mkdir(parents=True, exist_ok=True)
    secret = he.generate_keys(parameters)
    secret_path.unlink(missing_ok=True)  # so the new file is created with mode 0600
    descriptor = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(secret)
    public_path.write_bytes(he.public_context(secret))
    return secret_path, public_path


def load_plant_context(path: Path, topology: Topology):
    """An edge's CKKS context: the plants' secret one, with the topology's parameters."""
    context = _load(path, topology)
    if not context.has_secret_key():
        raise HomomorphicError(
            f"{path}: this CKKS context has no secret key; an edge needs the plants' secret context ({SECRET_FILE}), not the cloud's"
        )
    return context


def load_cloud_context(path: Path, topology: Topology):
    """The cloud's CKKS context: the public one. A context holding the secret key is refused, so the cloud cannot decrypt."""
    context = _load(path, topology)
    if context.has_secret_key():
        raise HomomorphicError(
            f"{path}: this CKKS context holds the plants' secret key; the cloud must get the public context only "
            f"({PUBLIC_FILE}, `hierfl keys ckks`), or it could decrypt every plant's summary"
        )
    return context


def _load(path: Path, topology: Topology):
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise HomomorphicError(f"cannot read the CKKS context {path}: {error.strerror}") from None
    context = he.load_context(data)
    problem = parameter_problem(context, he.CkksParameters.of(topology.privacy))
    if problem:
        raise HomomorphicError(
            f"{path}: {problem} (make keys for this topology: hierfl keys ckks DIR --topology FILE)"
        )
    return context


def parameter_problem(context, parameters: he.CkksParameters) -> str | None:
    """Why `context` does not have the CKKS `parameters` the topology sets, or None."""
    data = context.seal_context().data.key_context_data()
    degree, bits = data.parms().poly_modulus_degree(), data.total_coeff_modulus_bit_count()
    if degree != parameters.poly_modulus_degree:
        return f"CKKS context of degree {degree}, the topology sets privacy.he_poly_modulus_degree = {parameters.poly_modulus_degree}"
    if (
        bits != sum(parameters.coeff_mod_bit_sizes)
        or context.global_scale != 2.0**parameters.scale_bits
    ):
        return (
            f"CKKS context with {bits} modulus bits and scale 2^{np.log2(context.global_scale):g}, the topology sets "
            f"privacy.he_scale_bits = {parameters.scale_bits} ({sum(parameters.coeff_mod_bit_sizes)} bits)"
        )
    return None


def key_id(context) -> str:
    """A short fingerprint of the context's public key: the same for the plants' secret context and the cloud's public one."""
    public = context.copy()
    if public.has_secret_key():
        public.make_context_public()
    data = public.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return hashlib.sha256(data).hexdigest()[:16]


def cipher_layout(
    spec: FlatSpec, parameters: he.CkksParameters, *, allow_empty: bool = False
) -> protocol.CipherLayout:
    """What a ciphertext message of this model carries: `ceil(P / slots)` chunks, each at most a fresh ciphertext's size.

    A fresh ciphertext is 2 polynomials of `degree` coefficients per modulus below the
    special prime, 8 bytes each (SEAL compresses it to about 60% of that); 4 KiB more
    for the serialization's headers.
    """
    moduli = len(parameters.coeff_mod_bit_sizes) - 1
    return protocol.CipherLayout(
        he.chunk_count(spec.size, parameters),
        2 * parameters.poly_modulus_degree * moduli * 8 + 4096,
        allow_empty,
    )


def layout_problem(topology: Topology, spec: FlatSpec, max_message_bytes: int) -> str | None:
    """Why the encrypted summaries of this model would not fit `runtime.max_message_bytes`, or None."""
    layout = cipher_layout(spec, he.CkksParameters.of(topology.privacy))
    need = layout.chunks * layout.max_chunk_bytes + protocol.MAX_HEADER_BYTES
    if need > max_message_bytes:
        return (
            f"runtime.max_message_bytes: {max_message_bytes} is below what an encrypted summary of this model may take "
            f"({layout.chunks} CKKS ciphertexts, up to {need} bytes); raise it"
        )
    return None


# -- the edge's half (its uplink: `edge_encrypted.EncryptedUplink`) -------------------------------


class PlantCipher:
    """An edge's CKKS context: encrypts its summaries, decrypts the cloud's aggregates."""

    def __init__(self, context, spec: FlatSpec, parameters: he.CkksParameters):
        self.context = context
        self.spec = spec
        self.parameters = parameters
        self.key_id = key_id(context)

    def summary_fields(self, delta: np.ndarray, weight: float, round: int) -> dict[str, Any]:
        """`protocol.encode` fields of an `he_summary` for the flat change `delta` `[P]`."""
        chunks = he.encrypt_summary(self.context, delta, weight, round)["chunks"]
        return cipher_fields(self.spec, self.key_id, chunks)

    def check_key(self, message: protocol.Message) -> None:
        """HomomorphicError unless the cloud's `he_aggregate` is under this plant's key (the plants' shared one)."""
        if message.header["key_id"] != self.key_id:
            raise HomomorphicError(
                f"the cloud's aggregate is encrypted under CKKS key {message.header['key_id']}, this plant's context is key "
                f"{self.key_id}: this edge's --he-context is not the plants' shared secret context, or the cloud's is not its public part"
            )

    def decrypt(self, message: protocol.Message) -> np.ndarray:
        """The aggregate a checked `he_aggregate` carries, float32 `[P]` (zeros when it has no chunk)."""
        self.check_key(message)
        if not message.arrays:
            return np.zeros(self.spec.size, np.float32)
        values = he.decrypt_aggregate(
            self.context, {"size": self.spec.size, "chunks": [a.tobytes() for a in message.arrays]}
        )
        if not np.all(np.abs(values) < 2.0**19):
            raise HomomorphicError(
                "the decrypted aggregate is out of range (|x| >= 2^19): it was not encrypted under this plant's key"
            )
        return values


class CatchUp(NamedTuple):
    """What an edge holding one global model version does with an aggregate: `apply` it, or it already `held` it."""

    apply: bool


def catch_up(held: int, version: int) -> CatchUp:
    """An edge at global model `held` gets the aggregate that makes `version`: apply it (held = version - 1), or keep (held = version).

    Anything else cannot be rebuilt from one aggregate: HomomorphicError naming the gap.
    """
    if held == version:
        return CatchUp(False)
    if held == version - 1:
        return CatchUp(True)
    if held < version:
        return_hint = (
            "restart it from a state file (edge-<plant>.npz) of a plant at version "
            + str(version - 1)
        )
        raise HomomorphicError(
            f"this edge holds global model version {held} and the cloud sends the aggregate of version {version}: an edge "
            f"can catch up by one round only ({version - 1 - held} aggregates are missing); {return_hint}"
        )
    raise HomomorphicError(
        f"this edge holds global model version {held}, ahead of the cloud's version {version}: the cloud lost its "
        "checkpoints; resume the cloud from them or restart the whole run"
    )


# -- the cloud's half -----------------------------------------------------------------------------


class Aggregate(NamedTuple):
    """An encrypted aggregate: it turns global model `version - 1` into `version`; no chunks = no change.

    `coefficients` are the plaintext factors each summary was scaled by, by sender
    (a stale summary's under `<plant>:stale`).
    """

    version: int
    chunks: tuple[bytes, ...] = ()
    coefficients: Mapping[str, float] = {}

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks)


def newest_within(history: Mapping[int, Aggregate], budget: int) -> list[int]:
    """The versions of the newest aggregates whose bytes add up to at most `budget` (always the newest one)."""
    kept, total = [], 0
    for version in sorted(history, reverse=True):
        total += history[version].nbytes
        if kept and total > budget:
            break
        kept.append(version)
    return sorted(kept)


def row_labels(plants: Sequence[str]) -> list[str]:
    """The name of each row of the cloud's summary stack: one per plant, then each plant's stale summary (`plant:stale`)."""
    return [*plants, *(f"{plant}:stale" for plant in plants)]


def coefficients(weights: Sequence[float], learning_rate: float) -> list[float]:
    """The plaintext factor of each summary: `learning_rate * w / sum(w)` (the mean rule, then `sgd`); zeros if sum(w) = 0."""
    total = float(np.sum(np.asarray(weights, np.float64)))
    if total <= 0:
        return [0.0] * len(weights)
    return [learning_rate * float(w) / total for w in weights]


class CloudCipher:
    """The cloud's CKKS context (public only): checks summaries' keys and adds them."""

    def __init__(
        self, context, spec: FlatSpec, parameters: he.CkksParameters, learning_rate: float
    ):
        if context.has_secret_key():
            raise HomomorphicError(
                "the cloud's CKKS context holds the secret key; give the cloud the public context only"
            )
        self.context = context
        self.spec = spec
        self.parameters = parameters
        self.learning_rate = learning_rate
        self.key_id = key_id(context)

    def summary_chunks(self, message: protocol.Message) -> tuple[bytes, ...]:
        """The ciphertexts of a checked `he_summary`, copied out of the frames; MessageRejected if not under the cloud's key."""
        if message.header["key_id"] != self.key_id:
            raise protocol.MessageRejected(
                protocol.WRONG_SPEC,
                f"summary encrypted under CKKS key {message.header['key_id']}, the federation's key is {self.key_id}",
            )
        chunks = tuple(a.tobytes() for a in message.arrays)
        slots = self.parameters.slots
        try:
            for i, chunk in enumerate(chunks):
                he.check_ciphertext(self.context, chunk, min(slots, self.spec.size - i * slots))
        except HomomorphicError as error:
            raise protocol.MessageRejected(
                protocol.MALFORMED, f"ciphertext frame {i}: {error}"
            ) from None
        return chunks

    def aggregate(
        self, version: int, summaries: Mapping[str, tuple[bytes, ...]], weights: Mapping[str, float]
    ) -> Aggregate:
        """A_version: the weighted sum of `summaries` (by sender) with the factors `coefficients(weights)`."""
        names = [name for name in summaries if weights[name] > 0]
        factors = coefficients([weights[n] for n in names], self.learning_rate)
        if not names or not any(factors):
            return Aggregate(version)
        messages = [
            {
                "kind": "he_summary",
                "round": version,
                "size": self.spec.size,
                "chunks": list(summaries[n]),
            }
            for n in names
        ]
        total = he.weighted_sum(self.context, messages, factors)
        return Aggregate(version, tuple(total["chunks"]), dict(zip(names, factors)))

    def aggregate_frames(
        self, aggregate: Aggregate, round: int, *, final: bool = False, catch_up: bool = False
    ) -> list:
        """The `he_aggregate` frames that open `round` (or, `final`, end the run; `catch_up`, only bring an edge forward)."""
        return protocol.encode(
            protocol.HE_AGGREGATE,
            "cloud",
            round=round,
            model_version=aggregate.version,
            final=final,
            catch_up=catch_up,
            coefficients=dict(aggregate.coefficients),
            **cipher_fields(self.spec, self.key_id, aggregate.chunks),
        )


def cipher_fields(spec: FlatSpec, key: str, chunks: Sequence[bytes]) -> dict[str, Any]:
    """The `protocol.encode` arguments of a ciphertext message: spec, codec, key id and one raw frame per chunk."""
    return {
        "spec": spec,
        "codec": CODEC,
        "key_id": key,
        "chunks": len(chunks),
        "arrays": [np.frombuffer(c, np.uint8) for c in chunks],
    }


# -- the cloud's checkpoints ----------------------------------------------------------------------


class EncryptedState(NamedTuple):
    """A restored cloud checkpoint: the last finished round, its aggregate, and its record so far."""

    round: int
    aggregate: Aggregate
    record: dict[str, Any]


class EncryptedCheckpoints:
    """`save(round, aggregate, record)` after each round (`round-000042.ckpt`, written atomically, the last 2 kept); `latest()`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory).absolute()

    def save(self, round: int, aggregate: Aggregate, record: Mapping[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = msgpack.packb(
            {
                "round": round,
                "version": aggregate.version,
                "chunks": list(aggregate.chunks),
                "coefficients": dict(aggregate.coefficients),
                "record": _jsonable(record),
            }
        )
        path = self.directory / f"round-{round:06d}.ckpt"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        for old in self._files()[:-KEEP]:
            old.unlink(missing_ok=True)

    def latest(self) -> EncryptedState | None:
        files = self._files()
        if not files:
            return None
        try:
            state = msgpack.unpackb(files[-1].read_bytes(), raw=False)
            aggregate = Aggregate(
                int(state["version"]), tuple(state["chunks"]), dict(state["coefficients"])
            )
            return EncryptedState(int(state["round"]), aggregate, dict(state["record"]))
        except (ValueError, KeyError, TypeError) as error:
            from hierfl.errors import RunDirError

            raise RunDirError(
                f"{files[-1]}: not a readable encrypted cloud checkpoint ({error})"
            ) from None

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("round-*.ckpt")) if self.directory.exists() else []


def _jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    import json

    from hierfl.runs.metrics import encode_record

    return json.loads(encode_record(record))
