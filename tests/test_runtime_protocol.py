"""The runtime's wire format and its checks, without sockets: each rejection names its reason."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from hierfl.kernels import flat_spec, make_codec
from hierfl.runtime import protocol
from hierfl.runtime.edge import update_problem
from hierfl.runtime.node import Membership

PARAMS = {"dense": {"kernel": np.zeros((3, 2), np.float32), "bias": np.zeros(2, np.float32)}}
SPEC = flat_spec(PARAMS)
SENDERS = {"plant-a/line-1/dev-001"}
NONE = protocol.codec_layout(make_codec("none", SPEC.size))
LAYOUTS = {protocol.UPDATE: ("none", NONE)}


def update(
    delta=None,
    *,
    sender="plant-a/line-1/dev-001",
    spec=SPEC,
    codec="none",
    weight=5.0,
    loss=0.5,
    **fields,
):
    delta = np.arange(SPEC.size, dtype=np.float32) if delta is None else delta
    return protocol.encode(
        protocol.UPDATE,
        sender,
        round=1,
        spec=spec,
        codec=codec,
        arrays=[delta],
        weight=weight,
        loss=loss,
        **fields,
    )


def parse(frames, routing_id=b"plant-a/line-1/dev-001", max_bytes=1 << 20):
    frames = [bytes(f) for f in frames]
    return protocol.parse_message(
        frames,
        senders=SENDERS,
        spec=SPEC,
        layouts=LAYOUTS,
        max_bytes=max_bytes,
        routing_id=routing_id,
    )


def rejected(frames, **kwargs) -> str:
    with pytest.raises(protocol.MessageRejected) as info:
        parse(frames, **kwargs)
    return info.value.reason


def hello(**changes) -> bytes:
    """A device's valid hello header, packed, with `changes` to its fields."""
    header = {
        "protocol": 1,
        "kind": "hello",
        "sender": "plant-a/line-1/dev-001",
        "round": 0,
        "edge_round": 0,
        "model_version": 0,
    }
    return msgpack.packb({**header, **changes})


def parse_encoded(
    kind: str, layout: protocol.Layout, sender: str = "plant-a/line-1/dev-001", **fields
) -> protocol.Message:
    """A message of `kind` from `sender` carrying one zero float32 `[P]` frame, encoded
    then parsed as a receiver expecting `layout` for it would."""
    frames = protocol.encode(
        kind,
        sender,
        round=1,
        spec=SPEC,
        codec="none",
        arrays=[np.zeros(SPEC.size, np.float32)],
        **fields,
    )
    return protocol.parse_message(
        [bytes(f) for f in frames],
        senders=SENDERS | {sender},
        spec=SPEC,
        layouts={kind: ("none", layout)},
        max_bytes=1 << 20,
    )


def test_a_valid_update_round_trips_as_a_view_of_its_frame():
    message = parse(update())
    assert (message.kind, message.sender, message.round) == ("update", "plant-a/line-1/dev-001", 1)
    np.testing.assert_array_equal(message.arrays[0], np.arange(SPEC.size, dtype=np.float32))
    assert message.header["weight"] == 5.0


def test_codec_layouts_match_what_the_codecs_send():
    assert NONE.frames == (("float32", (SPEC.size,)),)
    int8 = protocol.codec_layout(make_codec("int8", 1000, block_size=256))
    assert int8.frames == (("int8", (1000,)), ("float32", (4,)))
    assert int8.nbytes == make_codec("int8", 1000, block_size=256).payload_bytes
    topk = protocol.codec_layout(make_codec("topk", 1000, fraction=0.01))
    assert topk.frames == (("float32", (10,)), ("int32", (10,)))


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([b"\xc1not msgpack"], protocol.MALFORMED),
        ([msgpack.packb([1, 2, 3])], protocol.MALFORMED),
        ([msgpack.packb({"protocol": 1, "kind": "update"})], protocol.MALFORMED),
        ([hello(protocol=2)], protocol.MALFORMED),
        ([hello(kind="dance")], protocol.MALFORMED),
        ([hello(round=True)], protocol.MALFORMED),
        ([], protocol.MALFORMED),
    ],
)
def test_malformed_headers_are_rejected(frames, reason):
    assert rejected(frames) == reason


