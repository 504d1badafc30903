"""Flax NNX models used by the tasks, and `Model`: one model as pure functions over params.

Training code never holds `nnx.Module` objects: a `Model` splits the module once into a
graph definition and a parameter pytree (a nested dict of arrays), and `Model.apply`
merges them back inside traced code. Params are plain nested dicts so that the simulator,
the wire format and checkpoints all see the same pytree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Params = dict[str, Any]


class MLP(nnx.Module):
    """Flattens the input, then Dense-ReLU layers of the given widths, then a Dense head."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], num_classes: int, *, rngs: nnx.Rngs
    ):
        widths = [in_features, *hidden]
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.head(x)


class PatchConv(nnx.Module):
    """A VALID convolution over the leading spatial axes of `[B, *spatial, C]`, as one matmul.

    Patches are gathered with static strided slices and contracted with a `[K, C_out]`
    kernel. On XLA:CPU this is about 30x faster than `nnx.Conv` for the few channels of
    our models, and under `vmap` over per-device weights it becomes a batched matmul
    instead of a grouped convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Sequence[int],
        strides: Sequence[int],
        *,
        rngs: nnx.Rngs,
    ):
        self.kernel_size, self.strides = tuple(kernel), tuple(strides)
        fan_in = in_channels
        for k in self.kernel_size:
            fan_in *= k
        self.kernel = nnx.Param(
            nnx.initializers.lecun_normal()(rngs.params(), (fan_in, out_channels))
        )
        self.bias = nnx.Param(jnp.zeros((out_channels,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        patches = [x]
        for axis, (k, stride) in enumerate(zip(self.kernel_size, self.strides), start=1):
            out = (x.shape[axis] - k) // stride + 1
            span = stride * (out - 1) + 1
            patches = [
                jax.lax.slice_in_dim(p, i, i + span, stride=stride, axis=axis)
                for p in patches
                for i in range(k)
            ]
        return jnp.concatenate(patches, axis=-1) @ self.kernel[...] + self.bias[...]


class CNN2D(nnx.Module):
    """A small image CNN for [B, H, W, C] inputs: two 3x3 convs, two Dense layers."""

    def __init__(
        self, in_channels: int, image_hw: tuple[int, int], num_classes: int, *, rngs: nnx.Rngs
    ):
        self.conv1 = PatchConv(in_channels, 16, (3, 3), (1, 1), rngs=rngs)
        self.conv2 = PatchConv(16, 32, (3, 3), (1, 1), rngs=rngs)
        features = (image_hw[0] - 4) * (image_hw[1] - 4) * 32
        self.dense = nnx.Linear(features, 64, rngs=rngs)
        self.head = nnx.Linear(64, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = x.reshape(x.shape[0], -1)
        return self.head(jax.nn.relu(self.dense(x)))


class SurfaceCNN(nnx.Module):
    """A small CNN for surface-defect patches `[B, H, W, 1]` that is cheap on a CPU.

    Each image is first centred on its own mean gray level (the strip's brightness carries
    no class information) and multiplied by `contrast`, so a defect's typical gray-level
    deviation of about 0.1 enters at unit scale. A 3x3 convolution keeps full resolution
    for fine defects (pits, cracks), strided 3x3 convolutions widen the view, and the mean
    and max of the last feature maps over space feed a linear classifier: defects may lie
    anywhere, and the max keeps a small one from being averaged away. With the default
    channels, 6,343 parameters.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        channels: Sequence[int] = (8, 16, 32),
        contrast: float = 10.0,
        rngs: nnx.Rngs,
    ):
        self.contrast = contrast
        widths = [1, *channels]
        strides = [(1, 1)] + [(2, 2)] * (len(channels) - 1)
        self.convs = nnx.List(
            [
                PatchConv(a, b, (3, 3), s, rngs=rngs)
                for a, b, s in zip(widths[:-1], widths[1:], strides)
            ]
        )
        self.head = nnx.Linear(2 * widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.contrast * (x - x.mean(axis=(1, 2, 3), keepdims=True))
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1))


class EnvelopeCNN(nnx.Module):
    """A 1D CNN on the demodulated envelope of a vibration window `[B, L, 1]`.

    The front end is envelope analysis, the standard first step of bearing diagnostics:
    remove the mean, rectify, and average `decimation` samples (a low-pass and
    decimation), so impacts ringing a kHz resonance become pulses at the fault rate;
    the envelope is divided by its mean so the network sees its shape, not the machine's
    level. Strided convolutions then find the pulse pattern, and the mean and max over
    time feed the classifier. It has no parameters of its own, so it is exported with the
    model and the serving box needs no preprocessing code.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        decimation: int = 8,
        channels: Sequence[int] = (16, 32, 32, 32),
        rngs: nnx.Rngs,
    ):
        self.decimation = decimation
        widths = [1, *channels]
        self.convs = nnx.List(
            [PatchConv(a, b, (7,), (2,), rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.head = nnx.Linear(2 * widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.body(self.front_end(x))

    def front_end(self, x: jax.Array) -> jax.Array:
        """The normalized envelope `[B, L / decimation, 1]` of windows `[B, L, 1]`: no
        parameters, each example on its own, so the engines compute it once per example
        (`Model.features`) instead of at every training step."""
        batch, length, _ = x.shape
        rectified = jnp.abs(x - x.mean(axis=1, keepdims=True))
        usable = length // self.decimation * self.decimation
        envelope = (
            rectified[:, :usable]
            .reshape(batch, usable // self.decimation, self.decimation, -1)
            .mean(axis=2)
        )
        return envelope / (envelope.mean(axis=1, keepdims=True) + 1e-3) - 1.0

    def body(self, z: jax.Array) -> jax.Array:
        """Logits `[B, classes]` from the front end's envelopes `z`."""
        for conv in self.convs:
            z = jax.nn.relu(conv(z))
        return self.head(jnp.concatenate([z.mean(axis=1), z.max(axis=1)], axis=-1))


