"""The steps of a cloud round, written once: pure functions over flat buffers.

Both engines call exactly these. The runtime jits each in the process of the node that owns
it; the simulator (`hierfl.sim.round`) vmaps the device and edge steps over its device and
edge axes and scans them inside one jitted cloud round. Keys come from `hierfl.core.rng`
by position, so both produce the same global model for the same seed:

    device_step    local training from the edge's model, attack (red-team runs), screening,
                   DP release, SCAFFOLD's variate change, encoding for the uplink
    edge_step      an edge round: the plant's rule over its devices' decoded updates, then
                   `edge_release`
    edge_release   central DP on the edge's sum, and the edge's new model
    edge_upload    the edge's summary for the cloud (its change since the global model),
                   encoded for the uplink
    cloud_step     the cloud's rule over the decoded summaries, the cloud's DP noise, the
                   server optimizer
    next_clip_norm, next_cloud_variate
                   the cloud's bookkeeping after a round (adaptive clipping, SCAFFOLD)

Each `make_*` binds a step's configuration and returns the pure function; stacks have a
fixed number of rows (a plant's devices, the federation's edges) so a jitted step compiles
once; rows of peers that did not answer have weight 0 and zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.core import personal, rng, rules
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
    """What a device sends for one edge round, and its new residual.

    `payload` is the encoded delta; `ok` says whether the update was finite (kept);
    `unclipped` (under DP) whether the device took part with an update inside the clip
    norm, which a trusted aggregator counts for adaptive clipping; `variate_change`
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
    """The payload of `result.delta` and the sender's next residual.

    A result of weight 0 (nothing to send) leaves the residual untouched: its error must
    not enter the memory.
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
    """`device_step(edge_flat, data, residual, cloud_round, edge_round, device_index,
    clip_norm, variate=None, cloud_variate=None) -> DeviceOutput`.

    Under differential privacy the device releases its update through
    `hierfl.privacy.dp.device_release` (sampling, one vote, clipping to `clip_norm`)
    before encoding it; it adds the noise itself only under local DP (`dp = "device"`): a
    trusted edge or cloud noises the sum instead (`edge_release`, `make_cloud_step`).

    Under a simulated `attack`, devices marked in `attackers` (`hierfl.core.attack.
    attacker_mask`, by device index; an index past its end is honest) send what a faulty
    device sends: a red-team run of a deployment's robust rules.

    With control variates (SCAFFOLD) the device corrects its gradients by
    `cloud_variate - variate` (the cloud's `c` and its own `c_i`, flat) and returns the
    change of `c_i`, zero when it has no update (`hierfl.core.algorithms.scaffold`).
    """
    marked = np.zeros(0, bool) if attackers is None else np.asarray(attackers, bool)

    def is_attacker(device_index):
        if marked.size == 0:
            return jnp.bool_(False)
        inside = device_index < marked.size
        return inside & jnp.asarray(marked)[jnp.minimum(device_index, marked.size - 1)]

    def train(edge_flat, data, key, variate, cloud_variate) -> LocalResult:
        params = unravel(spec, edge_flat)
        if algorithm.control_variates:
            correction = unravel(spec, cloud_variate - variate)
            return algorithm.local_update(params, data, key, correction)
        return algorithm.local_update(params, data, key)

    def release(result: LocalResult, cloud_round, edge_round, device_index, clip_norm):
        """DP on the device's side: participation, one vote, clipping, local noise."""
        if dp_config is None:
            return result, jnp.bool_(False)
        local = dp_config.place == "device"
        noise_std = dp_config.noise_multiplier * clip_norm if local else jnp.float32(0)
        delta, weight, unclipped = dp.device_release(
            result.delta,
            result.weight,
            dp_config.key(rng.sampling_key(seed, cloud_round, edge_round, device_index)),
            dp_config.key(rng.privacy_key(seed, cloud_round, edge_round, device_index)),
            clip_norm,
            noise_std,
            dp_config.sample_rate,
        )
        return result._replace(delta=delta, weight=weight), unclipped

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
    ) -> DeviceOutput:
        key = rng.device_key(seed, cloud_round, edge_round, device_index)
        result = train(edge_flat, data, key, variate, cloud_variate)
        delta = ravel(spec, result.delta)
        if attack.kind != "none":
            attack_key = rng.attack_key(seed, cloud_round, edge_round, device_index)
            marked_here = is_attacker(device_index)[None]
            delta = apply_attack(attack, delta[None], marked_here, attack_key[None])[0]
        result, ok = screen_nonfinite(result._replace(delta=delta))
        result, unclipped = release(result, cloud_round, edge_round, device_index, clip_norm)
        change = None
        if algorithm.control_variates:
            moved = algorithm.variate_delta(result.delta, data.steps, cloud_variate)
            change = jnp.where(result.weight > 0, moved, 0.0)
        upload_key = rng.device_upload_key(seed, cloud_round, edge_round, device_index)
        payload, residual = encode_for_link(codec, result, residual, upload_key)
        return DeviceOutput(payload, result.weight, result.loss, residual, ok, unclipped, change)

    return device_step


