"""Secure aggregation: fixed point, Shamir, the four-step protocol with dropouts and tampering, topology options."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from conftest import topology_text
from hierfl.errors import SecAggError, ShareTamperedError, ThresholdError
from hierfl.privacy import secagg, shamir
from hierfl.privacy.fixed_point import FixedPoint
from hierfl.topology import TopologyError, parse_topology
from hierfl.topology.schema import secagg_threshold

WORDS = 2_000


def wire(message):
    """What the runtime's msgpack header does to a message: proves every message is msgpack-able."""
    return msgpack.unpackb(msgpack.packb(message), raw=False)


def device_ids(count):
    return [f"plant-0/line-0/dev-{i:03d}" for i in range(count)]


def float_updates(count, seed=0, size=WORDS):
    rng = np.random.default_rng(seed)
    return {device: rng.normal(0.0, 0.05, size).astype(np.float32) for device in device_ids(count)}


class Round:
    """One round driven step by step, every message passed through msgpack."""

    def __init__(self, words_by_device, threshold, round=3):
        self.words = words_by_device
        size = len(next(iter(words_by_device.values())))
        self.devices = {d: secagg.DeviceSession(d, round, threshold, size) for d in words_by_device}
        self.edge = secagg.EdgeSession(round, threshold, size)

    def run(self, drop_before_shares=(), drop_after_shares=(), drop_after_masked=(), tamper=None):
        roster = wire(self.edge.collect_keys([wire(d.advertise()) for d in self.devices.values()]))
        shares = [
            wire(d.share_keys(roster))
            for v, d in self.devices.items()
            if v not in drop_before_shares
        ]
        inboxes = {v: wire(inbox) for v, inbox in self.edge.route_shares(shares).items()}
        if tamper:
            tamper(inboxes)
        masked = [
            wire(self.devices[v].masked_input(inboxes[v], self.words[v]))
            for v in inboxes
            if v not in drop_after_shares
        ]
        self.masked = {m["device"]: np.frombuffer(m["masked"], dtype="<u4") for m in masked}
        request = wire(self.edge.collect_masked(masked))
        reveals = [
            wire(self.devices[v].unmask(request))
            for v in request["survivors"]
            if v not in drop_after_masked
        ]
        return self.edge.finish(reveals)


# --- fixed point -------------------------------------------------------------------------


def test_fixed_point_scale_keeps_the_sum_of_summands_in_int32():
    codec = FixedPoint(clip=1.0, summands=100)
    assert codec.scale == 2.0**24 and codec.step == 2.0**-24  # 2^31 / 100 = 2^24.4
    assert codec.summands * codec.clip * codec.scale <= 2**31 - 1
    extreme = np.full(100, 1.0)  # the worst case: every device at +clip, then -clip
    for sign in (1, -1):
        total = np.sum([codec.encode(sign * extreme) for _ in range(100)], axis=0, dtype=np.uint32)
        np.testing.assert_array_equal(codec.decode(total), sign * 100.0)