FEATURE_BATCH = 1024
"""Examples put through a model's front end at once (`Model.features`): bounds its memory."""


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as data: `apply(params, x) -> logits` over a plain nested-dict params pytree.

    A module with a parameter-free front end (methods `front_end(x)` and `body(z)`, with
    `module(x) == module.body(module.front_end(x))`, each example on its own) lets the
    engines run the front end once per example: devices train `apply_features(params,
    features(x))`, which is `apply(params, x)` without recomputing `features` at every step.
    Exported and served models are `apply`, front end included.
    """

    name: str
    graphdef: Any
    state_treedef: Any
    front_end: Callable[[jax.Array], jax.Array] | None = None

    def module(self, params: Params) -> nnx.Module:
        state = jax.tree.unflatten(self.state_treedef, jax.tree.leaves(params))
        return nnx.merge(self.graphdef, state)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        return self.module(params)(x)

    def apply_features(self, params: Params, z: jax.Array) -> jax.Array:
        """Logits from examples already through `features` (`apply` without the front end)."""
        module = self.module(params)
        return module(z) if self.front_end is None else module.body(z)

    def features(self, x: np.ndarray, batch: int = FEATURE_BATCH) -> np.ndarray:
        """`x` `[N, ...]` through the front end (`x` itself without one), `batch` examples at
        a time, as float32 numpy."""
        if self.front_end is None:
            return x
        parts = [np.asarray(self.front_end(x[i : i + batch])) for i in range(0, len(x), batch)]
        return np.concatenate(parts) if parts else np.asarray(self.front_end(x))


def build_model(
    name: str, make: Callable[[nnx.Rngs], nnx.Module], key: jax.Array
) -> tuple[Model, Params]:
    """Builds the module with `key`, returns the pure `Model` and its initial params."""
    return model_of(name, make(nnx.Rngs(params=key)))


def model_shapes(name: str, make: Callable[[nnx.Rngs], nnx.Module]) -> tuple[Model, Params]:
    """The pure `Model` and its params' shapes (`jax.ShapeDtypeStruct`s), traced without
    initializing anything: what a node that receives its parameters needs."""
    return model_of(name, nnx.eval_shape(lambda: make(nnx.Rngs(params=jax.random.key(0)))))


def model_of(name: str, module: nnx.Module) -> tuple[Model, Params]:
    """The pure `Model` of a built (or abstract) module, and its params."""
    graphdef, state = nnx.split(module)
    params = nnx.to_pure_dict(state)
    state_paths = [path[:-1] for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    param_paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if state_paths != param_paths:  # flax changed how State flattens: fail loudly, not wrongly
        raise RuntimeError(f"model {name!r}: state and params flatten in different orders")
    return Model(name, graphdef, jax.tree.structure(state), front_end_of(module)), params


def front_end_of(module: nnx.Module) -> Callable[[jax.Array], jax.Array] | None:
    """The module's parameter-free front end, jitted, if it has one (`front_end` and `body`)."""
    front_end = getattr(module, "front_end", None)
    if front_end is None or not hasattr(module, "body"):
        return None
    return jax.jit(front_end)


class ScaledOutput(nnx.Module):
    """`scale * inner(x)`: a regression model whose outputs are in the target's unit.

    The inner network works at unit scale (its head starts near 0 and learns values near
    1), while what it outputs, and what an exported model serves, is in hours, kW...
    """

    def __init__(self, inner: nnx.Module, scale: float):
        self.inner = inner
        self.scale = scale

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.scale * self.inner(x)

    @property
    def front_end(self) -> Callable[[jax.Array], jax.Array] | None:
        """The inner network's parameter-free front end, if it has one (`Model.features`)."""
        return getattr(self.inner, "front_end", None)

    def body(self, z: jax.Array) -> jax.Array:
        return self.scale * self.inner.body(z)


class SeriesCNN(nnx.Module):
    """A 1D CNN over a time series `[B, L, 1]`: strided convolutions, mean and max over time.

    For signatures whose shape matters more than their level (appliance power curves):
    each series is standardised first (zero mean, unit spread), inside the model, so the
    exported model takes raw series.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        channels: Sequence[int] = (16, 32, 32, 32),
        kernel: int = 7,
        rngs: nnx.Rngs,
    ):
        widths = [1, *channels]
        self.convs = nnx.List(
            [PatchConv(a, b, (kernel,), (2,), rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.head = nnx.Linear(2 * widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-3)
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(jnp.concatenate([x.mean(axis=1), x.max(axis=1)], axis=-1))
