"""One node's share of a cloud round, as pure jitted functions over flat buffers.

The simulator runs these steps for the whole tree inside one jitted call
(`hierfl.sim.engine.make_cloud_round`); the runtime runs each in the process of the
node that owns it, with the same keys (`hierfl.core.rng`), the same algorithm functions and
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

from hierfl.core import rng, rules
from hierfl.core.algorithms import (
    Algorithm,
    DeviceData,
    LocalResult,
    Summary,
    apply_summary,
    edge_result,
    screen_nonfinite,
)
from hierfl.core.algorithms.fedavg import Params
from hierfl.core.attack import apply_attack
from hierfl.kernels import Codec, FlatSpec, ravel, unravel
from hierfl.privacy import dp
from hierfl.privacy.config import DpConfig
from hierfl.topology import Attack, TierRule

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
    """What a device sends for one edge round: the encoded delta, its weight and loss; and its new residual.

    `unclipped` (under DP) says whether the device took part with an update inside the
    clip norm: a trusted aggregator counts those for adaptive clipping. `variate_change`
    (SCAFFOLD) is the change of the device's control variate, None otherwise.
    """

    payload: tuple[jax.Array, ...]
    weight: jax.Array
    loss: jax.Array
    residual: jax.Array
    ok: jax.Array
    unclipped: jax.Array
    variate_change: jax.Array | None = None


def encode_for_link(
    codec: Codec, result: LocalResult, residual: jax.Array, key: jax.Array
) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """The sender's half of `hierfl.core.links.transmit`: the payload of `result.delta` and the next residual.

    A result of weight 0 leaves the residual untouched, as `transmit` does.
    """
    payload, new_residual = codec.encode(result.delta, residual, key)
    return payload, jnp.where(result.weight > 0, new_residual, residual)


def make_device_step(
    algorithm: Algorithm,
    spec: FlatSpec,
    codec: Codec,
    seed: int,
    dp_config: DpConfig | None = None,
    attack: Attack = Attack(),
    attackers: np.ndarray | None = None,
) -> Callable[..., DeviceOutput]:
    """`device_step(edge_flat, data, residual, cloud_round, edge_round, device_index, clip_norm, variate=None,
    cloud_variate=None) -> DeviceOutput`, jitted.

    Under differential privacy the device releases its update through
    `hierfl.privacy.device_release` (sampling, one vote, clipping to `clip_norm`) before
    encoding it, with the simulator's keys; it adds the noise itself only under local DP
    (`dp = "device"`): a trusted edge or cloud noises the sum instead (`make_edge_step`,
    `make_cloud_step`).

    Under a simulated `attack`, devices marked in `attackers` (`hierfl.core.attack.attacker_mask`,
    indexed by device index) send what a faulty device sends, as in the simulator: a
    red-team run of a deployment's robust rules.

    With control variates (SCAFFOLD) the device corrects its gradients by
    `cloud_variate - variate` (the cloud's `c` and its own `c_i`, flat) and returns the
    change of `c_i`, zero when it has no update (`hierfl.core.algorithms.scaffold`).
    """
    marked = jnp.asarray(attackers if attackers is not None else np.zeros(0, bool))

    def device_step(
        edge_flat,
        data: DeviceData,
        residual,
        cloud_round,
        edge_round,
        device_index,
        clip_norm,
        variate=None,
        cloud_variate=None,
    ):
        key = rng.device_key(seed, cloud_round, edge_round, device_index)
        if algorithm.control_variates:
            result = algorithm.local_update(
                unravel(spec, edge_flat), data, key, unravel(spec, cloud_variate - variate)
            )
        else:
            result = algorithm.local_update(unravel(spec, edge_flat), data, key)
        delta = ravel(spec, result.delta)
        if attack.kind != "none":
            attack_key = rng.attack_key(seed, cloud_round, edge_round, device_index)
            delta = apply_attack(attack, delta[None], marked[device_index][None], attack_key[None])[
                0
            ]
        result, ok = screen_nonfinite(result._replace(delta=delta))
        unclipped = jnp.bool_(False)
        if dp_config is not None:
            noise_std = (
                dp_config.noise_multiplier * clip_norm
                if dp_config.place == "device"
                else jnp.float32(0)
            )
            delta, weight, unclipped = dp.device_release(
                result.delta,
                result.weight,
                dp_config.key(rng.sampling_key(seed, cloud_round, edge_round, device_index)),
                dp_config.key(rng.privacy_key(seed, cloud_round, edge_round, device_index)),
                clip_norm,
                noise_std,
                dp_config.sample_rate,
            )
            result = result._replace(delta=delta, weight=weight)
        change = None
        if algorithm.control_variates:
            change = jnp.where(
                result.weight > 0,
                algorithm.variate_delta(result.delta, data.steps, cloud_variate),
                0.0,
            )
        upload_key = rng.device_upload_key(seed, cloud_round, edge_round, device_index)
        payload, residual = encode_for_link(codec, result, residual, upload_key)
        return DeviceOutput(payload, result.weight, result.loss, residual, ok, unclipped, change)

    return jax.jit(device_step)


def make_decode(codec: Codec) -> Callable[[tuple[jax.Array, ...]], jax.Array]:
    """The receiver's half of a link: payload frames -> float32 delta `[P]`, jitted."""
    return jax.jit(lambda payload: codec.decode(tuple(payload)))


class EdgeOutcome(NamedTuple):
    """An edge round's outcome: the edge's new model, the weight it counts, and (adaptive clipping) its noised count."""

    edge_flat: jax.Array
    weight: jax.Array
    unclipped: jax.Array


def central_release(
    dp_config: DpConfig | None,
    seed: int,
    summary: Summary,
    count: jax.Array,
    devices: int,
    cloud_round,
    edge_round,
    edge_index,
    clip_norm,
) -> tuple[Summary, jax.Array]:
    """An edge round's sum as the edge releases it under central DP (unchanged otherwise).

    The edge divides by the *expected* number of devices (`sample_rate * devices`), not
    the actual, private one; a trusted edge (`dp = "edge"`) adds N(0, (z C)^2) to the sum
    with the simulator's key (`rng.sum_noise_key`) and, with adaptive clipping, noise to
    its `count` of unclipped updates (`rng.count_noise_key`).
    """
    if dp_config is None or not dp_config.central:
        return summary, count
    if dp_config.place == "edge":
        key = dp_config.key(rng.sum_noise_key(seed, cloud_round, edge_round, edge_index))
        summary = summary._replace(
            delta_sum=dp.privatize_sum(
                summary.delta_sum, key, dp_config.noise_multiplier * clip_norm
            )
        )
    if dp_config.adaptive:
        key = dp_config.key(rng.count_noise_key(seed, cloud_round, edge_round, edge_index))
        count = count + dp_config.quantile_noise * jax.random.normal(key)
    return summary._replace(weight=jnp.float32(dp_config.sample_rate * devices)), count


def make_edge_step(
    rule: TierRule, dp_config: DpConfig | None = None, seed: int = 0
) -> Callable[..., EdgeOutcome]:
    """`edge_step(edge_flat [P], deltas [K, P], weights [K], unclipped [K], cloud_round, edge_round, edge_index, clip_norm)`, jitted.

    One edge round's aggregation: the plant's rule (`topology.edge_rule(plant)`: the
    weighted mean, or a robust rule, with optional clipping) combines the decoded
    updates of its K devices, as the simulator's edges do, and `central_release` applies
    central DP. Rows of devices that did not answer are zeros.
    """

    def edge_step(
        edge_flat, deltas, weights, unclipped, cloud_round, edge_round, edge_index, clip_norm
    ):
        summary = rules.reduce(rule, deltas, weights)
        count = jnp.sum(unclipped.astype(jnp.float32))
        summary, count = central_release(
            dp_config,
            seed,
            summary,
            count,
            deltas.shape[0],
            cloud_round,
            edge_round,
            edge_index,
            clip_norm,
        )
        return EdgeOutcome(apply_summary(edge_flat, summary), summary.weight, count)

    return jax.jit(edge_step)


def make_edge_sum_step(
    dp_config: DpConfig | None, seed: int, devices: int
) -> Callable[..., EdgeOutcome]:
    """`sum_step(edge_flat [P], delta_sum [P], weight, cloud_round, edge_round, edge_index, clip_norm)`, jitted.

    A mean-rule edge round from the sum of its `devices` devices' weighted updates alone:
    what an edge has under secure aggregation. Central DP applies as in `make_edge_step`
    (without adaptive clipping, whose count needs each device's flag).
    """

    def sum_step(edge_flat, delta_sum, weight, cloud_round, edge_round, edge_index, clip_norm):
        summary, count = central_release(
            dp_config,
            seed,
            Summary(delta_sum, weight),
            jnp.float32(0),
            devices,
            cloud_round,
            edge_round,
            edge_index,
            clip_norm,
        )
        return EdgeOutcome(apply_summary(edge_flat, summary), summary.weight, count)

    return jax.jit(sum_step)


def make_edge_upload(
    codec: Codec, seed: int
) -> Callable[..., tuple[tuple[jax.Array, ...], jax.Array]]:
    """`edge_upload(edge_flat, global_flat, weight, residual, cloud_round, edge_index) -> (payload, residual)`, jitted."""

    def edge_upload(edge_flat, global_flat, weight, residual, cloud_round, edge_index):
        result = edge_result(edge_flat, global_flat, weight)
        return encode_for_link(
            codec, result, residual, rng.edge_upload_key(seed, cloud_round, edge_index)
        )

    return jax.jit(edge_upload)


def make_cloud_step(
    algorithm: Algorithm,
    spec: FlatSpec,
    rule: TierRule,
    dp_config: DpConfig | None = None,
    seed: int = 0,
    num_edges: int = 0,
) -> Callable[..., tuple[Params, Any]]:
    """`cloud_step(params, server_state, deltas [E', P], weights [E'], cloud_round, clip_norm) -> (params, server_state)`, jitted.

    The cloud's rule (`[aggregation.cloud]`) combines the decoded summaries; a trusted
    cloud (`dp = "cloud"`) adds N(0, (z C)^2) to their sum with the simulator's key
    (`rng.sum_noise_key(seed, round, 0, num_edges)`); the algorithm's server optimizer
    (FedOpt) applies the result.
    """

    def cloud_step(params, server_state, deltas, weights, cloud_round, clip_norm):
        total = rules.reduce(rule, deltas, weights)
        if dp_config is not None and dp_config.place == "cloud":
            key = dp_config.key(rng.sum_noise_key(seed, cloud_round, 0, num_edges))
            total = total._replace(
                delta_sum=dp.privatize_sum(
                    total.delta_sum, key, dp_config.noise_multiplier * clip_norm
                )
            )
        return algorithm.server_update(
            params, server_state, Summary(unravel(spec, total.delta_sum), total.weight)
        )

    return jax.jit(cloud_step)
