"""Secure aggregation at the edge: the edge learns the sum of its devices' updates, nothing else.

The protocol of Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving
Machine Learning", semi-honest variant, no signatures), over updates already fixed-point
encoded as uint32 words (`hierfl.privacy.fixed_point`). Device `u` sends

    y_u = x_u + PRG(b_u) + sum_{v != u} sign(u, v) * PRG(s_uv)   (mod 2^32, word by word)

with `s_uv` from an X25519 agreement between `u` and `v` (HKDF-SHA256, then ChaCha20 as the
PRG), `sign = +1` if `u < v` in id order else -1, so pairwise masks cancel in the sum, and a
self-mask `b_u`. Each device Shamir-shares its mask private key and `b_u` among all devices
(`t` of `n`), encrypted and authenticated for each recipient with AES-GCM under their
pairwise key. When some devices drop after sharing, the edge asks the survivors for shares
of the dropped devices' mask keys (to remove their pairwise masks from the survivors'
inputs) and of the survivors' self-masks; an honest device never reveals both for the same
device, so with `t > n / 2` an edge that lies about who dropped still cannot unmask anyone.

Four steps, each one message per device and one per edge, all plain msgpack-able dicts
(str keys; bytes, ints, str, lists, dicts). `round` is the edge round; device ids are the
topology's `plant/line/device` ids; a fresh session (fresh keys) is used every round.

| step | device -> edge | edge -> device(s) |
|---|---|---|
| 0 advertise keys | `DeviceSession.advertise()`: `{"kind": "secagg_keys", "round", "device", "c_pk", "s_pk"}` | `EdgeSession.collect_keys(msgs)`: `{"kind": "secagg_roster", "round", "threshold", "keys": {id: [c_pk, s_pk]}}` to every device listed |
| 1 share keys | `share_keys(roster)`: `{"kind": "secagg_shares", "round", "device", "b_hash", "shares": {v: ciphertext}}` | `route_shares(msgs)`: per device `v`, `{"kind": "secagg_inbox", "round", "shares": {u: ciphertext for v}}` |
| 2 masked input | `masked_input(inbox, words)`: `{"kind": "secagg_masked", "round", "device", "masked": P uint32 LE bytes}` (the edge also takes a uint32 `[P]` array, e.g. a view of a received frame) | `collect_masked(msgs)`: `{"kind": "secagg_unmask", "round", "survivors": [ids], "dropped": [ids]}` to each survivor |
| 3 unmasking | `unmask(request)`: `{"kind": "secagg_reveal", "round", "device", "mask_key_shares": {u: bytes}, "self_mask_shares": {u: bytes}}` | `finish(msgs)` -> the sum of the survivors' words, uint32 `[P]` |

Each edge step needs at least `t` usable messages, else `ThresholdError` says where, how
many and how many were needed. A malformed, duplicate or unexpected message is not fatal:
it is recorded in `EdgeSession.rejected` and its sender counts as dropped. A device whose
share fails authentication raises `ShareTamperedError` naming the sender; a device asked
for an inconsistent unmasking raises `SecAggError` and reveals nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hierfl.errors import SecAggError, ShareTamperedError, ThresholdError
from hierfl.privacy import shamir
from hierfl.topology.schema import secagg_threshold

KEY_BYTES = 32
NONCE_BYTES = 12
PLAINTEXT_SHARE_BYTES = 2 * shamir.SHARE_BYTES
WORD = np.dtype("<u4")

__all__ = ["DeviceSession", "EdgeSession", "expand", "run_round", "secagg_threshold"]


def expand(seed: bytes, words: int) -> np.ndarray:
    """The PRG: ChaCha20 keystream under the 32-byte `seed` (zero nonce), as `words` uint32."""
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * words)), dtype=WORD)


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _derive(
    private: X25519PrivateKey, public: bytes, purpose: bytes, round: int, a: str, b: str
) -> bytes:
    """A 32-byte key for the pair {a, b} (order-free) from an X25519 agreement, bound to the round."""
    low, high = sorted((a, b))
    info = (
        b"hierfl-secagg|"
        + purpose
        + b"|"
        + str(round).encode()
        + b"|"
        + low.encode()
        + b"|"
        + high.encode()
    )
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _share_aad(round: int, sender: str, recipient: str) -> bytes:
    return f"hierfl-secagg-share|{round}|{sender}|{recipient}".encode()


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(shamir.SHARE_BYTES, "big")


class DeviceSession:
    """One device's side of one secure-aggregation round (holds its keys; use once).

    `threshold` is `t`, the same number the edge uses (from the topology:
    `secagg_threshold(privacy, devices in the plant)`); `words` is `P`, the update length.
    """

    def __init__(self, device: str, round: int, threshold: int, words: int):
        if threshold < 2:
            raise SecAggError(f"secure aggregation needs a threshold t >= 2, got {threshold}")
        self.device, self.round, self.threshold, self.words = device, round, threshold, words
        self._c = X25519PrivateKey.generate()  # encrypts shares
        self._s = X25519PrivateKey.generate()  # seeds pairwise masks
        self._b = os.urandom(KEY_BYTES)  # self-mask seed
        self._roster: dict[str, tuple[bytes, bytes]] = {}
        self._held: dict[
            str, tuple[int, int]
        ] = {}  # sender -> (share of its s key, share of its b)
        self._senders: set[str] = set()
        self._unmasked = False

    def advertise(self) -> dict[str, Any]:
        """Step 0: this device's two public keys."""
        return {
            "kind": "secagg_keys",
            "round": self.round,
            "device": self.device,
            "c_pk": _public_bytes(self._c),
            "s_pk": _public_bytes(self._s),
        }

    def share_keys(self, roster: Mapping[str, Any]) -> dict[str, Any]:
        """Step 1: Shamir shares of the mask key and of `b`, encrypted for each other device in `roster`."""
        _expect(roster, "secagg_roster", self.round)
        keys = {device: (bytes(pair[0]), bytes(pair[1])) for device, pair in roster["keys"].items()}
        if (
            roster["threshold"] != self.threshold
            or self.device not in keys
            or len(keys) < self.threshold
        ):
            raise SecAggError(
                f"device {self.device}: refusing roster with threshold {roster['threshold']} (expected {self.threshold}) "
                f"and {len(keys)} devices{'' if self.device in keys else ' not including this device'}"
            )
        if keys[self.device] != (_public_bytes(self._c), _public_bytes(self._s)):
            raise SecAggError(
                f"device {self.device}: the roster carries other public keys for this device"
            )
        self._roster = keys
        order = sorted(keys)
        s_shares = shamir.split(
            int.from_bytes(_private_bytes(self._s), "big"), len(order), self.threshold
        )
        b_shares = shamir.split(int.from_bytes(self._b, "big"), len(order), self.threshold)
        shares = {}
        for (x, s_y), (_, b_y), recipient in zip(s_shares, b_shares, order):
            if recipient == self.device:
                self._held[self.device] = (s_y, b_y)
                continue
            key = _derive(self._c, keys[recipient][0], b"share", self.round, self.device, recipient)
            nonce = os.urandom(NONCE_BYTES)
            sealed = AESGCM(key).encrypt(
                nonce,
                _int_bytes(s_y) + _int_bytes(b_y),
                _share_aad(self.round, self.device, recipient),
            )
            shares[recipient] = nonce + sealed
        return {
            "kind": "secagg_shares",
            "round": self.round,
            "device": self.device,
            "b_hash": hashlib.sha256(self._b).digest(),
            "shares": shares,
        }

    def masked_input(self, inbox: Mapping[str, Any], words: np.ndarray) -> dict[str, Any]:
        """Step 2: decrypt and keep the shares received, send `words` (uint32 `[P]`) masked.

        Raises ShareTamperedError if a share fails authentication.
        """
        _expect(inbox, "secagg_inbox", self.round)
        senders = set(inbox["shares"]) | {self.device}
        if not senders <= set(self._roster) or len(senders) < self.threshold:
            raise SecAggError(
                f"device {self.device}: the inbox names {len(senders)} senders (threshold {self.threshold}) or devices outside the roster"
            )
        for sender, sealed in inbox["shares"].items():
            key = _derive(
                self._c, self._roster[sender][0], b"share", self.round, sender, self.device
            )
            try:
                plain = AESGCM(key).decrypt(
                    sealed[:NONCE_BYTES],
                    sealed[NONCE_BYTES:],
                    _share_aad(self.round, sender, self.device),
                )
            except (InvalidTag, ValueError):
                raise ShareTamperedError(
                    f"device {self.device}: the share from {sender} failed authentication (altered, misrouted or replayed); "
                    "aborting this round",
                    sender=sender,
                ) from None
            half = shamir.SHARE_BYTES
            self._held[sender] = (
                int.from_bytes(plain[:half], "big"),
                int.from_bytes(plain[half:], "big"),
            )
        self._senders = senders
        words = np.asarray(words, dtype=np.uint32)
        if words.shape != (self.words,):
            raise SecAggError(
                f"device {self.device}: expected {self.words} words, got shape {words.shape}"
            )
        masked = words + expand(self._b, self.words)
        for other in sorted(senders - {self.device}):
            mask = expand(
                _derive(self._s, self._roster[other][1], b"mask", self.round, self.device, other),
                self.words,
            )
            masked = masked + mask if self.device < other else masked - mask
        return {
            "kind": "secagg_masked",
            "round": self.round,
            "device": self.device,
            "masked": masked.astype(WORD).tobytes(),
        }

    def unmask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Step 3: shares of the dropped devices' mask keys and of the survivors' self-masks.

        Refuses (SecAggError) a request that is inconsistent with what this device saw, that
        names too few survivors, or that comes a second time: answering it could unmask someone.
        """
        _expect(request, "secagg_unmask", self.round)
        survivors, dropped = set(request["survivors"]), set(request["dropped"])
        problem = None
        if self._unmasked:
            problem = "already answered an unmasking request this round"
        elif survivors & dropped:
            problem = f"devices listed as both survivor and dropped: {sorted(survivors & dropped)}"
        elif survivors | dropped != self._senders:
            problem = "survivors and dropped devices are not exactly the devices that shared keys"
        elif self.device not in survivors:
            problem = "this device is not listed as a survivor"
        elif len(survivors) < self.threshold:
            problem = f"only {len(survivors)} survivors, below the threshold t = {self.threshold}"
        if problem:
            raise SecAggError(f"device {self.device}: refusing to unmask: {problem}")
        self._unmasked = True
        return {
            "kind": "secagg_reveal",
            "round": self.round,
            "device": self.device,
            "mask_key_shares": {u: _int_bytes(self._held[u][0]) for u in sorted(dropped)},
            "self_mask_shares": {u: _int_bytes(self._held[u][1]) for u in sorted(survivors)},
        }


class EdgeSession:
    """The edge's side of one secure-aggregation round: routes messages, then removes the masks.

    `threshold` is `t`, `words` is `P`. After `finish`, `survivors` are the devices whose
    updates are in the sum, and `rejected` lists each message dropped and why.
    """

    def __init__(self, round: int, threshold: int, words: int):
        if threshold < 2:
            raise SecAggError(f"secure aggregation needs a threshold t >= 2, got {threshold}")
        self.round, self.threshold, self.words = round, threshold, words
        self.rejected: list[str] = []
        self.survivors: list[str] = []
        self.dropped: list[str] = []
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        self._b_hash: dict[str, bytes] = {}
        self._masked: dict[str, np.ndarray] = {}
        self._sharers: list[str] = []

    def collect_keys(self, messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Step 0: the roster of public keys, to send to every device in it."""
        for message, device in self._accepted(messages, "secagg_keys", None):
            if not all(
                isinstance(message.get(k), bytes) and len(message[k]) == KEY_BYTES
                for k in ("c_pk", "s_pk")
            ):
                self._reject(device, "public keys must be 32 bytes each")
                continue
            self._keys[device] = (message["c_pk"], message["s_pk"])
        self._require("advertise keys", len(self._keys), "devices advertised keys")
        keys = {device: [c_pk, s_pk] for device, (c_pk, s_pk) in sorted(self._keys.items())}
        return {
            "kind": "secagg_roster",
            "round": self.round,
            "threshold": self.threshold,
            "keys": keys,
        }

    def route_shares(self, messages: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Step 1: for each device that shared its keys, the inbox of shares addressed to it."""
        received: dict[str, Mapping[str, bytes]] = {}
        for message, device in self._accepted(messages, "secagg_shares", self._keys):
            shares = message.get("shares")
            if (
                not isinstance(shares, dict)
                or set(shares) != set(self._keys) - {device}
                or not all(isinstance(s, bytes) for s in shares.values())
            ):
                self._reject(
                    device, "shares must be one ciphertext for every other device in the roster"
                )
                continue
            if not isinstance(message.get("b_hash"), bytes) or len(message["b_hash"]) != 32:
                self._reject(device, "b_hash must be 32 bytes")
                continue
            received[device] = shares
            self._b_hash[device] = message["b_hash"]
        self._require("share keys", len(received), "devices sent their encrypted shares")
        self._sharers = sorted(received)
        return {
            recipient: {
                "kind": "secagg_inbox",
                "round": self.round,
                "shares": {
                    sender: received[sender][recipient]
                    for sender in self._sharers
                    if sender != recipient
                },
            }
            for recipient in self._sharers
        }

    def collect_masked(self, messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Step 2: the masked inputs; returns the unmasking request for every survivor."""
        for message, device in self._accepted(messages, "secagg_masked", self._sharers):
            masked = message.get("masked")
            if isinstance(masked, bytes):
                masked = np.frombuffer(masked, dtype=WORD)
            if (
                not isinstance(masked, np.ndarray)
                or masked.dtype != WORD
                or masked.shape != (self.words,)
            ):
                self._reject(
                    device,
                    f"masked input must be {4 * self.words} bytes ({self.words} uint32 words)",
                )
                continue
            self._masked[device] = masked
        self.survivors = sorted(self._masked)
        self.dropped = sorted(set(self._sharers) - set(self._masked))
        self._require(
            "masked input",
            len(self.survivors),
            f"devices sent masked inputs, {len(self.dropped)} dropped",
        )
        return {
            "kind": "secagg_unmask",
            "round": self.round,
            "survivors": self.survivors,
            "dropped": self.dropped,
        }

    def finish(self, messages: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Step 3: the sum of the survivors' words (uint32 `[P]`), masks removed.

        Raises ThresholdError below `t` answers and SecAggError if a reconstructed secret
        does not match what its owner committed to (corrupt shares).
        """
        reveals: dict[str, Mapping[str, Any]] = {}
        for message, device in self._accepted(messages, "secagg_reveal", self.survivors):
            key_shares, self_shares = (
                message.get("mask_key_shares"),
                message.get("self_mask_shares"),
            )
            if not (
                isinstance(key_shares, dict)
                and set(key_shares) == set(self.dropped)
                and isinstance(self_shares, dict)
                and set(self_shares) == set(self.survivors)
                and all(
                    isinstance(s, bytes) and len(s) == shamir.SHARE_BYTES
                    for s in [*key_shares.values(), *self_shares.values()]
                )
            ):
                self._reject(
                    device,
                    "an unmasking answer must hold one 66-byte share per dropped device and per survivor",
                )
                continue
            reveals[device] = message
        self._require(
            "unmasking",
            len(reveals),
            f"survivors answered the unmasking request of {len(self.survivors)}",
        )
        order = sorted(self._keys)
        holders = sorted(reveals)[: self.threshold]
        weights = shamir.lagrange_at_zero([order.index(holder) + 1 for holder in holders])

        def secret(owner: str, field: str) -> bytes:
            value = (
                sum(
                    int.from_bytes(reveals[h][field][owner], "big") * w
                    for h, w in zip(holders, weights)
                )
                % shamir.PRIME
            )
            if value >= 1 << (8 * KEY_BYTES):
                raise SecAggError(
                    f"the reconstructed {field[:-7].replace('_', ' ')} of {owner} is out of range: corrupt shares"
                )
            return value.to_bytes(KEY_BYTES, "big")

        total = np.zeros(self.words, dtype=np.uint32)
        for device in self.survivors:
            total += self._masked[device]
        for device in self.survivors:
            b = secret(device, "self_mask_shares")
            if hashlib.sha256(b).digest() != self._b_hash[device]:
                raise SecAggError(
                    f"the reconstructed self-mask of {device} does not match its commitment: corrupt shares"
                )
            total -= expand(b, self.words)
        for device in self.dropped:
            key = X25519PrivateKey.from_private_bytes(secret(device, "mask_key_shares"))
            if _public_bytes(key) != self._keys[device][1]:
                raise SecAggError(
                    f"the reconstructed mask key of {device} does not match its public key: corrupt shares"
                )
            for survivor in self.survivors:
                mask = expand(
                    _derive(key, self._keys[survivor][1], b"mask", self.round, device, survivor),
                    self.words,
                )
                # The survivor added +mask if it sorts before the dropped device, else -mask.
                total = total - mask if survivor < device else total + mask
        return total

    def _accepted(
        self, messages: Iterable[Mapping[str, Any]], kind: str, expected: Iterable[str] | None
    ) -> list[tuple[Mapping[str, Any], str]]:
        allowed = None if expected is None else set(expected)
        seen: set[str] = set()
        accepted = []
        for message in messages:
            device = message.get("device") if isinstance(message, Mapping) else None
            if not isinstance(device, str):
                self.rejected.append(f"{kind}: message without a device id")
            elif message.get("kind") != kind or message.get("round") != self.round:
                self._reject(
                    device,
                    f"expected kind {kind!r} of round {self.round}, got {message.get('kind')!r} of round {message.get('round')!r}",
                )
            elif allowed is not None and device not in allowed:
                self._reject(device, f"not expected at this step ({kind})")
            elif device in seen:
                self._reject(device, f"duplicate {kind} message")
            else:
                seen.add(device)
                accepted.append((message, device))
        return accepted

    def _reject(self, device: str, reason: str) -> None:
        self.rejected.append(f"{device}: {reason}")

    def _require(self, stage: str, received: int, what: str) -> None:
        if received < self.threshold:
            raise ThresholdError(stage, received, self.threshold, f"{received} {what}")


def _expect(message: Mapping[str, Any], kind: str, round: int) -> None:
    if message.get("kind") != kind or message.get("round") != round:
        raise SecAggError(
            f"expected a {kind!r} message of round {round}, got {message.get('kind')!r} of round {message.get('round')!r}"
        )


def run_round(
    updates: Mapping[str, np.ndarray],
    threshold: int,
    *,
    round: int = 0,
    drop_after_shares: Sequence[str] = (),
    drop_after_masked: Sequence[str] = (),
) -> np.ndarray:
    """All four steps in one process, for tests and benchmarks: the sum of the surviving devices' words.

    `updates` maps device id -> uint32 words; devices in `drop_after_shares` vanish after
    step 1, those in `drop_after_masked` after step 2 (their input still counts).
    """
    words = len(next(iter(updates.values())))
    devices = {device: DeviceSession(device, round, threshold, words) for device in updates}
    edge = EdgeSession(round, threshold, words)
    roster = edge.collect_keys([d.advertise() for d in devices.values()])
    inboxes = edge.route_shares([d.share_keys(roster) for d in devices.values()])
    masked = [
        devices[v].masked_input(inboxes[v], updates[v])
        for v in inboxes
        if v not in drop_after_shares
    ]
    request = edge.collect_masked(masked)
    return edge.finish(
        [devices[v].unmask(request) for v in request["survivors"] if v not in drop_after_masked]
    )
