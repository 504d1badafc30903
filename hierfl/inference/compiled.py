"""An artifact made ready to answer: its function compiled for a few batch sizes, its weights on device.

`compile_artifact` deserializes the exported function, places the parameters on JAX's
default device (the GPU when there is one, else the CPU) and compiles and runs the
function once for every bucket size, so the first real request pays no compilation.
Batches are padded up to the next bucket: a handful of executables serve any batch size.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

from hierfl.errors import ArtifactError
from hierfl.inference.artifact import Artifact, ArtifactMeta
from hierfl.inference.batching import bucket_for, bucket_sizes, pad_rows


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledModel:
    """A loaded model version: `predict(x) -> logits` for `[n, *meta.input_shape]` inputs, any n >= 1.

    `checksum` identifies the artifact it came from; `function_digest` identifies the
    exported function alone (equal across versions of one architecture), so a new
    version can reuse this one's compiled executables.
    """

    meta: ArtifactMeta
    checksum: str
    function_digest: str
    buckets: tuple[int, ...]
    platform: str
    call: Callable[[Any, Any], jax.Array]
    params: tuple[jax.Array, ...]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits `[n, *meta.output_shape]` as numpy; `x` is padded to a bucket (split if above the largest)."""
        largest = self.buckets[-1]
        if len(x) > largest:
            return np.concatenate(
                [self.predict(x[i : i + largest]) for i in range(0, len(x), largest)]
            )
        bucket = bucket_for(len(x), self.buckets)
        return np.asarray(self.call(list(self.params), pad_rows(x, bucket)))[: len(x)]


def compile_artifact(
    artifact: Artifact,
    *,
    checksum: str = "",
    max_batch: int = 32,
    reuse: CompiledModel | None = None,
) -> CompiledModel:
    """Compiles and warms up `artifact` for every bucket up to `max_batch` on JAX's default device.

    That is the first GPU when JAX sees one, else the CPU. If `reuse` holds the same
    exported function, its jitted callable (and so its compiled executables) is shared.
    Raises `ArtifactError` if the artifact was not exported for this machine's platform
    or its function cannot be deserialized.
    """
    device = jax.devices()[0]
    platform = jax_export.default_export_platform()
    meta = artifact.meta
    if platform not in meta.platforms:
        raise ArtifactError(
            f"model {meta.model!r} version {meta.version} was exported for {', '.join(meta.platforms)}, "
            f"not for this machine's {platform}; export it again with platforms including {platform!r}"
        )
    digest = hashlib.sha256(artifact.function).hexdigest()
    if reuse is not None and reuse.function_digest == digest and reuse.platform == platform:
        call = reuse.call
    else:
        call = jax.jit(_deserialize(artifact).call)
    params = tuple(jax.device_put(np.asarray(a), device) for a in artifact.params.values())
    buckets = bucket_sizes(max_batch)
    model = CompiledModel(meta, checksum, digest, buckets, platform, call, params)
    warm_up(model)
    return model


def warm_up(model: CompiledModel) -> None:
    """Runs every bucket once on zeros: compiles what is not compiled yet and checks the output shape."""
    for bucket in model.buckets:
        x = np.zeros((bucket, *model.meta.input_shape), model.meta.input_dtype)
        out = model.predict(x)
        if out.shape != (bucket, *model.meta.output_shape):
            raise ArtifactError(
                f"model {model.meta.model!r} version {model.meta.version}: function returns {out.shape}, "
                f"header says {(bucket, *model.meta.output_shape)}"
            )


def _deserialize(artifact: Artifact) -> jax_export.Exported:
    meta = artifact.meta
    try:
        exported = jax_export.deserialize(bytearray(artifact.function))
    except ImportError as err:
        raise ArtifactError(f"cannot read exported functions: {err}") from None
    except Exception as err:  # jax raises struct/value/flatbuffer errors for bad or too-new data
        raise ArtifactError(
            f"model {meta.model!r} version {meta.version}: cannot deserialize the exported function "
            f"({type(err).__name__}: {err}); was it exported with a newer jax than {jax.__version__}?"
        ) from err
    avals = exported.in_avals
    if len(avals) != len(artifact.params) + 1 or tuple(avals[-1].shape[1:]) != meta.input_shape:
        raise ArtifactError(
            f"model {meta.model!r} version {meta.version}: exported function takes "
            f"{[str(a) for a in exported.in_avals]}, which does not match {len(artifact.params)} parameters "
            f"and input [batch, {', '.join(map(str, meta.input_shape))}]"
        )
    return exported


def describe_platform() -> str:
    """Where `compile_artifact` puts a model: 'cpu', or e.g. 'cuda (NVIDIA H100 80GB HBM3)'."""
    platform = jax_export.default_export_platform()
    kind = getattr(jax.devices()[0], "device_kind", "")
    return f"{platform} ({kind})" if platform != "cpu" and kind else platform
