"""The pure parts of edge inference: wire format checks, batching rules, versions, update sources.

No sockets here: every decision the server makes about a message, a batch or a new model
file is a function of its inputs, tested on hand-made inputs with hand-derived answers.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest

from hierfl.errors import InferenceError, ProtocolError
from hierfl.inference.artifact import ArtifactMeta
from hierfl.inference.batching import (
    RequestQueue,
    Waiting,
    bucket_for,
    bucket_sizes,
    pad_rows,
    split_rows,
)
from hierfl.inference.protocol import (
    InputSpec,
    encode_error,
    encode_info,
    encode_prediction,
    encode_request,
    parse_reply,
    parse_request,
    split_envelope,
)
from hierfl.inference.publisher import TOPIC, decode_publication
from hierfl.inference.updates import changed_files, incompatibility, scan_directory
from hierfl.inference.versions import ModelVersions

SPEC = InputSpec(shape=(4, 2), dtype="float32", max_rows=3)


def header(**fields) -> bytes:
    return msgpack.packb(
        {
            "kind": "predict",
            "protocol": 1,
            "id": 5,
            "shape": [1, 4, 2],
            "dtype": "float32",
            **fields,
        }
    )


def test_a_valid_predict_request_is_read_without_a_copy():
    x = np.arange(16, dtype=np.float32).reshape(2, 4, 2)
    frames = [bytes(f) for f in encode_request("predict", 9, x)]
    request = parse_request(frames, SPEC)
    assert request.kind == "predict" and request.id == 9
    np.testing.assert_array_equal(request.x, x)
    assert not request.x.flags.owndata  # a view of the received frame


@pytest.mark.parametrize(
    "frames, expected, request_id",
    [
        ([header(shape=[1, 8]), b"\0" * 32], "wrong input shape [1, 8]", 5),
        ([header(dtype="float64"), b"\0" * 64], "dtype 'float64'", 5),
        ([header(shape=[4, 4, 2]), b"\0" * 128], "request has 4 rows: too large", 5),
        ([header(shape=[0, 4, 2]), b""], "request has 0 rows", 5),
        ([header(), b"\0" * 31], "data frame has 31 bytes; shape [1, 4, 2] of float32 needs 32", 5),
        ([header()], "a predict request is [header, data], got 1 frames", 5),
        ([header(kind="train")], "unknown request kind 'train'", 5),
        ([header(protocol=2), b"\0" * 32], "protocol version 2", 5),
        ([header(id=-1), b"\0" * 32], "'id' must be a non-negative integer", None),
        ([header(id="x"), b"\0" * 32], "'id' must be a non-negative integer", None),
        ([header(shape="big"), b"\0" * 32], "'shape' must be a list of integers", 5),
        ([b"\xc1\xc1", b"\0" * 32], "header frame is not msgpack", None),
        ([msgpack.packb([1, 2]), b""], "header must be a msgpack map", None),
        ([b"\x80" * 5000], "header frame is 5000 bytes", None),
        ([], "empty message", None),
        (
            [msgpack.packb({"kind": "info", "protocol": 1, "id": 3}), b"x"],
            "'info' requests are one header frame",
            3,
        ),
    ],
)
def test_malformed_requests_are_refused_naming_the_problem(frames, expected, request_id):
    with pytest.raises(ProtocolError) as caught:
        parse_request(frames, SPEC)
    assert expected in str(caught.value)
    assert caught.value.request_id == request_id


def test_non_finite_inputs_are_refused():
    x = np.zeros((1, 4, 2), np.float32)
    x[0, 1, 1] = np.nan
    x[0, 2, 0] = np.inf
    with pytest.raises(ProtocolError, match="2 NaN or infinite values"):
        parse_request(encode_request("predict", 1, x), SPEC)


def test_control_requests_and_replies_round_trip():
    assert parse_request(encode_request("rollback", 4), SPEC) == ("rollback", 4, None)
    y = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    reply = parse_reply([bytes(f) for f in encode_prediction(7, 12, y)])
    assert (reply.kind, reply.id, reply.version) == ("prediction", 7, 12)
    np.testing.assert_array_equal(reply.y, y)
    error = parse_reply(encode_error(None, 12, "bad shape"))
    assert (error.kind, error.id, error.version, error.header["error"]) == (
        "error",
        None,
        12,
        "bad shape",
    )
    info = parse_reply(encode_info(8, 12, {"versions": [11, 12]}))
    assert info.header["info"] == {"versions": [11, 12]}
    with pytest.raises(ProtocolError, match="bytes of logits"):
        parse_reply([encode_prediction(7, 12, y)[0], b"\0" * 3])


def test_router_envelopes_of_dealer_and_req_peers():
    assert split_envelope([b"peer", b"head", b"data"]) == ([b"peer"], [b"head", b"data"])
    assert split_envelope([b"peer", b"", b"head"]) == ([b"peer", b""], [b"head"])


def test_bucket_sizes_are_powers_of_two_then_max_batch():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert bucket_sizes(24) == (1, 2, 4, 8, 16, 24)
    assert [bucket_for(n, bucket_sizes(24)) for n in (1, 3, 8, 9, 17, 24)] == [1, 4, 8, 16, 24, 24]
    with pytest.raises(ValueError):
        bucket_for(25, bucket_sizes(24))


def test_padding_and_splitting_rows():
    x = np.ones((3, 2), np.float32)
    padded = pad_rows(x, 4)
    assert padded.shape == (4, 2) and padded[3].sum() == 0 and padded[:3].sum() == 6
    assert pad_rows(x, 3) is x
    y = np.arange(12).reshape(6, 2)
    parts = split_rows(y, [1, 3, 2])
    assert [p.tolist() for p in parts] == [[[0, 1]], [[2, 3], [4, 5], [6, 7]], [[8, 9], [10, 11]]]
    assert split_rows(y[:2], [2])[0].tolist() == [[0, 1], [2, 3]]


def rows(n: int) -> np.ndarray:
    return np.zeros((n, 1), np.float32)


def test_a_batch_is_due_when_full_or_when_the_oldest_has_waited():
    queue = RequestQueue(max_batch=4, max_wait=0.010)
    assert not queue.due(0.0) and queue.wait_time(0.0) is None
    queue.add(Waiting(rows(1), 1.000, "a"))
    queue.add(Waiting(rows(2), 1.004, "b"))
    assert not queue.due(1.005)
    assert queue.wait_time(1.005) == pytest.approx(0.005)
    assert queue.due(1.010)  # the oldest has waited max_wait
    queue.add(Waiting(rows(1), 1.006, "c"))
    assert queue.rows == 4 and queue.due(1.006) and queue.wait_time(1.006) == 0.0  # full


def test_take_keeps_arrival_order_and_never_exceeds_max_batch():
    queue = RequestQueue(max_batch=4, max_wait=0.0)
    for name, n in (("a", 2), ("b", 1), ("c", 2), ("d", 4)):
        queue.add(Waiting(rows(n), 0.0, name))
    assert [w.reply_to for w in queue.take()] == ["a", "b"]  # c would make 5 rows
    assert [w.reply_to for w in queue.take()] == ["c"]
    assert [w.reply_to for w in queue.take()] == ["d"]
    assert len(queue) == 0 and queue.rows == 0


def model(version: int):
    return SimpleNamespace(meta=SimpleNamespace(version=version))


def test_versions_swap_keep_a_bounded_history_and_roll_back():
    versions = ModelVersions(model(1), keep=3)
    with pytest.raises(InferenceError, match="no previous version"):
        versions.rollback()
    for v in (2, 3, 4):
        versions.swap(model(v))
    assert versions.history == [2, 3, 4] and versions.current.meta.version == 4
    assert versions.rollback().meta.version == 3
    assert versions.rollback().meta.version == 2
    with pytest.raises(InferenceError, match="only version 2 is loaded"):
        versions.rollback()


def test_directory_scan_sees_new_and_changed_model_files_newest_first(tmp_path):
    (tmp_path / "a.hfl").write_bytes(b"1")
    (tmp_path / ".b.hfl.tmp").write_bytes(b"partial")  # write_artifact's temporary name
    (tmp_path / "notes.txt").write_text("x")
    before = scan_directory(tmp_path)
    assert list(before) == [tmp_path / "a.hfl"]
    (tmp_path / "b.hfl").write_bytes(b"22")
    os.utime(tmp_path / "b.hfl", ns=(2_000_000_000, 2_000_000_000))
    (tmp_path / "c.hfl").write_bytes(b"333")
    os.utime(tmp_path / "c.hfl", ns=(3_000_000_000, 3_000_000_000))
    after = scan_directory(tmp_path)
    assert changed_files(before, after) == [tmp_path / "c.hfl", tmp_path / "b.hfl"]
    (tmp_path / "b.hfl").write_bytes(b"2222")  # rewritten: changed again
    assert tmp_path / "b.hfl" in changed_files(after, scan_directory(tmp_path))
    assert changed_files(after, after) == []
    assert scan_directory(tmp_path / "missing") == {}


def meta(**fields) -> ArtifactMeta:
    base = dict(
        task="t",
        model="m",
        version=1,
        class_names=("a", "b"),
        input_shape=(4, 2),
        input_dtype="float32",
        output_shape=(2,),
        platforms=("cpu",),
    )
    return ArtifactMeta(**{**base, **fields})


def test_a_new_version_must_keep_the_input_signature_and_classes():
    assert incompatibility(meta(), meta(version=2, model="other")) is None
    assert "inputs [n, 8] float32" in incompatibility(meta(), meta(input_shape=(8,)))
    assert "float16" in incompatibility(meta(), meta(input_dtype="float16"))
    assert "classes ['a', 'c']" in incompatibility(meta(), meta(class_names=("a", "c")))


def test_a_plant_server_takes_only_its_plant_models():
    """A server started with a plant's own model (`run.plant`) takes that plant's later models
    only; a server of the global model takes no plant's."""
    a, b = meta(run={"plant": "plant-a"}), meta(version=2, run={"plant": "plant-b"})
    assert incompatibility(a, meta(version=2, run={"plant": "plant-a", "name": "x"})) is None
    assert "it is plant 'plant-b''s own model, this server serves plant 'plant-a''s" in (
        incompatibility(a, b)
    )
    assert "it is plant 'plant-a''s own model, this server serves the global model" in (
        incompatibility(meta(), a)
    )
    assert "it is the global model" in incompatibility(a, meta(version=2))


