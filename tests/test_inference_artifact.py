"""Exporting trained models to `.hfl` files and reading them back: same predictions, clear refusals."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import jax
import msgpack
import numpy as np
import pytest

import hierfl
from hierfl.data.tasks import TASKS
from hierfl.data.tasks.models import build_model
from hierfl.errors import ArtifactError, RunDirError
from hierfl.inference.artifact import (
    FORMAT_VERSION,
    MAGIC,
    decode_artifact,
    encode_artifact,
    read_artifact,
    write_artifact,
)
from hierfl.inference.compiled import compile_artifact
from hierfl.inference.export import export_model, export_run

HIERFL = Path(sys.executable).parent / "hierfl"
TINY = Path(__file__).parent / "data" / "tiny.toml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-round digits run (tiny.toml) written to a run directory, and its in-memory result."""
    run_dir = tmp_path_factory.mktemp("run")
    result = hierfl.simulate(
        hierfl.load_topology(TINY).with_federation(cloud_rounds=2), out=run_dir
    )
    return result, run_dir


@pytest.fixture(scope="module")
def model_file(trained, tmp_path_factory):
    _, run_dir = trained
    return write_artifact(tmp_path_factory.mktemp("model") / "model.hfl", export_run(run_dir))


def test_exported_run_predicts_like_the_in_process_model(trained, model_file):
    result, _ = trained
    x = (
        result.plan.test.x
    )  # every test example: more than the largest bucket, so batches are split too
    assert len(x) > 32
    expected = np.asarray(jax.jit(result.model.apply)(result.params, x))
    served = compile_artifact(read_artifact(model_file), max_batch=32)
    starts = np.cumsum([0, *[1, 2, 5, 7, 32] * len(x)])
    pieces = [
        served.predict(x[a:b]) for a, b in zip(starts[:-1], starts[1:]) if a < len(x)
    ]  # every bucket
    np.testing.assert_allclose(np.concatenate(pieces), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served.predict(x), expected, rtol=1e-5, atol=1e-5)


def test_the_file_records_version_metrics_signature_and_weights(trained, model_file):
    _, run_dir = trained
    artifact = read_artifact(model_file)
    meta = artifact.meta
    last_round = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert meta.version == last_round["round"] == 2
    assert meta.metrics == last_round
    # A classifier's figures travel with it (nested: per class, per plant).
    assert {"macro_f1", "per_class", "confusion", "chance", "plant_confusion"} <= set(meta.metrics)
    assert sum(map(sum, meta.metrics["confusion"])) == sum(
        meta.metrics["per_class"][c]["support"] for c in meta.class_names
    )
    assert (meta.task, meta.model) == ("digits", "mlp")
    assert meta.class_names == tuple(str(d) for d in range(10))
    assert (meta.input_shape, meta.input_dtype, meta.output_shape) == ((8, 8, 1), "float32", (10,))
    assert meta.platforms == ("cpu", "cuda")
    assert meta.preprocessing["raw_scale"] == 1 / 16
    assert meta.run["run_dir"] == str(run_dir)
    with np.load(run_dir / "model.npz") as saved:
        names = [k for k in saved.files if k != "__dtypes__"]
        assert sorted(artifact.params) == sorted(names)
        for name in names:
            np.testing.assert_array_equal(artifact.params[name], saved[name])
    exported = jax.export.deserialize(bytearray(artifact.function))
    assert str(exported.in_avals[-1].shape[0]) == "batch"  # symbolic batch dimension
    assert tuple(exported.in_avals[-1].shape[1:]) == (8, 8, 1)


@pytest.mark.parametrize("task_name, model_name", [("bearing-fault", "cnn1d"), ("digits", "cnn")])
def test_exported_models_equal_the_in_process_model(task_name, model_name):
    task = TASKS[task_name]
    model, params = build_model(model_name, task.models[model_name], jax.random.key(3))
    artifact = decode_artifact(encode_artifact(export_model(model, params, task, version=7)))
    served = compile_artifact(artifact, max_batch=8)
    x = np.random.default_rng(0).standard_normal((11, *task.input_shape)).astype(np.float32)
    expected = np.asarray(jax.jit(model.apply)(params, x))
    for n in (1, 3, 8, 11):
        np.testing.assert_allclose(served.predict(x[:n]), expected[:n], rtol=1e-5, atol=1e-5)
    assert artifact.meta.version == 7 and artifact.meta.output_shape == (task.num_classes,)