def test_wrong_spec_and_wrong_codec_are_rejected():
    other = flat_spec(
        {"dense": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(2, np.float32)}}
    )
    assert rejected(update(spec=other)) == protocol.WRONG_SPEC
    assert rejected(update(codec="int8")) == protocol.WRONG_SPEC


def test_non_finite_values_weight_and_loss_are_rejected():
    delta = np.zeros(SPEC.size, np.float32)
    delta[3] = np.nan
    assert rejected(update(delta)) == protocol.NON_FINITE
    assert rejected(update(weight=float("inf"))) == protocol.NON_FINITE
    assert rejected(update(loss=float("nan"))) == protocol.NON_FINITE
    assert rejected(update(weight=-1.0)) == protocol.MALFORMED


def test_dp_fields_are_checked_before_use():
    assert protocol.header_flag(parse(update(unclipped=True)).header, "unclipped") is True
    assert protocol.header_flag(parse(update()).header, "unclipped") is False
    assert rejected(update(unclipped=1)) == protocol.MALFORMED

    def model(**fields):
        return parse_encoded(protocol.MODEL, protocol.model_layout(SPEC), **fields)

    assert protocol.header_number(model(clip_norm=0.25).header, "clip_norm", 1.0) == 0.25
    assert protocol.header_number(model().header, "clip_norm", 1.0) == 1.0
    for bad, reason in (
        (0.0, protocol.MALFORMED),
        ("big", protocol.MALFORMED),
        (float("nan"), protocol.NON_FINITE),
    ):
        with pytest.raises(protocol.MessageRejected) as info:
            model(clip_norm=bad)
        assert info.value.reason == reason


def test_a_summarys_round_statistics_are_checked_before_the_cloud_records_them():
    def summary(**fields):
        return parse_encoded(protocol.SUMMARY, NONE, weight=4.0, loss=1.0, **fields)

    assert summary(
        answered=[2, 2], expected=2, late=0, rejected={"stale-round": 1}, secagg_failed=0
    ).header["answered"] == [2, 2]
    for bad in (
        {"answered": 5},
        {"answered": [2, -1]},
        {"late": "x"},
        {"expected": 1.5},
        {"rejected": {"a": "b"}},
        {"rejected": [1]},
        {"stale": 1},
        {"secagg_failed": True},
        {"base_version": -2},
    ):
        with pytest.raises(protocol.MessageRejected) as info:
            summary(**bad)
        assert info.value.reason == protocol.MALFORMED, bad


def test_a_fine_tuning_rounds_tuned_message_carries_a_summarys_statistics_and_no_arrays():
    def tuned(*arrays, **fields):
        frames = protocol.encode(protocol.TUNED, "plant-a", round=3, arrays=list(arrays), **fields)
        return protocol.parse_message(
            [bytes(f) for f in frames],
            senders={"plant-a"},
            spec=SPEC,
            layouts={},
            max_bytes=1 << 20,
        )

    message = tuned(weight=4.0, loss=1.0, answered=[2, 2], expected=2)
    assert (message.kind, message.round, message.arrays) == (protocol.TUNED, 3, ())
    for bad, reason in (
        ({"weight": -1.0, "loss": 1.0}, protocol.MALFORMED),
        ({"weight": float("inf"), "loss": 1.0}, protocol.NON_FINITE),
        ({"weight": 4.0}, protocol.MALFORMED),
        ({"weight": 4.0, "loss": 1.0, "answered": [-1]}, protocol.MALFORMED),
        ({"weight": 4.0, "loss": 1.0, "unclipped": "x"}, protocol.MALFORMED),
    ):
        with pytest.raises(protocol.MessageRejected) as info:
            tuned(**bad)
        assert info.value.reason == reason, bad
    with pytest.raises(protocol.MessageRejected, match="a tuned message has 1 frame"):
        tuned(np.zeros(SPEC.size, np.float32), weight=4.0, loss=1.0)
    model = parse_encoded(protocol.MODEL, protocol.model_layout(SPEC), fine_tune=True)
    assert protocol.header_flag(model.header, "fine_tune")
    with pytest.raises(protocol.MessageRejected, match="'fine_tune' must be true or false"):
        parse_encoded(protocol.MODEL, protocol.model_layout(SPEC), fine_tune=1)