@settings(max_examples=60, deadline=None)
@given(
    clip=st.floats(1e-3, 1e3),
    summands=st.integers(1, 10_000),
    data=st.data(),
)
def test_fixed_point_sums_decode_exactly_to_the_sum_of_rounded_values(clip, summands, data):
    codec = FixedPoint(clip, summands)
    count = data.draw(st.integers(1, min(summands, 50)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).uniform(-clip, clip, (count, 16))
    total = np.sum([codec.encode(v) for v in values], axis=0, dtype=np.uint32)
    rounded = np.rint(values * codec.scale).sum(axis=0)  # exact integers, never wrapped
    np.testing.assert_array_equal(total.view(np.int32), rounded)
    np.testing.assert_allclose(
        codec.decode(total), values.sum(axis=0), atol=count * codec.step / 2 + 1e-6 * count * clip
    )


def test_fixed_point_round_trip_rounds_to_the_step_and_clips():
    codec = FixedPoint(clip=2.0, summands=10)
    values = np.array([0.0, 1e-9, -0.3, 1.999, 5.0, -7.0], dtype=np.float32)
    decoded = codec.decode(codec.encode(values))
    np.testing.assert_allclose(decoded[:4], values[:4], atol=codec.step / 2)
    np.testing.assert_array_equal(decoded[4:], [2.0, -2.0])
    assert codec.clipped(values) == 2


# --- Shamir ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(secret=st.integers(0, shamir.PRIME - 1), count=st.integers(2, 9), data=st.data())
def test_any_threshold_shares_reconstruct_and_fewer_do_not(secret, count, data):
    threshold = data.draw(st.integers(1, count))
    shares = shamir.split(secret, count, threshold)
    subset = data.draw(st.permutations(shares)).copy()[:threshold]
    assert shamir.reconstruct(subset) == secret
    assert shamir.reconstruct(shares) == secret  # more than t shares lie on the same polynomial
    if threshold > 1:
        # t - 1 shares are consistent with every secret: interpolation gives an unrelated value.
        assert shamir.reconstruct(subset[:-1]) != secret or secret == 0


def test_shamir_rejects_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(5, 3, 4)
    with pytest.raises(ValueError, match="distinct"):
        shamir.reconstruct([(1, 2), (1, 3)])


def test_one_share_of_a_two_of_n_sharing_is_uniform_whatever_the_secret():
    # x = 1: y = s + a with a uniform, so y mod 256 is uniform for a fixed secret.
    low_bytes = [shamir.split(12345, 3, 2)[0][1] % 256 for _ in range(4000)]
    assert stats.chisquare(np.bincount(low_bytes, minlength=256)).pvalue > 1e-6


# --- the protocol ------------------------------------------------------------------------


def test_edge_sum_is_the_plain_sum_after_decoding():
    updates = float_updates(6)
    codec = FixedPoint(clip=1.0, summands=6)
    words = {d: codec.encode(u) for d, u in updates.items()}
    total = Round(words, threshold=4).run()
    np.testing.assert_array_equal(
        total, np.sum(list(words.values()), axis=0, dtype=np.uint32)
    )  # exact mod 2^32
    plain = np.sum([u.astype(np.float64) for u in updates.values()], axis=0)
    np.testing.assert_allclose(codec.decode(total), plain, atol=6 * codec.step / 2 + 1e-7)


def uniformity_pvalue(words):
    """Chi-square of the top byte and KS of words / 2^32 against uniform: the smaller p-value."""
    words = np.asarray(words, dtype=np.uint64)
    chi = stats.chisquare(np.bincount((words >> 24).astype(np.int64), minlength=256)).pvalue
    ks = stats.kstest(words / 2.0**32, "uniform").pvalue
    return min(chi, ks)


def test_a_masked_update_is_indistinguishable_from_uniform_noise():
    size = 65_536
    codec = FixedPoint(clip=1.0, summands=4)
    # A very non-uniform input: a constant update. The test must reject it unmasked...
    words = {d: codec.encode(np.full(size, 0.25, dtype=np.float32)) for d in device_ids(4)}
    assert uniformity_pvalue(words[device_ids(4)[0]]) < 1e-12
    assert uniformity_pvalue(codec.encode(float_updates(1, size=size)[device_ids(1)[0]])) < 1e-12
    # ... and not reject any device's masked input.
    run = Round(words, threshold=3)
    run.run()
    for masked in run.masked.values():
        assert (
            uniformity_pvalue(masked) > 1e-6
        )  # fresh OS randomness: a false alarm about once in 10^5 runs


def test_dropouts_above_the_threshold_leave_the_survivors_sum():
    updates = float_updates(8, seed=1)
    codec = FixedPoint(clip=1.0, summands=8)
    words = {d: codec.encode(u) for d, u in updates.items()}
    ids = device_ids(8)
    # ids[0] never shares keys, ids[1], ids[2] drop before their masked input, ids[3] after it.
    total = Round(words, threshold=4).run(
        drop_before_shares=[ids[0]], drop_after_shares=ids[1:3], drop_after_masked=[ids[3]]
    )
    counted = ids[3:]  # 5 survivors, 4 of them answer the unmasking: exactly t
    np.testing.assert_array_equal(
        total, np.sum([words[d] for d in counted], axis=0, dtype=np.uint32)
    )
    plain = np.sum([updates[d].astype(np.float64) for d in counted], axis=0)
    np.testing.assert_allclose(codec.decode(total), plain, atol=5 * codec.step / 2 + 1e-7)
    # The in-process reference run (fresh keys, same dropouts) gives the same sum.
    reference = secagg.run_round(words, 4, drop_after_shares=ids[:3], drop_after_masked=[ids[3]])
    np.testing.assert_array_equal(reference, total)


@pytest.mark.parametrize(
    ("drops", "stage", "received"),
    [
        ({"drop_before_shares": 2}, "share keys", 3),
        ({"drop_after_shares": 2}, "masked input", 3),
        ({"drop_after_masked": 2}, "unmasking", 3),
    ],
)
def test_dropouts_below_the_threshold_fail_safely_and_say_why(drops, stage, received):
    ids = device_ids(5)
    words = {d: np.arange(WORDS, dtype=np.uint32) for d in ids}
    run = Round(words, threshold=4)
    with pytest.raises(ThresholdError) as error:
        run.run(**{key: ids[:count] for key, count in drops.items()})
    assert (error.value.stage, error.value.received, error.value.threshold) == (stage, received, 4)
    assert f"{received} usable answers, below the threshold t = 4" in str(error.value)


def test_a_tampered_share_is_detected_and_names_its_sender():
    ids = device_ids(4)
    words = {d: np.zeros(WORDS, dtype=np.uint32) for d in ids}

    def flip_a_bit(inboxes):
        sealed = bytearray(inboxes[ids[2]]["shares"][ids[0]])
        sealed[-1] ^= 1
        inboxes[ids[2]]["shares"][ids[0]] = bytes(sealed)

    with pytest.raises(
        ShareTamperedError, match=f"the share from {ids[0]} failed authentication"
    ) as error:
        Round(words, threshold=3).run(tamper=flip_a_bit)
    assert error.value.sender == ids[0]

    def misroute(inboxes):  # a genuine ciphertext, but addressed to someone else
        inboxes[ids[2]]["shares"][ids[0]] = inboxes[ids[1]]["shares"][ids[0]]

    with pytest.raises(ShareTamperedError):
        Round(words, threshold=3).run(tamper=misroute)


def test_a_device_refuses_an_unmasking_request_that_could_unmask_someone():
    ids = device_ids(4)
    words = {d: np.zeros(WORDS, dtype=np.uint32) for d in ids}
    run = Round(words, threshold=3)
    roster = run.edge.collect_keys([d.advertise() for d in run.devices.values()])
    inboxes = run.edge.route_shares([d.share_keys(roster) for d in run.devices.values()])
    for v in ids:
        run.devices[v].masked_input(inboxes[v], words[v])
    device = run.devices[ids[1]]
    # Asking for ids[0]'s mask key while ids[0] is a survivor would reveal its update.
    both = {"kind": "secagg_unmask", "round": 3, "survivors": ids, "dropped": [ids[0]]}
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        device.unmask(both)
    few = {"kind": "secagg_unmask", "round": 3, "survivors": ids[1:3], "dropped": [ids[0], ids[3]]}
    with pytest.raises(SecAggError, match="below the threshold"):
        device.unmask(few)
    fine = {"kind": "secagg_unmask", "round": 3, "survivors": ids[1:], "dropped": [ids[0]]}
    assert set(device.unmask(fine)["mask_key_shares"]) == {ids[0]}
    with pytest.raises(SecAggError, match="already answered"):
        device.unmask({**fine, "survivors": ids, "dropped": []})


def test_the_edge_rejects_bad_messages_without_failing_the_round():
    ids = device_ids(4)
    words = {d: np.full(WORDS, 7, dtype=np.uint32) for d in ids}
    run = Round(words, threshold=3)
    adverts = [d.advertise() for d in run.devices.values()]
    adverts += [
        {**adverts[0]},
        {"kind": "secagg_keys", "round": 2, "device": "x", "c_pk": b"", "s_pk": b""},
        {"junk": 1},
    ]
    roster = run.edge.collect_keys(adverts)
    assert sorted(roster["keys"]) == ids and len(run.edge.rejected) == 3
    inboxes = run.edge.route_shares([d.share_keys(roster) for d in run.devices.values()])
    masked = [run.devices[v].masked_input(inboxes[v], words[v]) for v in ids]
    masked[0] = {
        **masked[0],
        "masked": masked[0]["masked"][:-4],
    }  # truncated: ids[0] counts as dropped
    request = run.edge.collect_masked(masked)
    assert request["dropped"] == [ids[0]]
    total = run.edge.finish([run.devices[v].unmask(request) for v in request["survivors"]])
    np.testing.assert_array_equal(total, np.full(WORDS, 21, dtype=np.uint32))


# --- topology ------------------------------------------------------------------------------


def crypto_topology(privacy, plants=([4], [3]), extra="", **kwargs):
    text = topology_text(plants=[list(p) for p in plants], **kwargs)
    return parse_topology(
        text.replace("[cloud]", f"[privacy]\n{privacy}\n{extra}\n[cloud]"), "crypto.toml"
    )


def test_secure_aggregation_fields_load_and_give_the_threshold():
    topology = crypto_topology(
        "secure_aggregation = true\nsecagg_threshold = 0.6\nsecagg_clip = 0.5"
    )
    privacy = topology.privacy
    assert privacy.secure_aggregation and privacy.secagg_clip == 0.5 and not privacy.enabled
    assert [secagg_threshold(privacy, p.num_devices) for p in topology.plants] == [3, 2]
    assert secagg_threshold(privacy, 5) == 3  # 0.6 * 5 is 3.0000000000000004 in floating point
    assert crypto_topology("").privacy.secure_aggregation is False


@pytest.mark.parametrize(
    ("privacy", "extra", "plants", "expected"),
    [
        (
            "secure_aggregation = true",
            '[aggregation.edge]\nrule = "median"',
            ([4], [3]),
            "aggregation.edge: rule 'median' cannot be combined with privacy.secure_aggregation",
        ),
        (
            "secure_aggregation = true",
            "[aggregation.edge]\nclip_norm = 1.0",
            ([4], [3]),
            "aggregation.edge: clip_norm cannot be combined",
        ),
        (
            "secure_aggregation = true",
            "",
            ([4], [1]),
            "privacy.secagg_threshold: plant 'plant-1' has 1 device, so t = ceil(0.6 * 1) = 1",
        ),
        (
            "secure_aggregation = true\nsecagg_threshold = 0.5",
            "",
            ([4], [3]),
            "privacy.secagg_threshold: must be in (0.5, 1]",
        ),
        (
            "secure_aggregation = 1",
            "",
            ([4], [3]),
            "privacy.secure_aggregation: expected true or false, got int 1",
        ),
        (
            "secure_aggregation = true",
            '[compression.device_to_edge]\ncodec = "int8"',
            ([4], [3]),
            "compression.device_to_edge.codec: 'int8' cannot be combined",
        ),
        (
            'secure_aggregation = true\ndp = "edge"\nclip_quantile = 0.5\nquantile_noise = 1.0',
            "",
            ([4], [3]),
            "privacy.clip_quantile: adaptive clipping cannot be combined with privacy.secure_aggregation",
        ),
    ],
)
def test_meaningless_secure_aggregation_settings_are_rejected(privacy, extra, plants, expected):
    with pytest.raises(TopologyError) as error:
        crypto_topology(privacy, plants=plants, extra=extra)
    assert any(p.startswith(expected) for p in error.value.problems), error.value.problems


def test_secure_aggregation_with_scaffold_is_rejected():
    with pytest.raises(
        TopologyError,
        match="privacy.secure_aggregation: cannot be combined with algorithm 'scaffold'",
    ):
        crypto_topology("secure_aggregation = true", algorithm="scaffold")


def test_threshold_rule_matches_the_protocol_requirement():
    # The smallest plant the default threshold accepts has 2 devices (t = 2 of 2).
    assert (
        crypto_topology("secure_aggregation = true", plants=([2], [2])).plants[0].num_devices == 2
    )
    assert math.ceil(0.6 * 2) == secagg_threshold(crypto_topology("").privacy, 2) == 2
