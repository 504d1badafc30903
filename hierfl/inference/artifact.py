"""The model file (`.hfl`): a compiled inference function, its parameters and what they mean.

One file carries everything an edge box needs to serve a trained model without hierfl's
training code: the inference function lowered to StableHLO by `jax.export` (for every
platform it was exported for), the parameters as raw arrays, the input signature, the
class names, the task's preprocessing constants, the model version (the cloud round
that produced it) and that round's evaluation metrics.

Layout (all integers little-endian)::

    offset 0    magic      8 bytes  b"HIERFLM\\x00"
    offset 8    format     uint32   FORMAT_VERSION
    offset 12   H          uint32   length of the header
    offset 16   header     H bytes  msgpack map (see `_header_of`)
    16 + H      body       the serialized `jax.export.Exported`, then each parameter's
                           bytes (C order), each at the offset the header gives,
                           relative to the body's start, aligned to ALIGN bytes
    end - 32    checksum   SHA-256 of every byte before it

Reading checks, in order: the magic (is it a model file at all), the format version (can
this hierfl read it), the checksum (is it intact), then the header's fields and that every
section lies inside the body. Any failure raises `ArtifactError` naming the file and why.
The checksum's hex string identifies an artifact (`file_checksum`): the server uses it to
load each artifact at most once.

Parameters travel as arguments of the exported function rather than as constants folded
into it: the file stays as small as the weights themselves, and every version of the same
architecture exports to the same function bytes, so a server swapping in a new cloud
round reuses the executable it has already compiled and only moves the new weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from hierfl.errors import ArtifactError

MAGIC = b"HIERFLM\x00"
FORMAT_VERSION = 1
"""Bumped whenever the layout or the header's meaning changes; readers refuse other versions."""