def test_frames_of_the_wrong_length_and_oversized_messages_are_rejected():
    header, frame = update()
    assert rejected([header, bytes(frame) + b"\0" * 4]) == protocol.OVERSIZED
    assert rejected([header, bytes(frame)[:-4]]) == protocol.MALFORMED
    assert rejected([header]) == protocol.MALFORMED
    assert rejected(update(), max_bytes=64) == protocol.OVERSIZED


def test_senders_must_be_known_and_match_their_connection():
    assert (
        rejected(update(sender="plant-a/line-1/dev-999"), routing_id=b"plant-a/line-1/dev-999")
        == protocol.UNKNOWN_SENDER
    )
    assert rejected(update(), routing_id=b"plant-a/line-1/dev-002") == protocol.UNKNOWN_SENDER


def test_topk_indices_must_be_in_range():
    codec = make_codec("topk", SPEC.size, fraction=0.5)
    layouts = {protocol.UPDATE: ("topk", protocol.codec_layout(codec))}
    values, indices = np.ones(4, np.float32), np.array([0, 1, 2, SPEC.size], np.int32)
    frames = protocol.encode(
        protocol.UPDATE,
        "plant-a/line-1/dev-001",
        round=1,
        spec=SPEC,
        codec="topk",
        arrays=[values, indices],
        weight=1.0,
        loss=0.0,
    )
    with pytest.raises(protocol.MessageRejected) as info:
        protocol.parse_message(
            [bytes(f) for f in frames],
            senders=SENDERS,
            spec=SPEC,
            layouts=layouts,
            max_bytes=1 << 20,
        )
    assert info.value.reason == protocol.NON_FINITE


def test_kinds_this_node_does_not_take_are_unexpected():
    frames = protocol.encode(
        protocol.SUMMARY,
        "plant-a/line-1/dev-001",
        spec=SPEC,
        codec="none",
        arrays=[np.zeros(SPEC.size, np.float32)],
        weight=1.0,
        loss=0.0,
    )
    assert rejected(frames) == protocol.UNEXPECTED


def test_update_rounds_closed_future_and_current():
    assert update_problem((1, 0), (1, 1), True)[0] == protocol.STALE_ROUND
    assert update_problem((1, 1), (1, 1), False)[0] == protocol.STALE_ROUND
    assert update_problem((0, 5), (1, 0), True)[0] == protocol.STALE_ROUND
    assert update_problem((2, 0), (1, 1), True)[0] == protocol.FUTURE_ROUND
    assert update_problem((1, 1), (1, 1), True) is None


def test_membership_forgets_silent_peers_and_readmits_them():
    now = [0.0]
    members = Membership(timeout=2.0, clock=lambda: now[0])
    assert members.seen("a") and members.seen("b")
    assert not members.seen("a")
    now[0] = 1.5
    members.seen("a")
    now[0] = 3.0
    assert members.alive() == {"a"}
    assert members.seen("b")  # back after silence: a re-admission
    assert members.alive() == {"a", "b"}


DEV1 = "plant-a/line-1/dev-001"