def test_a_corrupt_or_truncated_file_is_refused(model_file, tmp_path):
    data = bytearray(model_file.read_bytes())
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    cases = {
        "flipped.hfl": (bytes(flipped), "checksum mismatch"),
        "truncated.hfl": (bytes(data[:-100]), "checksum mismatch"),
        "short.hfl": (bytes(data[:20]), "truncated model file"),
        "other.hfl": (b"PK\x03\x04" + bytes(data[4:]), "not a hierfl model file"),
        "empty.hfl": (b"", "not a hierfl model file"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ArtifactError, match=expected) as caught:
            read_artifact(path)
        assert name in str(caught.value)
    with pytest.raises(ArtifactError, match="missing.hfl: cannot read model file"):
        read_artifact(tmp_path / "missing.hfl")


def test_another_format_version_is_refused_before_anything_else(model_file, tmp_path):
    data = bytearray(model_file.read_bytes())
    data[8:12] = struct.pack("<I", FORMAT_VERSION + 1)
    path = tmp_path / "future.hfl"
    path.write_bytes(_with_checksum(bytes(data[:-32])))
    with pytest.raises(
        ArtifactError,
        match=f"format version {FORMAT_VERSION + 1}, but this hierfl reads version {FORMAT_VERSION}",
    ):
        read_artifact(path)


def test_a_malformed_header_with_a_valid_checksum_is_refused(model_file):
    data = model_file.read_bytes()
    (length,) = struct.unpack_from("<I", data, 12)
    header = msgpack.unpackb(data[16 : 16 + length], strict_map_key=False)
    body = data[16 + length : -32]
    for change, expected in (
        (lambda h: h.pop("task"), "header field 'task' is missing"),
        (lambda h: h["input"].update(shape=[8, 8, 1]), "input.shape"),
        (lambda h: h["params"][0].update(offset=len(body)), "lies outside the file"),
        (lambda h: h["params"][0].update(dtype="complex999"), "unknown dtype"),
    ):
        edited = dict(
            header, input=dict(header["input"]), params=[dict(p) for p in header["params"]]
        )
        change(edited)
        packed = msgpack.packb(edited, use_bin_type=True)
        forged = _with_checksum(
            MAGIC + struct.pack("<II", FORMAT_VERSION, len(packed)) + packed + body
        )
        with pytest.raises(ArtifactError, match=expected):
            decode_artifact(forged, "forged.hfl")


@pytest.mark.parametrize(
    ("task_name", "outputs", "expected"),
    [
        (
            "digits",
            2,
            "model 'mlp' outputs 2 values per example but task 'digits' has 10 class names",
        ),
        (
            "bearing-fault",
            3,
            "model 'mlp' outputs 3 values per example but task 'bearing-fault' has 4 class names",
        ),
    ],
)
def test_export_refuses_a_model_whose_outputs_do_not_match_the_class_names(
    task_name, outputs, expected
):
    from hierfl.data.tasks.models import MLP

    task = TASKS[task_name]
    inputs = int(np.prod(task.input_shape))
    model, params = build_model(
        "mlp", lambda rngs: MLP(inputs, (4,), outputs, rngs=rngs), jax.random.key(0)
    )
    with pytest.raises(ArtifactError, match=expected):
        export_model(model, params, task, version=1, platforms=("cpu",))


def test_a_model_exported_for_another_platform_does_not_load_here():
    task = TASKS["digits"]
    model, params = build_model("mlp", task.models["mlp"], jax.random.key(0))
    artifact = export_model(model, params, task, version=1, platforms=("cuda",))
    with pytest.raises(ArtifactError, match="exported for cuda, not for this machine's cpu"):
        compile_artifact(artifact)


def test_export_run_refuses_an_unfinished_run(trained, tmp_path):
    _, run_dir = trained
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("run.json", "metrics.jsonl"):
        (partial / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(RunDirError, match="model.npz: no such file"):
        export_run(partial)
    (partial / "metrics.jsonl").write_text("")
    with pytest.raises(RunDirError, match="no finished cloud round"):
        export_run(partial)


def test_export_command_writes_the_file_and_errors_exit_2(trained, tmp_path):
    _, run_dir = trained
    out = tmp_path / "cli.hfl"
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [str(HIERFL), "export", str(run_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "version 2" in done.stdout and str(out) in done.stdout
    assert read_artifact(out).meta.version == 2
    missing = subprocess.run(
        [str(HIERFL), "export", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert (
        missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    )


def _with_checksum(content: bytes) -> bytes:
    return content + hashlib.sha256(content).digest()