def make_decode(codec: Codec) -> Callable[[tuple[jax.Array, ...]], jax.Array]:
    """The receiver's half of a link: payload frames -> float32 delta `[P]`."""
    return lambda payload: codec.decode(tuple(payload))


class EdgeOutcome(NamedTuple):
    """An edge round's outcome: the edge's new model, the weight it counts, and (adaptive
    clipping) its noised count of unclipped updates."""

    edge_flat: jax.Array
    weight: jax.Array
    unclipped: jax.Array


def make_edge_release(dp_config: DpConfig | None, seed: int) -> Callable[..., EdgeOutcome]:
    """`edge_release(edge_flat, summary, unclipped, devices, cloud_round, edge_round,
    edge_index, clip_norm) -> EdgeOutcome`: an edge round's sum as the edge releases it,
    applied to the edge's model.

    Without central DP the summary is applied as it is. Under central DP the edge divides
    by the *expected* number of devices (`sample_rate * devices`), not the actual, private
    one; a trusted edge (`dp = "edge"`) adds N(0, (z C)^2) to the sum
    (`rng.sum_noise_key`) and, with adaptive clipping, noise to its count of unclipped
    updates (`rng.count_noise_key`).

    An aggregate that is not finite (updates finite one by one whose weighted sum
    overflows float32) never replaces the model: the edge keeps its model and the round
    counts weight 0, as if nobody had answered.
    """

    def central(summary: Summary, count, devices, cloud_round, edge_round, edge_index, clip_norm):
        if dp_config.place == "edge":
            key = dp_config.key(rng.sum_noise_key(seed, cloud_round, edge_round, edge_index))
            noise_std = dp_config.noise_multiplier * clip_norm
            summary = summary._replace(
                delta_sum=dp.privatize_sum(summary.delta_sum, key, noise_std)
            )
        if dp_config.adaptive:
            key = dp_config.key(rng.count_noise_key(seed, cloud_round, edge_round, edge_index))
            count = count + dp_config.quantile_noise * jax.random.normal(key)
        expected = (dp_config.sample_rate * devices).astype(jnp.float32)
        return summary._replace(weight=expected), count

    def edge_release(
        edge_flat,
        summary: Summary,
        unclipped,
        devices,
        cloud_round,
        edge_round,
        edge_index,
        clip_norm,
    ) -> EdgeOutcome:
        count = jnp.asarray(unclipped, jnp.float32)
        if dp_config is not None and dp_config.central:
            args = (
                summary,
                count,
                jnp.asarray(devices),
                cloud_round,
                edge_round,
                edge_index,
                clip_norm,
            )
            summary, count = central(*args)
        new_flat = apply_summary(edge_flat, summary)
        ok = all_finite(new_flat) & jnp.isfinite(summary.weight)
        return EdgeOutcome(
            jnp.where(ok, new_flat, edge_flat),
            jnp.where(ok, summary.weight, 0.0),
            jnp.where(ok, count, 0.0),
        )

    return edge_release


def make_edge_step(
    rule: TierRule, dp_config: DpConfig | None = None, seed: int = 0
) -> Callable[..., EdgeOutcome]:
    """`edge_step(edge_flat [P], deltas [K, P], weights [K], unclipped [K], cloud_round,
    edge_round, edge_index, clip_norm) -> EdgeOutcome`.

    One edge round: the plant's rule (`topology.edge_rule(plant)`: the weighted mean, or a
    robust rule, with optional clipping) combines the decoded updates of its K devices
    (`rules.reduce`), then `edge_release`. Rows of devices that did not answer are zeros.
    """
    release = make_edge_release(dp_config, seed)

    def edge_step(
        edge_flat, deltas, weights, unclipped, cloud_round, edge_round, edge_index, clip_norm
    ):
        summary = rules.reduce(rule, deltas, weights)
        count = jnp.sum(unclipped.astype(jnp.float32))
        devices = deltas.shape[0]
        return release(
            edge_flat, summary, count, devices, cloud_round, edge_round, edge_index, clip_norm
        )

    return edge_step