@pytest.mark.parametrize(
    "kind, fields, valid",
    [
        (protocol.SECAGG_KEYS, {"c_pk": bytes(32), "s_pk": bytes(32)}, True),
        (protocol.SECAGG_KEYS, {"c_pk": "text", "s_pk": bytes(32)}, False),
        (protocol.SECAGG_KEYS, {"s_pk": bytes(32)}, False),
        (protocol.SECAGG_ROSTER, {"threshold": 2, "keys": {DEV1: [bytes(32), bytes(32)]}}, True),
        (protocol.SECAGG_ROSTER, {"threshold": 2, "keys": {DEV1: [bytes(32)]}}, False),
        (protocol.SECAGG_ROSTER, {"threshold": True, "keys": {}}, False),
        (protocol.SECAGG_SHARES, {"b_hash": bytes(32), "shares": {DEV1: b"sealed"}}, True),
        (protocol.SECAGG_SHARES, {"b_hash": bytes(32), "shares": [b"sealed"]}, False),
        (protocol.SECAGG_INBOX, {"shares": {DEV1: 7}}, False),
        (protocol.SECAGG_UNMASK, {"survivors": [DEV1], "dropped": []}, True),
        (protocol.SECAGG_UNMASK, {"survivors": DEV1, "dropped": []}, False),
        (
            protocol.SECAGG_REVEAL,
            {"mask_key_shares": {}, "self_mask_shares": {DEV1: bytes(66)}},
            True,
        ),
        (
            protocol.SECAGG_REVEAL,
            {"mask_key_shares": {}, "self_mask_shares": {1: bytes(66)}},
            False,
        ),
    ],
)
def test_secagg_fields_are_type_checked(kind, fields, valid):
    frames = protocol.encode(kind, DEV1, round=1, **fields)
    if valid:
        assert parse(frames).header | fields == parse(frames).header
    else:
        assert rejected(frames) == protocol.MALFORMED


def test_a_masked_input_is_one_raw_uint32_frame_of_its_layout():
    layouts = {
        protocol.SECAGG_MASKED: (protocol.MASKED_CODEC, protocol.masked_layout(SPEC.size + 2))
    }
    words = np.arange(SPEC.size + 2, dtype=np.uint32) * np.uint32(2**27)

    def masked(arrays, codec=protocol.MASKED_CODEC):
        frames = protocol.encode(
            protocol.SECAGG_MASKED, DEV1, round=1, spec=SPEC, codec=codec, arrays=arrays
        )
        return protocol.parse_message(
            [bytes(f) for f in frames],
            senders=SENDERS,
            spec=SPEC,
            layouts=layouts,
            max_bytes=1 << 20,
        )

    np.testing.assert_array_equal(masked([words]).arrays[0], words)
    for arrays, codec, reason in [
        ([words[:-1]], protocol.MASKED_CODEC, protocol.MALFORMED),
        ([np.concatenate([words, words[:1]])], protocol.MASKED_CODEC, protocol.OVERSIZED),
        ([words], "none", protocol.WRONG_SPEC),
    ]:
        with pytest.raises(protocol.MessageRejected) as info:
            masked(arrays, codec)
        assert info.value.reason == reason


def deep(depth: int) -> bytes:
    """A msgpack value nested `depth` arrays deep (packb itself refuses to build one this deep)."""
    return b"\x91" * depth + b"\x00"


def hello_with(name: str, value: bytes) -> bytes:
    """A hello header whose field `name` is the raw msgpack `value`."""
    base = hello()
    return bytes([base[0] + 1]) + base[1:] + msgpack.packb(name) + value


@pytest.mark.parametrize("name", ["sender", "spec", "detail"])
def test_deeply_nested_headers_are_refused_not_recursed_into(name):
    if name != "sender":
        assert parse([hello_with(name, deep(3))]).kind == "hello"
    for depth in (100, 1000, 100_000):
        with pytest.raises(protocol.MessageRejected) as info:
            parse([hello_with(name, deep(depth))])
        assert info.value.reason == protocol.MALFORMED
        assert "nests deeper than" in str(info.value) or "not msgpack" in str(info.value)


def test_header_lengths_are_limited_while_decoding():
    long_list = hello_with("answered", msgpack.packb(list(range(200_000))))
    assert rejected([long_list]) == protocol.MALFORMED
    many_keys = hello_with("x", msgpack.packb({str(i): 0 for i in range(100_000)}))
    assert rejected([many_keys]) == protocol.MALFORMED


F32_MAX = float(np.finfo(np.float32).max)


