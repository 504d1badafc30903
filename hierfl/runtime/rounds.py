"""One node's share of a cloud round, as pure jitted functions over flat buffers.

The simulator runs these steps for the whole tree inside one jitted call
(`hierfl.simulator.make_cloud_round`); the runtime runs each in the process of the
node that owns it, with the same keys (`hierfl.rng`), the same algorithm functions and
the same codecs, so both produce the same global model:

    device_step   local training from the edge's model, screening, encoding for the uplink
    edge_step     the edge's model after one edge round: apply the mean of the decoded updates
    edge_upload   the edge's summary for the cloud, encoded for the uplink
    cloud_step    aggregate the decoded summaries and apply the server optimizer

Stacks have a fixed number of rows (the plant's devices, the federation's edges) so each
function compiles once; rows of peers that did not answer have weight 0 and zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hierfl import aggregation, rng
from hierfl.algorithms import Algorithm, DeviceData, LocalResult, Summary, apply_summary, edge_result, screen_nonfinite
from hierfl.kernels import Codec, FlatSpec, ravel, unravel
from hierfl.tasks.models import Params
from hierfl.privacy import dp
from hierfl.topology import Privacy, TierRule


ALIGNMENT = 64


def aligned_zeros(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A zeroed numpy array whose data is 64-byte aligned.

    XLA on CPU reads such a buffer in place; a less aligned one (numpy only promises 16
    bytes) is copied on every call, which made an edge's aggregation of 4 MB updates
    several times slower than receiving them.
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


class DeviceOutput(NamedTuple):
    """What a device sends for one edge round: the encoded delta, its weight and loss; and its new residual."""

    payload: tuple[jax.Array, ...]
    weight: jax.Array
    loss: jax.Array
    residual: jax.Array
    ok: jax.Array


def encode_for_link(codec: Codec, result: LocalResult, residual: jax.Array, key: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """The sender's half of `hierfl.links.transmit`: the payload of `result.delta` and the next residual.

    A result of weight 0 leaves the residual untouched, as `transmit` does.
    """
    payload, new_residual = codec.encode(result.delta, residual, key)
    return payload, jnp.where(result.weight > 0, new_residual, residual)


def make_device_step(
    algorithm: Algorithm, spec: FlatSpec, codec: Codec, seed: int, privacy: Privacy | None = None
) -> Callable[..., DeviceOutput]:
    """`device_step(edge_flat, data, residual, cloud_round, edge_round, device_index) -> DeviceOutput`, jitted.

    With local differential privacy (`privacy.dp == "device"`), the device releases its
    update through `hierfl.privacy.device_release` (sampling, one vote, clip, noise) before
    encoding it, with the simulator's keys.
    """

    def device_step(edge_flat, data: DeviceData, residual, cloud_round, edge_round, device_index):
        key = rng.device_key(seed, cloud_round, edge_round, device_index)
        result = algorithm.local_update(unravel(spec, edge_flat), data, key)
        result, ok = screen_nonfinite(result._replace(delta=ravel(spec, result.delta)))
        if privacy is not None:
            delta, weight, _ = dp.device_release(
                result.delta, result.weight,
                rng.sampling_key(seed, cloud_round, edge_round, device_index),
                rng.privacy_key(seed, cloud_round, edge_round, device_index),
                jnp.float32(privacy.clip_norm), jnp.float32(privacy.noise_multiplier * privacy.clip_norm), privacy.sample_rate,
            )
            result = result._replace(delta=delta, weight=weight)
        upload_key = rng.device_upload_key(seed, cloud_round, edge_round, device_index)
        payload, residual = encode_for_link(codec, result, residual, upload_key)
        return DeviceOutput(payload, result.weight, result.loss, residual, ok)

    return jax.jit(device_step)


def make_decode(codec: Codec) -> Callable[[tuple[jax.Array, ...]], jax.Array]:
    """The receiver's half of a link: payload frames -> float32 delta `[P]`, jitted."""
    return jax.jit(lambda payload: codec.decode(tuple(payload)))


def make_edge_step(rule: TierRule) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """`edge_step(edge_flat [P], deltas [K, P], weights [K]) -> edge_flat`, jitted: one edge round's aggregation.

    The plant's rule (`topology.edge_rule(plant)`: the weighted mean, or a robust rule,
    with optional clipping) combines the decoded updates, as the simulator's edges do.
    """

    def edge_step(edge_flat, deltas, weights):
        return apply_summary(edge_flat, aggregation.reduce(rule, deltas, weights))

    return jax.jit(edge_step)


def make_edge_upload(codec: Codec, seed: int) -> Callable[..., tuple[tuple[jax.Array, ...], jax.Array]]:
    """`edge_upload(edge_flat, global_flat, weight, residual, cloud_round, edge_index) -> (payload, residual)`, jitted."""

    def edge_upload(edge_flat, global_flat, weight, residual, cloud_round, edge_index):
        result = edge_result(edge_flat, global_flat, weight)
        return encode_for_link(codec, result, residual, rng.edge_upload_key(seed, cloud_round, edge_index))

    return jax.jit(edge_upload)


def make_cloud_step(algorithm: Algorithm, spec: FlatSpec, rule: TierRule) -> Callable[[Params, Any, jax.Array, jax.Array], tuple[Params, Any]]:
    """`cloud_step(params, server_state, deltas [E, P], weights [E]) -> (params, server_state)`, jitted.

    The cloud's rule (`[aggregation.cloud]`) combines the decoded summaries; the
    algorithm's server optimizer (FedOpt) applies the result.
    """

    def cloud_step(params, server_state, deltas, weights):
        total = aggregation.reduce(rule, deltas, weights)
        return algorithm.server_update(params, server_state, Summary(unravel(spec, total.delta_sum), total.weight))

    return jax.jit(cloud_step)
