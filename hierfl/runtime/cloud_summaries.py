"""The summaries one cloud round received, and what the runtime records about them.

A summary joins the round it was sent for, once per edge, in its row of the cloud's stack
(one row per plant, then one per plant for stale summaries). A *stale* summary (an edge's
offline progress, sent when the cloud is back) has its weight multiplied by
`staleness_discount`, staleness being how many global models were made since the one the
edge started from (`round - 1 - base_version`, at least 0; the polynomial discount of
FedAsync, Xie et al. 2019): progress made on an old model counts, but less the older it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hierfl.core import links
from hierfl.core.links import LinkCodecs
from hierfl.runtime import protocol
from hierfl.topology import Topology


def staleness_discount(staleness: int) -> float:
    """The factor on a stale summary's weight: 1 / (1 + staleness) (1 for a summary of the current model)."""
    return 1.0 / (1.0 + staleness)


def check_round(sent_for: int, round: int, collecting: bool) -> None:
    """Refuses a summary for a round other than `round`, or for `round` while it is not `collecting`."""
    if sent_for < round or (sent_for == round and not collecting):
        raise protocol.MessageRejected(
            protocol.STALE_ROUND, f"summary for round {sent_for}, which is closed (now {round})"
        )
    if sent_for > round:
        raise protocol.MessageRejected(
            protocol.FUTURE_ROUND, f"summary for round {sent_for}, not started (now {round})"
        )


class RoundSummaries:
    """Round `round`'s summary headers by edge: `current` (for this round's model) and `stale`."""

    def __init__(self, round: int, edges: Mapping[str, int]):
        self.round = round
        self.edges = edges
        self.current: dict[str, dict[str, Any]] = {}
        self.stale: dict[str, dict[str, Any]] = {}

    def admit(
        self, message: protocol.Message, take: Callable[[int, protocol.Message, float], None]
    ) -> None:
        """Checks a summary of this round and calls `take(row, message, weight)`; keeps its header if that returns.

        Raises `MessageRejected` for an edge's second summary of a kind, or a stale one
        without a valid `base_version`.
        """
        stale = message.header.get("stale") is True
        received = self.stale if stale else self.current
        if message.sender in received:
            raise protocol.MessageRejected(
                protocol.DUPLICATE,
                f"second {'stale ' if stale else ''}summary from {message.sender} in round {message.round}",
            )
        base = message.header.get("base_version", 0)
        if stale and (not isinstance(base, int) or isinstance(base, bool) or base < 0):
            raise protocol.MessageRejected(
                protocol.MALFORMED, f"a stale summary needs base_version >= 0, got {base!r}"
            )
        weight = float(message.header["weight"])
        if stale:
            staleness = max(0, self.round - 1 - base)
            weight *= staleness_discount(staleness)
            message.header["staleness"] = staleness
        take(self.edges[message.sender] + (len(self.edges) if stale else 0), message, weight)
        received[message.sender] = message.header

    def loss(self) -> float:
        """The mean training loss the edges report, weighted by their summaries' weights."""
        weight = sum(float(h["weight"]) for h in self.current.values())
        return sum(float(h["loss"]) for h in self.current.values()) / max(weight, 1.0)

    def answered(self) -> dict[str, list[int]]:
        """Per edge, how many devices answered in each of its edge rounds."""
        return {name: list(h.get("answered", [])) for name, h in self.current.items()}

    def devices(self) -> int:
        """Devices that trained: per edge, the most that answered in one of its edge rounds."""
        return sum(max(a, default=0) for a in self.answered().values())

    def traffic(
        self, codecs: LinkCodecs, model_bytes: int, models_sent: int, variates: bool
    ) -> dict[str, int]:
        """Each tier's payload bytes this round (`links.traffic`): the device updates the
        edges report, one summary per edge that answered (none for `tuned`: a fine-tuning
        round's model stays at its edge), `models_sent` global models."""
        updates = sum(sum(a) for a in self.answered().values())
        summaries = sum(h["kind"] != protocol.TUNED for h in self.current.values())
        return links.traffic(
            codecs,
            model_bytes,
            updates=updates,
            summaries=summaries,
            models_sent=models_sent,
            variates=variates,
        )

    def runtime_fields(
        self, topology: Topology, refused: Mapping[str, int], late: int
    ) -> dict[str, Any]:
        """The record's runtime fields: who answered, what was refused (`refused`: the cloud's
        counts), late updates (`late`: the cloud's), stale summaries, the devices that stay out
        (`devices_out`: plant -> device -> why), bad rows they dropped (`rows_dropped`: plant ->
        device -> rows), secure-aggregation failures."""
        summaries = self.current
        fields = {
            "edges_answered": sorted(summaries),
            "devices_answered": self.answered(),
            "devices_expected": {p.name: p.num_devices for p in topology.plants},
            "rejected_messages": {
                "cloud": dict(refused),
                **{n: h.get("rejected", {}) for n, h in summaries.items()},
            },
            "late_updates": late + sum(int(h.get("late", 0)) for h in summaries.values()),
            "stale_summaries": {
                name: {
                    "weight": h["weight"],
                    "staleness": h["staleness"],
                    "edge_rounds": h["edge_round"],
                }
                for name, h in self.stale.items()
            },
        }
        out = {n: h["out"] for n, h in summaries.items() if h.get("out")}
        if out:
            fields["devices_out"] = out
        dropped = {n: h["rows_dropped"] for n, h in summaries.items() if h.get("rows_dropped")}
        if dropped:
            fields["rows_dropped"] = dropped
        if topology.privacy.secure_aggregation:
            fields["secure_aggregation_failures"] = {
                n: h.get("secagg_failed", 0) for n, h in summaries.items()
            }
        return fields