def test_numbers_are_checked_in_the_precision_they_are_used_in():
    assert (
        rejected(update(weight=1e39)) == protocol.NON_FINITE
    )  # finite as a double, inf as float32
    assert rejected(update(loss=-1e39)) == protocol.NON_FINITE
    assert (
        rejected(update(loss=1e38, weight=10.0)) == protocol.NON_FINITE
    )  # loss x weight overflows
    big = np.full(SPEC.size, 3e38, np.float32)  # finite, but 2 x 3e38 is not
    assert rejected(update(big, weight=2.0)) == protocol.NON_FINITE
    assert parse(update(big / 2, weight=1.0)).kind == "update"  # alone, 1.5e38 sums to itself
    with pytest.raises(protocol.MessageRejected) as info:  # but three of them overflow
        protocol.parse_message(
            [bytes(f) for f in update(big / 2, weight=1.0)],
            senders=SENDERS | {"plant-a/line-1/dev-002", "plant-a/line-1/dev-003"},
            spec=SPEC,
            layouts=LAYOUTS,
            max_bytes=1 << 20,
        )
    assert info.value.reason == protocol.NON_FINITE
    fine = parse(update(np.full(SPEC.size, 1e30, np.float32), weight=1e6))
    assert fine.header["weight"] == 1e6
    header = msgpack.unpackb(update()[0])
    for name, value in [("round", 2**40), ("edge_round", -1), ("model_version", 2**63 - 1)]:
        frames = update()
        frames[0] = msgpack.packb({**header, name: value})
        assert rejected(frames) == protocol.MALFORMED, name


def test_int8_updates_are_bounded_by_what_they_decode_to():
    int8 = make_codec("int8", SPEC.size, block_size=256)
    layouts = {protocol.UPDATE: ("int8", protocol.codec_layout(int8))}
    q = np.full(SPEC.size, 127, np.int8)

    def check(scale, weight):
        frames = protocol.encode(
            protocol.UPDATE,
            "plant-a/line-1/dev-001",
            round=1,
            spec=SPEC,
            codec="int8",
            arrays=[q, np.full(1, scale, np.float32)],
            weight=weight,
            loss=0.0,
        )
        return protocol.parse_message(
            [bytes(f) for f in frames],
            senders=SENDERS,
            spec=SPEC,
            layouts=layouts,
            max_bytes=1 << 20,
        )

    assert check(1.0, 10.0).kind == "update"
    with pytest.raises(protocol.MessageRejected) as info:
        check(F32_MAX / 127 / 2, 10.0)  # finite scale, but 127 x scale x weight is not
    assert info.value.reason == protocol.NON_FINITE


def test_evaluation_and_summary_numbers_fit_float32():
    def summary(**fields):
        return parse_encoded(
            protocol.SUMMARY, NONE, "plant-a", **{"weight": 10.0, "loss": 1.0, **fields}
        )

    assert summary().kind == "summary"
    for fields in ({"weight": 1e39}, {"loss": 1e39}, {"unclipped": 1e39}):
        with pytest.raises(protocol.MessageRejected) as info:
            summary(**fields)
        assert info.value.reason == protocol.NON_FINITE, fields
    with pytest.raises(protocol.MessageRejected):
        summary(answered=[2**40])

    def evaluation(**fields):
        return parse_evaluation(protocol.EvaluationLayout(0, 0), **fields)

    assert evaluation().kind == "evaluation"
    for fields in ({"loss_sum": 1e39}, {"metric_sums": {"accuracy": -1e39}}, {"count": 2**40}):
        with pytest.raises(protocol.MessageRejected) as info:
            evaluation(**fields)
        assert info.value.reason in (protocol.NON_FINITE, protocol.MALFORMED), fields


def parse_evaluation(layout, **fields):
    """An `evaluation` of 10 examples with `fields` replaced, parsed by a node whose task's counts are `layout`."""
    header = {
        "count": 10,
        "loss_sum": 1.0,
        "metric_sums": {"accuracy": 7.0},
        "confusion": [],
        "histogram": [],
        **fields,
    }
    frames = protocol.encode(protocol.EVALUATION, "plant-a", round=1, **header)
    return protocol.parse_message(
        [bytes(f) for f in frames],
        senders={"plant-a"},
        spec=SPEC,
        layouts={protocol.EVALUATION: (protocol.SUMS, layout)},
        max_bytes=1 << 20,
    )


