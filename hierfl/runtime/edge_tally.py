"""What an edge has aggregated and not yet sent up.

`Tally` adds up the edge rounds of one summary. `OfflineRounds` holds the edge rounds an
edge runs while the cloud is silent, and their tally, which goes up as a *stale* summary
when the cloud is back. `VariateSums` (SCAFFOLD) keeps each device's variate change of
an edge round and gives the frame a summary adds; `NoVariates` is the same with nothing
to keep, for every other algorithm.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from hierfl.core.steps import aligned_zeros
from hierfl.runtime.node import NodeModel

if TYPE_CHECKING:
    from hierfl.runtime.edge_rounds import RoundResult


@dataclasses.dataclass
class Tally:
    """A summary's edge rounds added up.

    `weight` the examples aggregated (what the summary is weighted by), `loss` their loss
    sum, `unclipped` adaptive clipping's noised count of unclipped updates, `answered`
    the devices in each edge round, `variate_sum` SCAFFOLD's `sum_i n_i delta_c_i`
    (empty without SCAFFOLD).
    """

    variate_sum: np.ndarray
    weight: float = 0.0
    loss: float = 0.0
    unclipped: float = 0.0
    answered: list[int] = dataclasses.field(default_factory=list)

    def add(self, result: RoundResult) -> None:
        """Counts an edge round whose aggregate changed the model."""
        self.weight += result.weight
        self.loss += result.loss
        self.unclipped += result.unclipped

    def add_variates(self, round_sum: np.ndarray) -> None:
        """Counts an edge round's variate changes (whether or not the model changed: the
        devices that answered have moved their variates)."""
        self.variate_sum = self.variate_sum + round_sum


@dataclasses.dataclass
class OfflineRounds:
    """The edge rounds an edge runs while the cloud is silent, and their progress not yet sent up.

    At most `limit` between two summaries (0 under DP: those rounds would release updates
    the accountant does not count). `active` while they run. `base` is the edge's model
    at its last summary: the stale summary is the change since.
    """

    limit: int
    tally: Tally
    active: bool = False
    rounds: int = 0
    base: np.ndarray | None = None

    def may_open(self) -> bool:
        return self.rounds < self.limit

    def summarized(self, edge_flat: np.ndarray) -> None:
        """After a summary: later offline rounds count from `edge_flat`."""
        self.base, self.rounds = edge_flat, 0

    def sent(self, variate_zeros: np.ndarray) -> None:
        """After the stale summary (or the cloud's return with nothing to send): none pending."""
        self.active, self.rounds, self.tally = False, 0, Tally(variate_zeros)


class VariateSums:
    """SCAFFOLD at an edge: each device's change of its variate `c_i` (row k of a `[K, P]`
    stack) and their sum weighted by examples, which a summary carries as its last frame."""

    def __init__(self, devices: int, size: int):
        self.changes = aligned_zeros((devices, size))

    def zeros(self) -> np.ndarray:
        return np.zeros(self.changes.shape[1], np.float32)

    def take(self, row: int, arrays: list[np.ndarray]) -> None:
        """Keeps the variate change a checked update carries (its last frame)."""
        self.changes[row] = arrays[-1]

    def round_sum(self, weights: np.ndarray) -> np.ndarray:
        """`sum_i n_i delta_c_i` over an edge round (`weights` `[K]`: 0 for the silent)."""
        return weights @ self.changes

    def frames(self, variate_sum: np.ndarray) -> list[np.ndarray]:
        return [variate_sum]


class NoVariates:
    """Algorithms without control variates: nothing to keep, no frame to add."""

    EMPTY = np.zeros(0, np.float32)

    def zeros(self) -> np.ndarray:
        return self.EMPTY

    def take(self, row: int, arrays: list[np.ndarray]) -> None:
        pass

    def round_sum(self, weights: np.ndarray) -> np.ndarray:
        return self.EMPTY

    def frames(self, variate_sum: np.ndarray) -> list[np.ndarray]:
        return []


def edge_variates(net: NodeModel, devices: int) -> VariateSums | NoVariates:
    """The variate bookkeeping of an edge with `devices` devices."""
    return VariateSums(devices, net.spec.size) if net.variates else NoVariates()
