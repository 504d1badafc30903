"""Synchronous cloud rounds (HierFAVG): the global model to every live edge, their summaries back.

Each cloud round the cloud sends the global model to every live edge and collects their
summaries until all live edges answered or `edge_deadline` passed; then its mode
(`cloud_modes`) aggregates them. Fewer answers than `min_edge_participation` of the plants
leave the model unchanged for that round. Summaries for a closed round (late, or replayed)
are refused and counted. `cloud_async.BufferedRounds` is the other schedule a cloud runs.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from hierfl.data.evaluation import Scores
from hierfl.runs import records
from hierfl.runtime import protocol
from hierfl.runtime.cloud_modes import Closing
from hierfl.runtime.cloud_summaries import RoundSummaries, check_round

if TYPE_CHECKING:
    from hierfl.runtime.cloud import CloudNode


class SyncRounds:
    """The rounds of `node` (`cloud.CloudNode`): opens, collects and closes one at a time."""

    def __init__(self, node: CloudNode):
        self.node = node
        self.first_round = True
        self.expected: set[str] = set()
        self.received = RoundSummaries(node.round, node.edges)
        self.deadline = 0.0
        self.sent_to = 0

    def required(self) -> int:
        """The edges a round needs to change the model (`min_edge_participation` of the plants)."""
        node = self.node
        return math.ceil(node.runtime.min_edge_participation * len(node.edges))

    def open(self) -> None:
        """Opens round `node.round`: its model to the edges alive now."""
        node = self.node
        self.round_started = time.perf_counter()
        self.expected = node.alive_edges()
        self.received = RoundSummaries(node.round, node.edges)
        # In the first round after start-up the edges may still be waiting for their devices (start_timeout).
        self.deadline = (
            time.monotonic()
            + node.runtime.edge_deadline
            + (node.runtime.start_timeout if self.first_round else 0.0)
        )
        self.first_round = False
        self.model_frames = node.mode.open_round(node.round)
        # To the edges alive when the round opened (re-asking the live set now could miss them all
        # if this process was stalled); an edge that joins later gets the model when it does.
        for edge in sorted(self.expected):
            node.send(edge, self.model_frames)
        self.sent_to = len(self.expected)
        node.live.write()

    def joined(self, edge: str) -> None:
        """Gives an edge that joins, or comes back (restarted, or silent too long), the open round's model.

        An edge that already works on the round ignores the repeat; one that restarted needs it.
        """
        if edge not in self.received.current:
            self.expected.add(edge)
            self.sent_to += 1
            self.node.send(edge, self.model_frames)

    def summary(self, message: protocol.Message, collecting: bool) -> None:
        """A checked summary: for the open round (while `collecting`), once per edge, or refused."""
        node = self.node
        check_round(message.round, node.round, collecting)
        self.received.admit(message, node.mode.take)

    def advance(self, now: float) -> None:
        """Closes the round once every live expected edge answered or its deadline passed, and
        opens the next one (if any is left)."""
        node = self.node
        waiting = (self.expected & node.members.alive()) - set(self.received.current)
        if waiting and now < self.deadline:
            return
        self._close()
        node.round += 1
        if node.round <= node.rounds:
            self.open()

    def _close(self) -> None:
        node = self.node
        answered, total, required = len(self.received.current), len(node.edges), self.required()
        enough = answered >= required and answered > 0
        if not enough:
            node.log.warning(
                "cloud round %d: %d of %d edges answered (need %d); model unchanged",
                node.round,
                answered,
                total,
                required,
            )
        node.mode.close_round(
            Closing(node.round, enough, self.received.current, total, self.sent_to, self._record)
        )

    def live(self) -> dict[str, Any]:
        """The open round's part of the dashboard: who is expected, who answered, the deadline."""
        return {
            "expected": set(self.expected),
            "answered": set(self.received.current),
            "deadline_in": self.deadline - time.monotonic(),
        }

    def _record(self, scores: Scores, clip_norm: float) -> dict[str, Any]:
        """The round's record (`records.round_record`) with the runtime's fields: who answered, what was refused."""
        node, received = self.node, self.received
        now = time.perf_counter()
        return records.round_record(
            node.topology,
            node.net.task,
            round=node.round,
            loss=received.loss(),
            scores=scores,
            bytes=received.traffic(
                node.net.codecs, node.net.spec.nbytes, self.sent_to, node.net.variates
            ),
            round_seconds=now - self.round_started,
            elapsed_seconds=node.elapsed_before + now - node.run_started,
            devices=received.devices(),
            clip_norm=clip_norm,
            personal=scores if node.topology.personalization.enabled else None,
            **received.runtime_fields(node.topology, node.counters.snapshot(), node.late),
        )