TWO_CLASSES = protocol.EvaluationLayout(classes=2, bins=4)
CONFUSION = [[6, 1], [2, 1]]  # 7 ok, 3 faults
HISTOGRAM = [[4, 2, 1, 0], [0, 1, 1, 1]]  # rows add up to the confusion's
MISSING = object()


def test_an_evaluation_carries_its_tasks_counts():
    message = parse_evaluation(TWO_CLASSES, confusion=CONFUSION, histogram=HISTOGRAM)
    assert message.header["confusion"] == CONFUSION and message.header["histogram"] == HISTOGRAM
    three = protocol.EvaluationLayout(classes=3, bins=0)
    assert parse_evaluation(three, confusion=[[3, 0, 0], [0, 3, 1], [0, 0, 3]]).kind == "evaluation"
    assert parse_evaluation(protocol.EvaluationLayout(0, 0)).kind == "evaluation"  # regression


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"confusion": None}, "'confusion' must be 2 lists of 2 counts"),
        ({"confusion": MISSING}, "'confusion' must be 2 lists of 2 counts"),  # required
        ({"confusion": [[6, 1, 0], [2, 1, 0]]}, "'confusion' must be 2 lists of 2 counts"),
        ({"confusion": [[6, 1], [2, 1], [0, 0]]}, "'confusion' must be 2 lists of 2 counts"),
        ({"confusion": [[6, 1], 3]}, "'confusion' must be 2 lists of 2 counts"),
        ({"confusion": [[6, 1], [[2], 1]]}, "must hold counts"),  # nested deeper
        ({"confusion": [[6, 1], [2.0, 1]]}, "must hold counts"),
        ({"confusion": [[6, 1], [True, 2]]}, "must hold counts"),
        ({"confusion": [[7, 1], [3, -1]]}, "must hold counts"),
        ({"confusion": [[2**63, 1], [2, 1]]}, "must hold counts"),  # beyond int64
        ({"confusion": [[6, 1], [2, 2]]}, "'confusion' counts 11 examples, 'count' says 10"),
        ({"histogram": []}, "'histogram' must be 2 lists of 4 counts"),
        ({"histogram": [[4, 2, 1, 0, 0], [0, 1, 1, 1, 0]]}, "'histogram' must be 2 lists of 4"),
        ({"histogram": [[4, 2, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]]}, "must be 2 lists of 4"),
        ({"histogram": [[4, 2, 1, 0], [0, 1, 1, "1"]]}, "must hold counts"),
        ({"histogram": [[4, 2, 1, 1], [0, 1, 1, 1]]}, "'histogram' counts 11 examples"),
        (
            {"histogram": [[4, 2, 0, 0], [0, 1, 1, 2]]},
            "'histogram' counts [6, 4] examples of classes 0 and 1, 'confusion' [7, 3]",
        ),
    ],
)
def test_malformed_evaluation_counts_are_refused(fields, problem):
    header = {"confusion": CONFUSION, "histogram": HISTOGRAM, **fields}
    header = {k: v for k, v in header.items() if v is not MISSING}
    with pytest.raises(protocol.MessageRejected) as info:
        parse_evaluation(TWO_CLASSES, **header)
    assert info.value.reason == protocol.MALFORMED
    assert problem in str(info.value)


def test_a_regression_tasks_evaluation_has_no_counts_and_a_node_without_evaluations_takes_none():
    regression = protocol.EvaluationLayout(0, 0)
    with pytest.raises(protocol.MessageRejected, match="'confusion' must be an empty list"):
        parse_evaluation(regression, confusion=[[10]])
    with pytest.raises(protocol.MessageRejected, match="'histogram' must be an empty list"):
        parse_evaluation(regression, histogram=[[1], [1]])
    frames = protocol.encode(
        protocol.EVALUATION, "plant-a", round=1, count=1, loss_sum=0.0, metric_sums={}
    )
    with pytest.raises(protocol.MessageRejected) as info:
        protocol.parse_message(
            [bytes(f) for f in frames],
            senders={"plant-a"},
            spec=SPEC,
            layouts=LAYOUTS,
            max_bytes=1 << 20,
        )
    assert info.value.reason == protocol.UNEXPECTED


