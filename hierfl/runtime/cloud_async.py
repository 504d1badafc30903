"""Buffered asynchronous rounds at the cloud (`[buffered_aggregation]`, FedBuff).

No round waits for every plant. Each edge trains one *cycle* (its edge rounds) from the model
the cloud last sent it and sends its summary, which names the global version it trained from
(`model_version`) and its cycle (`round`). The cloud takes the summary into its buffer
(`cloud_buffer.BufferedAggregation`, discounted by its staleness) and answers the edge at
once with the newest global model, numbered as the edge's next cycle: the edge trains again
without waiting. Once the buffer holds `buffer_size` summaries from at least
`min_edge_participation` of the plants (`hierfl.core.buffered.should_apply`) it is applied:
a new global version, its checkpoint and record; every other live edge gets that model to
score (`evaluate`). If the buffer holds enough plants but not `buffer_size` summaries when
`edge_deadline` has passed since the last application, it is applied as it is.

`order = "declared"` takes summaries in the order the plants' declared speeds give
(`hierfl.core.buffered.arrivals`, the simulator's schedule), holding any that come early:
a run that trains the simulator's model. If the summary it waits for has not come within
`edge_deadline`, or after a resume, it takes them as they arrive (and says so).

A summary of a cycle already taken from that edge is refused (`duplicate`): the checkpoint
keeps each plant's last cycle taken, so nothing is applied twice across a crash.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from hierfl.core import buffered, links, speeds
from hierfl.runs import records
from hierfl.runtime import protocol

if TYPE_CHECKING:
    from hierfl.runtime.cloud import CloudNode


class Taken(NamedTuple):
    """A summary in the buffer: its plant index, cycle, staleness and header."""

    plant: int
    cycle: int
    staleness: int
    header: dict[str, Any]


class BufferedRounds:
    """The buffered schedule of `node` (`cloud.CloudNode`), whose mode is a `BufferedAggregation`."""

    def __init__(self, node: CloudNode):
        self.node, self.mode = node, node.mode
        topology = node.topology
        self.config = topology.buffered
        self.names = topology.plant_names
        self.plants_needed = buffered.required_plants(
            node.runtime.min_edge_participation, len(self.names)
        )
        self.buffer: list[Taken] = []
        self.held: dict[tuple[str, int], protocol.Message] = {}
        self.models_sent = 0
        self.evaluations_sent = 0
        self.declared: Iterator[buffered.Arrival] | None = None
        self.waiting_for: buffered.Arrival | None = None

    @property
    def version(self) -> int:
        """The newest global model's version."""
        return self.node.round - 1

    @property
    def taken(self) -> dict[str, int]:
        """Each edge's last cycle taken into a buffer."""
        return self.mode.cycles_taken

    def required(self) -> int:
        """The edges the start waits for: as many as an application needs."""
        return self.plants_needed

    def open(self) -> None:
        """The start (or a resume): the newest model to every live edge, for its next cycle."""
        node = self.node
        if self.config.order == "declared":
            if node.resumed:
                node.log.warning("resumed: taking summaries as they arrive, not in declared order")
            else:
                net = node.net
                cycles = speeds.topology_cycle_seconds(
                    node.topology, net.codecs, net.spec.nbytes, net.variates
                )
                self.declared = buffered.arrivals(cycles)
                self.waiting_for = next(self.declared)
        self.round_started = time.perf_counter()
        # The first summaries come after the edges' devices joined (start_timeout).
        self.deadline = time.monotonic() + node.runtime.edge_deadline + node.runtime.start_timeout
        for edge in sorted(node.alive_edges()):
            self._send_model(edge, self.taken.get(edge, 0) + 1)
        node.live.write()

    def joined(self, edge: str) -> None:
        """An edge joins or comes back: the newest model for its next cycle (one that trains, or
        whose summary waits here, ignores it or is refused a repeat)."""
        if not any(name == edge for name, _ in self.held):
            self._send_model(edge, self.taken.get(edge, 0) + 1)

    def summary(self, message: protocol.Message, collecting: bool) -> None:
        """A checked summary: taken (or, in declared order, held until its turn), or refused."""
        edge, cycle = message.sender, message.round
        version = message.header["model_version"]
        if not collecting or self.version >= self.node.rounds:
            raise protocol.MessageRejected(
                protocol.STALE_ROUND, f"summary of cycle {cycle}: the cloud takes none now"
            )
        if message.header.get("stale") is True:
            raise protocol.MessageRejected(
                protocol.UNEXPECTED, "no offline (stale) summaries under buffered aggregation"
            )
        if cycle <= self.taken.get(edge, 0) or (edge, cycle) in self.held:
            raise protocol.MessageRejected(
                protocol.DUPLICATE, f"{edge}'s cycle {cycle} is taken already"
            )
        if version > self.version:
            raise protocol.MessageRejected(
                protocol.FUTURE_ROUND,
                f"summary trained from version {version}, not made yet (newest {self.version})",
            )
        if self.waiting_for is None:
            self._take(message)
            return
        self.held[(edge, cycle)] = message
        self._take_declared()

    def advance(self, now: float) -> None:
        """The deadline: declared order gives way to arrival order, or a buffer of enough plants
        is applied as it is."""
        if now < self.deadline:
            return
        node = self.node
        if self.waiting_for is not None:
            node.log.warning(
                "%s's cycle %d did not come within edge_deadline; taking summaries as they arrive",
                self.names[self.waiting_for.plant],
                self.waiting_for.cycle,
            )
            self.waiting_for = self.declared = None
            for key in sorted(self.held, key=lambda k: (k[1], self.names.index(k[0]))):
                self._take(self.held.pop(key))
        elif self.buffer and len({t.plant for t in self.buffer}) >= self.plants_needed:
            node.log.warning(
                "edge_deadline: applying %d of %d buffered summaries",
                len(self.buffer),
                self.config.buffer_size,
            )
            self._apply()
        self.deadline = time.monotonic() + node.runtime.edge_deadline

    def live(self) -> dict[str, Any]:
        """The buffer's part of the dashboard: the edges whose summaries it holds."""
        return {
            "expected": set(self.node.edges),
            "answered": {self.names[t.plant] for t in self.buffer},
            "deadline_in": self.deadline - time.monotonic(),
        }

    # -- taking and applying ----------------------------------------------------------------------

    def _take_declared(self) -> None:
        """Takes held summaries while the next one of the declared order is among them."""
        while self.waiting_for is not None and self.version < self.node.rounds:
            key = (self.names[self.waiting_for.plant], self.waiting_for.cycle)
            if key not in self.held:
                return
            self.waiting_for = next(self.declared)
            self._take(self.held.pop(key))

    def _take(self, message: protocol.Message) -> None:
        """Into the buffer with its staleness discount; applied if full; the edge's next model."""
        node, edge, cycle = self.node, message.sender, message.round
        staleness = self.version - message.header["model_version"]
        self.mode.take(message, buffered.staleness_factor(self.config, staleness))
        self.buffer.append(Taken(node.edges[edge], cycle, staleness, message.header))
        self.taken[edge] = cycle
        plants = [t.plant for t in self.buffer]
        if buffered.should_apply(plants, self.config.buffer_size, self.plants_needed):
            self._apply(trained_by=edge)
        if self.version < node.rounds:
            self._send_model(edge, cycle + 1)

    def _apply(self, trained_by: str | None = None) -> None:
        """The buffer applied: global model `version + 1`, checkpointed, to be scored by every
        live edge (the one whose summary filled the buffer scores its next cycle's model)."""
        node = self.node
        version = self.version + 1
        self.mode.apply(version, self._record(version))
        node.log.info(
            "version %d from %s",
            version,
            ", ".join(f"{self.names[t.plant]}:{t.cycle}(s={t.staleness})" for t in self.buffer),
        )
        self.buffer, self.models_sent, self.evaluations_sent = [], 0, 0
        self.round_started = time.perf_counter()
        self.deadline = time.monotonic() + node.runtime.edge_deadline
        node.round = version + 1
        frames = self.mode.frames(version, 0, evaluate=True)
        for edge in sorted(node.alive_edges() - {trained_by}):
            node.send(edge, frames)
            self.evaluations_sent += 1

    def _send_model(self, edge: str, cycle: int) -> None:
        self.node.send(edge, self.mode.frames(self.version, cycle))
        self.models_sent += 1

    def _record(self, version: int) -> dict[str, Any]:
        """Version `version`'s record: `records.round_record` of the buffer's summaries, with
        both engines' `buffered_fields` and the runtime's own."""
        node, headers = self.node, [t.header for t in self.buffer]
        weight = sum(float(h["weight"]) for h in headers)
        answered = [list(h.get("answered", [])) for h in headers]
        net = node.net
        traffic = links.traffic(
            net.codecs,
            net.spec.nbytes,
            updates=sum(sum(a) for a in answered),
            summaries=len(headers),
            models_sent=self.models_sent + self.evaluations_sent,
            variates=net.variates,
        )
        now = time.perf_counter()
        return records.round_record(
            node.topology,
            net.task,
            round=version,
            loss=sum(float(h["loss"]) for h in headers) / max(weight, 1.0),
            scores=records.unscored(net.task, len(self.names)),
            bytes=traffic,
            round_seconds=now - self.round_started,
            elapsed_seconds=node.elapsed_before + now - node.run_started,
            devices=sum(max(a, default=0) for a in answered),
            clip_norm=self.mode.clip_norm,
            **records.buffered_fields(
                node.topology, [(t.plant, t.cycle, t.staleness) for t in self.buffer]
            ),
            edges_answered=sorted({self.names[t.plant] for t in self.buffer}),
            cycles_taken=dict(self.taken),
            rejected_messages={
                "cloud": node.counters.snapshot(),
                **{self.names[t.plant]: t.header.get("rejected", {}) for t in self.buffer},
            },
            late_updates=node.late,
        )