SUFFIX = ".hfl"
ALIGN = 64
_PREAMBLE = struct.Struct("<8sII")
_CHECKSUM_BYTES = 32
_MAX_HEADER_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class ArtifactMeta:
    """What a model file says about its model.

    `input_shape` is one example's shape (the batch axis, symbolic in the exported
    function, is left out); `output_shape` likewise (`(num_classes,)`: logits). A regression
    model has no `class_names`; it outputs values `(H,)` named by `output_names`.
    `platforms` are the `jax.export` platforms the function was lowered for ('cpu',
    'cuda'). `version` is the cloud round that produced the parameters; `metrics` is that
    round's record from `metrics.jsonl`; `run` says which training run it came from.
    """

    task: str
    model: str
    version: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    platforms: tuple[str, ...]
    preprocessing: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    output_names: tuple[str, ...] = ()
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    run: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    created: str = ""
    hierfl_version: str = ""
    jax_version: str = ""


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A model ready to be written or served.

    `function` is `jax.export.Exported.serialize()` of `infer(param_leaves, x) -> logits`,
    where `param_leaves` is the list of `params` values in order and `x` is
    `[batch, *meta.input_shape]` of `meta.input_dtype`. `params` maps '/'-joined
    parameter paths (as in `model.npz`) to arrays, in the order the function takes them.
    """

    meta: ArtifactMeta
    function: bytes
    params: Mapping[str, np.ndarray]


def encode_artifact(artifact: Artifact) -> bytes:
    """The artifact as the bytes of a `.hfl` file, checksum included."""
    body, function_at = _aligned_sections(
        [artifact.function, *(_raw(a) for a in artifact.params.values())]
    )
    header = _header_of(artifact, function_at)
    packed = msgpack.packb(header, use_bin_type=True)
    head = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(packed)) + packed
    digest = hashlib.sha256(head)
    digest.update(body)
    return head + body + digest.digest()


def decode_artifact(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> Artifact:
    """Reads an artifact from the bytes of a `.hfl` file; `source` names it in errors.

    Raises `ArtifactError` if the bytes are not a model file, are of another format
    version, fail the checksum (corrupt or truncated), or have a malformed header.
    Parameter arrays are copies, independent of `data`.
    """
    view = memoryview(data).cast("B")
    header = read_header(view, source)
    body = view[_PREAMBLE.size + _header_length(view) : len(view) - _CHECKSUM_BYTES]
    meta = _meta_of(header, source)
    function = bytes(_section(body, header.get("function"), "function", source))
    specs = header.get("params")
    if not isinstance(specs, list):
        raise ArtifactError(
            f"{source}: header field 'params' must be a list of parameter descriptions"
        )
    params = {}
    for i, spec in enumerate(specs):
        name, shape, dtype = _param_spec(spec, i, source)
        raw = _section(body, spec, f"params[{i}] ({name})", source)
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ArtifactError(
                f"{source}: parameter {name!r} has {len(raw)} bytes, not shape {list(shape)} of {dtype.name}"
            )
        params[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return Artifact(meta, function, params)


def read_header(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> dict[str, Any]:
    """Checks magic, format version and checksum of a model file's bytes; returns its header map.

    Cheap next to `decode_artifact` (no arrays are copied): publishers use it to announce
    an artifact's version without loading it.
    """
    view = memoryview(data).cast("B")
    if len(view) < _PREAMBLE.size or bytes(view[:8]) != MAGIC:
        raise ArtifactError(
            f"{source}: not a hierfl model file (it does not start with {MAGIC!r}); write one with `hierfl export`"
        )
    _, version, header_length = _PREAMBLE.unpack_from(view)
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{source}: model file format version {version}, but this hierfl reads version {FORMAT_VERSION}; "
            "export the model again with this hierfl, or serve it with the hierfl that wrote it"
        )
    if (
        len(view) < _PREAMBLE.size + header_length + _CHECKSUM_BYTES
        or header_length > _MAX_HEADER_BYTES
    ):
        raise ArtifactError(
            f"{source}: truncated model file ({len(view)} bytes, header says {header_length} bytes of header)"
        )
    expected = bytes(view[len(view) - _CHECKSUM_BYTES :])
    if hashlib.sha256(view[: len(view) - _CHECKSUM_BYTES]).digest() != expected:
        raise ArtifactError(
            f"{source}: checksum mismatch: the file is corrupt or truncated (SHA-256 of its contents differs from the one stored in it)"
        )
    try:
        header = msgpack.unpackb(
            view[_PREAMBLE.size : _PREAMBLE.size + header_length], raw=False, strict_map_key=False
        )
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise ArtifactError(f"{source}: unreadable header ({type(err).__name__}: {err})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{source}: header must be a map, got {type(header).__name__}")
    return header


def file_checksum(data: bytes | bytearray | memoryview) -> str:
    """The hex SHA-256 stored at the end of a model file's bytes (check it with `read_header`)."""
    view = memoryview(data).cast("B")
    return bytes(view[len(view) - _CHECKSUM_BYTES :]).hex()