def make_edge_sum_step(
    dp_config: DpConfig | None, seed: int, devices: int
) -> Callable[..., EdgeOutcome]:
    """`sum_step(edge_flat [P], delta_sum [P], weight, cloud_round, edge_round, edge_index,
    clip_norm) -> EdgeOutcome`.

    A mean-rule edge round from the sum of its `devices` devices' weighted updates alone:
    what an edge has under secure aggregation; then `edge_release` (no adaptive clipping,
    whose count needs each device's flag).
    """
    release = make_edge_release(dp_config, seed)

    def sum_step(edge_flat, delta_sum, weight, cloud_round, edge_round, edge_index, clip_norm):
        summary = Summary(delta_sum, weight)
        return release(
            edge_flat, summary, 0.0, devices, cloud_round, edge_round, edge_index, clip_norm
        )

    return sum_step


def make_edge_upload(
    codec: Codec, seed: int
) -> Callable[..., tuple[tuple[jax.Array, ...], jax.Array]]:
    """`edge_upload(edge_flat, global_flat, weight, residual, cloud_round, key_index) ->
    (payload, residual)`: the edge's change since `global_flat`, weighted by the examples
    it aggregated, encoded with the key of `key_index` (the edge's index; a stale summary
    uses one apart)."""

    def edge_upload(edge_flat, global_flat, weight, residual, cloud_round, key_index):
        result = edge_result(edge_flat, global_flat, weight)
        key = rng.edge_upload_key(seed, cloud_round, key_index)
        return encode_for_link(codec, result, residual, key)

    return edge_upload


def make_cloud_step(
    algorithm: Algorithm,
    spec: FlatSpec,
    rule: TierRule,
    dp_config: DpConfig | None = None,
    seed: int = 0,
    num_edges: int = 0,
    personal_mask: np.ndarray | None = None,
) -> Callable[..., tuple[Params, Any]]:
    """`cloud_step(params, server_state, deltas [E', P], weights [E'], cloud_round,
    clip_norm) -> (params, server_state)`.

    The cloud's rule (`[aggregation.cloud]`) combines the decoded summaries; a trusted
    cloud (`dp = "cloud"`) adds N(0, (z C)^2) to their sum with the key
    `rng.sum_noise_key(seed, round, 0, num_edges)`; the algorithm's server optimizer
    (FedOpt) applies the result. With per-plant layers (`personal_mask`, `hierfl.core.personal`)
    the summaries' personal part is zeroed first: the cloud's aggregate leaves those layers be.
    A step whose model or optimizer state would not be finite (summaries whose weighted sum
    overflows) leaves both as they were.
    """

    def cloud_step(params, server_state, deltas, weights, cloud_round, clip_norm):
        if personal_mask is not None:
            deltas = personal.mask_personal(deltas, personal_mask)
        total = rules.reduce(rule, deltas, weights)
        if dp_config is not None and dp_config.place == "cloud":
            key = dp_config.key(rng.sum_noise_key(seed, cloud_round, 0, num_edges))
            noise_std = dp_config.noise_multiplier * clip_norm
            total = total._replace(delta_sum=dp.privatize_sum(total.delta_sum, key, noise_std))
        summary = Summary(unravel(spec, total.delta_sum), total.weight)
        new_params, new_state = algorithm.server_update(params, server_state, summary)
        ok = all_finite(new_params) & all_finite(new_state)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_state, server_state)

    return cloud_step


def all_finite(tree) -> jax.Array:
    """Whether every floating-point value in `tree` is finite (integer leaves always are)."""
    ok = jnp.bool_(True)
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def next_clip_norm(
    dp_config: DpConfig | None, clip_norm, unclipped, edge_rounds: int, devices: int
):
    """The clip norm for the next round: adaptive clipping moves it from the edges' noised
    counts of unclipped updates (`unclipped`, summed over edges and edge rounds) towards
    the topology's quantile; otherwise it stays.

    The expected count is every device's (`sample_rate * devices * edge_rounds`): the
    number that actually answered is private.
    """
    if dp_config is None or not dp_config.adaptive:
        return clip_norm
    expected = jnp.float32(edge_rounds * dp_config.sample_rate * devices)
    return dp.adapt_clip_norm(
        jnp.asarray(clip_norm, jnp.float32),
        jnp.asarray(unclipped, jnp.float32),
        expected,
        dp_config.clip_quantile,
        dp_config.clip_learning_rate,
    )


def next_cloud_variate(variate, variate_sums, examples):
    """SCAFFOLD's cloud variate after a round: `c + sum_e (sum_i n_i delta_c_i) / N`.

    `variate_sums` `[E', V]` are the edges' weighted sums of their devices' variate
    changes, `examples` N the federation's examples (answered or not: the paper's |S|/N).
    """
    return variate + variate_sums.sum(axis=0) / jnp.maximum(examples, 1.0)
