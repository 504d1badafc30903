"""An edge that keeps its plant's declared pace (`hierfl launch --emulate-speeds`).

The simulator's clock (`hierfl.core.speeds`) gives each plant a cycle time from its declared
`seconds_per_step`, `latency` and `bandwidth`. To measure real wall-clock on one machine, where
every plant trains as fast as the CPU lets it, an edge may hold its summary until that cycle
time has passed since the cycle began (its model arrived): a slow plant is slow for real.
Without the option (`NoPace`) summaries leave at once.
"""

from __future__ import annotations

from typing import Any

from hierfl.core import speeds
from hierfl.runtime import protocol
from hierfl.runtime.node import NodeModel
from hierfl.topology import Topology

Messages = tuple[tuple[str, dict[str, Any]], ...]


class NoPace:
    """Summaries leave as soon as they are made."""

    def started(self, now: float) -> None:
        pass

    def hold(self, messages: Messages, now: float) -> Messages:
        return messages

    def due(self, now: float) -> Messages:
        return ()


class DeclaredPace:
    """Holds summaries until `seconds` after the cycle began; other messages pass."""

    def __init__(self, seconds: float):
        self.seconds, self.began, self.held, self.release = seconds, 0.0, (), 0.0

    def started(self, now: float) -> None:
        self.began = now

    def hold(self, messages: Messages, now: float) -> Messages:
        summaries = tuple(m for m in messages if m[0] == protocol.SUMMARY)
        self.held += summaries
        self.release = self.began + self.seconds
        return tuple(m for m in messages if m[0] != protocol.SUMMARY) + self.due(now)

    def due(self, now: float) -> Messages:
        if not self.held or now < self.release:
            return ()
        held, self.held = self.held, ()
        return held


def edge_pace(
    topology: Topology, net: NodeModel, index: int, emulate: bool
) -> NoPace | DeclaredPace:
    """Plant `index`'s declared pace if `emulate` and any plant declares a speed, else none."""
    cycles = speeds.topology_cycle_seconds(topology, net.codecs, net.spec.nbytes, net.variates)
    if not emulate or cycles is None:
        return NoPace()
    return DeclaredPace(float(cycles[index]))