def write_artifact(path: str | os.PathLike, artifact: Artifact) -> Path:
    """Writes the artifact to `path` atomically (a temporary file, then a rename), creating its folder.

    A directory watched by `hierfl serve --watch` therefore never shows a half-written
    `.hfl` file: the temporary name does not end in `.hfl`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encode_artifact(artifact))
    os.replace(tmp, path)
    return path


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Reads and checks a `.hfl` file; `ArtifactError` naming the file if it is missing or bad."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read model file ({err.strerror or err})") from None
    return decode_artifact(data, str(path))


def _raw(array: np.ndarray) -> memoryview:
    array = np.ascontiguousarray(array)
    return memoryview(array.reshape(-1).view(np.uint8))


def _aligned_sections(sections: list) -> tuple[bytes, list[tuple[int, int]]]:
    """Concatenates byte sections, each starting at a multiple of ALIGN; returns (body, [(offset, nbytes)])."""
    parts, spans, offset = [], [], 0
    for section in sections:
        pad = -offset % ALIGN
        parts.append(b"\0" * pad)
        offset += pad
        spans.append((offset, len(section)))
        parts.append(bytes(section))
        offset += len(section)
    return b"".join(parts), spans


def _header_of(artifact: Artifact, spans: list[tuple[int, int]]) -> dict[str, Any]:
    meta = artifact.meta
    (function_offset, function_bytes), *param_spans = spans
    return {
        "task": meta.task,
        "model": meta.model,
        "version": meta.version,
        "class_names": list(meta.class_names),
        "input": {"shape": [None, *meta.input_shape], "dtype": meta.input_dtype},
        "output": {
            "shape": [None, *meta.output_shape],
            "kind": "logits" if meta.class_names else "values",
            **({"names": list(meta.output_names)} if meta.output_names else {}),
        },
        "platforms": list(meta.platforms),
        "preprocessing": dict(meta.preprocessing),
        "metrics": dict(meta.metrics),
        "run": dict(meta.run),
        "created": meta.created,
        "hierfl_version": meta.hierfl_version,
        "jax_version": meta.jax_version,
        "function": {"offset": function_offset, "nbytes": function_bytes},
        "params": [
            {
                "name": name,
                "shape": list(array.shape),
                "dtype": np.dtype(array.dtype).name,
                "offset": offset,
                "nbytes": nbytes,
            }
            for (name, array), (offset, nbytes) in zip(artifact.params.items(), param_spans)
        ],
    }


def _meta_of(header: dict[str, Any], source: str) -> ArtifactMeta:
    def field(name: str, kind: type | tuple[type, ...]) -> Any:
        value = header.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ArtifactError(
                f"{source}: header field {name!r} is missing or not a {getattr(kind, '__name__', kind)}"
            )
        return value

    signature, output = field("input", dict), field("output", dict)
    shape, out_shape = signature.get("shape"), output.get("shape")
    if not _is_batched_shape(shape) or not _is_batched_shape(out_shape):
        raise ArtifactError(
            f"{source}: header fields 'input.shape' and 'output.shape' must be [null, d1, ...] with positive dims"
        )
    dtype = signature.get("dtype")
    if not isinstance(dtype, str) or not _known_dtype(dtype):
        raise ArtifactError(f"{source}: header field 'input.dtype' is not a dtype name: {dtype!r}")
    class_names = field("class_names", list)
    platforms = field("platforms", list)
    return ArtifactMeta(
        task=field("task", str),
        model=field("model", str),
        version=field("version", int),
        class_names=tuple(str(c) for c in class_names),
        input_shape=tuple(shape[1:]),
        input_dtype=dtype,
        output_shape=tuple(out_shape[1:]),
        platforms=tuple(str(p) for p in platforms),
        preprocessing=header.get("preprocessing") or {},
        output_names=tuple(str(n) for n in output.get("names") or ()),
        metrics=header.get("metrics") or {},
        run=header.get("run") or {},
        created=str(header.get("created", "")),
        hierfl_version=str(header.get("hierfl_version", "")),
        jax_version=str(header.get("jax_version", "")),
    )


def _is_batched_shape(shape: Any) -> bool:
    return (
        isinstance(shape, list)
        and len(shape) >= 2
        and shape[0] is None
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape[1:])
    )


def _known_dtype(name: str) -> bool:
    try:
        _dtype(name)
    except TypeError:
        return False
    return True


def _dtype(name: str) -> np.dtype:
    """A numpy dtype by name, including ml_dtypes' (bfloat16) that numpy alone does not know."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        if hasattr(ml_dtypes, name):
            return np.dtype(getattr(ml_dtypes, name))
        raise


def _param_spec(spec: Any, index: int, source: str) -> tuple[str, tuple[int, ...], np.dtype]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ArtifactError(f"{source}: header 'params[{index}]' must be a map with a 'name'")
    shape, dtype = spec.get("shape"), spec.get("dtype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ArtifactError(f"{source}: parameter {spec['name']!r} has a bad shape {shape!r}")
    if not isinstance(dtype, str) or not _known_dtype(dtype):
        raise ArtifactError(f"{source}: parameter {spec['name']!r} has an unknown dtype {dtype!r}")
    return spec["name"], tuple(shape), _dtype(dtype)


def _section(body: memoryview, span: Any, what: str, source: str) -> memoryview:
    if not isinstance(span, dict):
        raise ArtifactError(f"{source}: header lacks the location of {what}")
    offset, nbytes = span.get("offset"), span.get("nbytes")
    if not (
        isinstance(offset, int)
        and isinstance(nbytes, int)
        and 0 <= offset
        and 0 <= nbytes
        and offset + nbytes <= len(body)
    ):
        raise ArtifactError(
            f"{source}: {what} lies outside the file (offset {offset!r}, {nbytes!r} bytes, body of {len(body)} bytes)"
        )
    return body[offset : offset + nbytes]


def _header_length(view: memoryview) -> int:
    return _PREAMBLE.unpack_from(view)[2]