def test_evaluation_counts_cannot_nest_deeper_than_the_header_allows():
    deep: list = [1]
    for _ in range(protocol.MAX_HEADER_DEPTH + 2):
        deep = [deep]
    with pytest.raises(protocol.MessageRejected, match="nests deeper"):
        parse_evaluation(TWO_CLASSES, confusion=deep, histogram=HISTOGRAM)


@pytest.mark.parametrize(
    ("part", "fields", "reason"),
    [
        (True, {"examples": 3, "sums": [1.0, 2.0], "squares": [1.0, 4.0]}, None),
        (False, {"examples": 3, "mean": [0.5, -1.0], "std": [1.0, 2.0]}, None),
        (True, {"examples": -1, "sums": [1.0, 2.0], "squares": [1.0, 4.0]}, "examples"),
        (True, {"examples": 3, "sums": [1.0], "squares": [1.0, 4.0]}, "'sums' must be 2"),
        (True, {"examples": 3, "sums": [1.0, float("nan")], "squares": [1.0, 4.0]}, "'sums'"),
        (True, {"examples": 3, "sums": [1.0, 2.0], "squares": [1.0, -4.0]}, "'squares'"),
        (True, {"examples": 3, "sums": [1.0, True], "squares": [1.0, 4.0]}, "'sums'"),
        (False, {"examples": 3, "mean": [0.5, -1.0], "std": [1.0, 0.0]}, "std > 0"),
        (False, {"examples": 3, "mean": [0.5, 1e39], "std": [1.0, 2.0]}, "'mean' must be float32"),
        (False, {"examples": 3}, "'mean' must be 2"),
    ],
)
def test_a_census_is_checked_before_it_is_used(part, fields, reason):
    frames = protocol.encode(protocol.CENSUS, "plant-a/line-1/dev-001", **fields)
    layouts = {protocol.CENSUS: (protocol.CENSUS, protocol.CensusLayout(2, part))}

    def parse_census():
        return protocol.parse_message(
            [bytes(f) for f in frames],
            senders=SENDERS,
            spec=SPEC,
            layouts=layouts,
            max_bytes=1 << 20,
        )

    if reason is None:
        assert parse_census().header["examples"] == 3
        return
    with pytest.raises(protocol.MessageRejected) as info:
        parse_census()
    assert info.value.reason == protocol.MALFORMED and reason in str(info.value)


def test_an_evaluation_must_sum_exactly_the_tasks_metrics():
    """An evaluation without the task's metric once passed the checks and crashed the cloud
    (a KeyError when it combined the plants' sums): found by tests/test_runtime_fuzz.py."""
    layout = protocol.EvaluationLayout(0, 0, ("accuracy",))

    def evaluation(sums):
        frames = protocol.encode(
            protocol.EVALUATION,
            "plant-a",
            round=1,
            count=4,
            loss_sum=1.0,
            metric_sums=sums,
            confusion=[],
            histogram=[],
        )
        return protocol.parse_message(
            [bytes(f) for f in frames],
            senders={"plant-a"},
            spec=SPEC,
            layouts={protocol.EVALUATION: (protocol.SUMS, layout)},
            max_bytes=1 << 20,
        )

    assert evaluation({"accuracy": 3.0}).header["metric_sums"] == {"accuracy": 3.0}
    for sums in ({}, {"rmse": 1.0}, {"accuracy": 3.0, "extra": 1.0}):
        with pytest.raises(protocol.MessageRejected) as info:
            evaluation(sums)
        assert info.value.reason == protocol.MALFORMED
        assert "exactly the task's metrics (accuracy)" in str(info.value)