def test_publications_are_checked_before_their_artifact_is_read():
    data = b"body" * 10
    checksum = data[-32:].hex()
    good = {
        "kind": "model",
        "protocol": 1,
        "version": 3,
        "task": "t",
        "model": "m",
        "nbytes": len(data),
        "checksum": checksum,
    }
    assert decode_publication([TOPIC, msgpack.packb(good), data]).header["version"] == 3
    cases = [
        ([TOPIC, msgpack.packb(good)], "got 2 frames"),
        ([b"other", msgpack.packb(good), data], "publication topic"),
        ([TOPIC, b"\xc1", data], "not msgpack"),
        ([TOPIC, msgpack.packb({**good, "kind": "x"}), data], "not a model publication"),
        ([TOPIC, msgpack.packb({**good, "nbytes": 7}), data], "says 7 bytes"),
        ([TOPIC, msgpack.packb({**good, "checksum": "00"}), data], "checksum"),
        ([TOPIC, msgpack.packb(good), data], "limit 10"),
    ]
    for i, (frames, expected) in enumerate(cases):
        with pytest.raises(ProtocolError, match=expected):
            decode_publication(frames, max_bytes=10 if i == len(cases) - 1 else 1 << 20)


def test_the_client_module_does_not_need_jax():
    """`from hierfl.inference import Client` must work on a box without JAX installed."""
    import subprocess
    import sys

    code = "import sys; from hierfl.inference import Client; print('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
