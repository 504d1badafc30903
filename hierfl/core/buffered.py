"""Buffered asynchronous aggregation at the cloud (FedBuff, Nguyen et al. 2022), written once.

Instead of a round of every plant, the cloud buffers summaries as they come and applies its
server step as soon as `buffer_size` of them are in (and they come from at least
`min_edge_participation` of the plants); each plant, once its summary is taken, trains again
from the newest global model. A summary trained from global version `v` and taken at version
`V` is `s = V - v` stale and counts `(1 + s) ** -a` (`staleness_factor`): the buffer holds

    delta_sum = sum_k  w_k * factor(s_k) * clip(delta_k),    weight = sum_k w_k

(w_k the examples behind summary k), so the server optimizer steps along FedBuff's
staleness-discounted mean of the buffered updates (`make_buffer_apply`).

Both engines call these: the simulator over the schedule of `arrivals` (the plants' declared
speeds make the order), the runtime's cloud over real arrivals or, with `order = "declared"`,
over the same schedule. Pure functions, no I/O.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.core import rules
from hierfl.core.algorithms import Algorithm, Summary
from hierfl.core.algorithms.fedavg import Params
from hierfl.core.steps import all_finite
from hierfl.kernels import FlatSpec, unravel
from hierfl.topology import BufferedAggregation, TierRule


class Buffer(NamedTuple):
    """The summaries the cloud holds: their discounted weighted sum `[P]` and their weight."""

    delta_sum: jax.Array
    weight: jax.Array


class Arrival(NamedTuple):
    """A plant's summary reaching the cloud: at `seconds`, plant index `plant`, its `cycle`-th (from 1)."""

    seconds: float
    plant: int
    cycle: int


def empty_buffer(size: int) -> Buffer:
    return Buffer(jnp.zeros(size, jnp.float32), jnp.float32(0))


def staleness_factor(config: BufferedAggregation, staleness: int) -> float:
    """What a summary `staleness` global models old counts: `(1 + s) ** -a`, or 1 ("constant")."""
    if config.staleness == "constant":
        return 1.0
    return float((1.0 + max(staleness, 0)) ** -config.staleness_exponent)


def required_plants(min_edge_participation: float, plants: int) -> int:
    """The distinct plants a buffer's summaries must come from before it is applied."""
    return max(1, math.ceil(round(min_edge_participation * plants, 9)))


def should_apply(buffered_plants: Sequence[int], buffer_size: int, required: int) -> bool:
    """Whether the buffer (the plant index of each summary it holds) is applied now: it holds
    `buffer_size` summaries from at least `required` distinct plants."""
    return len(buffered_plants) >= buffer_size and len(set(buffered_plants)) >= required


def make_buffer_add(rule: TierRule) -> Callable[[Buffer, jax.Array, Any, Any], Buffer]:
    """`add(buffer, delta [P], weight, factor) -> buffer`: one decoded summary's change, clipped
    by the cloud's rule (`[aggregation.cloud] clip_norm`), weighted and discounted, added."""

    def add(buffer: Buffer, delta, weight, factor) -> Buffer:
        clipped = rules.clip(rule, delta[None])[0]
        weight = jnp.asarray(weight, jnp.float32)
        return Buffer(
            buffer.delta_sum + (weight * jnp.asarray(factor, jnp.float32)) * clipped,
            buffer.weight + weight,
        )

    return add


def make_buffer_apply(
    algorithm: Algorithm, spec: FlatSpec
) -> Callable[[Params, Any, Buffer], tuple[Params, Any]]:
    """`apply(params, server_state, buffer) -> (params, server_state)`: the server optimizer on
    the buffer's mean change; a step whose result would not be finite leaves both as they were."""

    def apply(params, server_state, buffer: Buffer):
        summary = Summary(unravel(spec, buffer.delta_sum), buffer.weight)
        new_params, new_state = algorithm.server_update(params, server_state, summary)
        ok = all_finite(new_params) & all_finite(new_state) & (buffer.weight > 0)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_state, server_state)

    return apply


def arrivals(cycle_seconds: Sequence[float] | np.ndarray) -> Iterator[Arrival]:
    """Every plant's summaries in the order they reach the cloud, without end: plant p's k-th
    at `k * cycle_seconds[p]` (each plant cycles back to back: model down, edge rounds,
    summary up); equal times go in plant order. Each time is a product, not a running sum,
    so both engines compute bit-identical schedules."""
    cycles = [float(c) for c in cycle_seconds]
    if any(not c > 0 for c in cycles):
        raise ValueError(f"every plant's cycle must take > 0 seconds, got {cycles}")
    heap = [(c, p, 1) for p, c in enumerate(cycles)]
    heapq.heapify(heap)
    while True:
        seconds, plant, cycle = heapq.heappop(heap)
        yield Arrival(seconds, plant, cycle)
        heapq.heappush(heap, ((cycle + 1) * cycles[plant], plant, cycle + 1))
