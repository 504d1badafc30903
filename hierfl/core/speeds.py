"""The simulated clock: how long a plant's part of a cloud round takes, from its declared speed.

A plant declares `seconds_per_step` (one local step of its devices), and its link to the cloud
`latency` (seconds) and `bandwidth` (bytes per second); an absent value costs nothing. One
*cycle* of a plant (what it does for one summary) is the global model coming down, its
`edge_rounds` edge rounds of its slowest device's local steps (the plant's devices train in
parallel and the links inside a plant are taken as free), and its summary going up:

    cycle = edge_rounds * max(local steps) * seconds_per_step
            + 2 * latency + (model bytes + summary bytes) / bandwidth

A synchronous cloud round waits for the slowest plant's cycle; buffered aggregation
(`hierfl.core.buffered`) lets each plant cycle at its own pace. Pure functions, no I/O.
"""

from __future__ import annotations

import numpy as np

from hierfl.core import links
from hierfl.core.links import LinkCodecs
from hierfl.topology import Plant, Topology


def declares_speeds(topology: Topology) -> bool:
    """Whether any plant declares a speed (so that a run reports simulated seconds)."""
    return any(
        p.seconds_per_step is not None or p.latency is not None or p.bandwidth is not None
        for p in topology.plants
    )


def plant_steps(topology: Topology, index: int) -> int:
    """The most local steps one of plant `index`'s devices takes in one edge round."""
    devices = topology.plants[index].devices
    return max((topology.device_steps[d.index] for d in devices), default=0)


def link_seconds(plant: Plant, nbytes: int, messages: int) -> float:
    """Seconds `messages` messages of `nbytes` bytes in all take on `plant`'s cloud link."""
    latency = messages * (plant.latency or 0.0)
    return latency + (nbytes / plant.bandwidth if plant.bandwidth else 0.0)


def cycle_seconds(topology: Topology, model_bytes: int, summary_bytes: int) -> np.ndarray:
    """`[E]` seconds of each plant's cycle: the model down, its edge rounds, its summary up.

    `model_bytes` is the float32 global model (plus anything that goes down with it),
    `summary_bytes` what the edge -> cloud codec sends for one summary.
    """
    edge_rounds = topology.federation.edge_rounds
    seconds = []
    for index, plant in enumerate(topology.plants):
        compute = edge_rounds * plant_steps(topology, index) * (plant.seconds_per_step or 0.0)
        seconds.append(compute + link_seconds(plant, model_bytes + summary_bytes, messages=2))
    return np.asarray(seconds, np.float64)


def sync_round_seconds(cycles: np.ndarray, answered: np.ndarray | None = None) -> float:
    """A synchronous cloud round's seconds: the slowest cycle among the plants that take part
    (`answered`, a boolean `[E]`; all by default)."""
    if answered is not None:
        cycles = cycles[np.asarray(answered, bool)]
    return float(cycles.max(initial=0.0))


def topology_cycle_seconds(
    topology: Topology, codecs: LinkCodecs, model_bytes: int, variates: bool
) -> np.ndarray | None:
    """`cycle_seconds` with the bytes of one model down and one summary up as the links carry
    them (`links.traffic`: the codec in use, SCAFFOLD's variates), None if no plant declares
    a speed. Both engines' clocks and schedules start here."""
    if not declares_speeds(topology):
        return None
    one = links.traffic(
        codecs, model_bytes, updates=0, summaries=1, models_sent=1, variates=variates
    )
    return cycle_seconds(topology, one["cloud_to_edge"], one["edge_to_cloud"])
