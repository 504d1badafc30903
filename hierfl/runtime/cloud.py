"""The cloud node: drives cloud rounds for the edges that dial in to its ROUTER.

Its schedule says when it aggregates (`cloud_sync.SyncRounds`: each cloud round the global
model goes to every live edge and their summaries are collected until all answered or
`edge_deadline` passed; `cloud_async.BufferedRounds`: as soon as `buffer_size` summaries are
in) and its mode how (`cloud_modes`: `PlainAggregation` holds the model and applies the
server step, `EncryptedAggregation` adds CKKS ciphertexts). The mode checkpoints the round
and writes its record (`hierfl.runs.records`) to `metrics.jsonl`; at the end the final model
is written and every edge is told to stop.

`--resume` restarts from the last checkpoint: the record of a round is written after its
checkpoint, and on resume `metrics.jsonl` is rewritten to hold exactly the checkpointed
rounds, so no round is lost or counted twice.

The cloud answers every edge heartbeat, so an edge notices when the cloud is gone and
keeps training offline (see `edge.py`); that progress comes back as stale summaries, which
count less the older their model (`cloud_summaries`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq

from hierfl.privacy.config import rounds_to_run
from hierfl.runs import records
from hierfl.runs.live import STATUS_DIR, live_status
from hierfl.runs.metrics import METRICS_FILE, MetricsWriter, write_run_info
from hierfl.runtime import census_pass, protocol
from hierfl.runtime.census_pass import CloudCensus, needs_census
from hierfl.runtime.cloud_modes import CLOUD, cloud_mode
from hierfl.runtime.cloud_sync import SyncRounds
from hierfl.runtime.connections import ConnectionWatch
from hierfl.runtime.curve import check_keys, start_authenticator
from hierfl.runtime.node import (
    Counters,
    CurveKeys,
    Membership,
    bind_router,
    check_peer_key,
    compiling_once,
    drain_router,
    node_logger,
    node_model,
    send_router,
    start_waiting_over,
)
from hierfl.topology import Topology

STARTING, COLLECTING, DONE = "starting", "collecting", "done"


class CloudNode:
    """The cloud of `topology`, writing to `run_dir`. `run()` trains `rounds` cloud rounds (default: the file's)."""

    def __init__(
        self,
        topology: Topology,
        run_dir: Path,
        *,
        rounds: int | None = None,
        bind: str | None = None,
        resume: bool = False,
        keys: CurveKeys | None = None,
        publish: str | None = None,
        he_context: Path | None = None,
    ):
        self.topology = topology
        self.runtime = runtime = topology.runtime
        secure = check_keys(runtime, keys)
        requested = rounds or topology.federation.cloud_rounds
        self.rounds = rounds_to_run(topology, requested)
        self.run_dir = Path(run_dir)
        self.log = node_logger("cloud")
        if self.rounds < requested:
            self.log.warning(
                "privacy.target_epsilon %g allows %d of %d rounds",
                topology.privacy.target_epsilon,
                self.rounds,
                requested,
            )
        self.net = node_model(topology)
        self.edges = {name: row for row, name in enumerate(topology.plant_names)}
        self.mode = cloud_mode(
            topology, self.net, self.run_dir, self, publish=publish, he_context=he_context
        )
        self.members = Membership(runtime.heartbeat_timeout)
        self.counters = Counters()
        self.late = 0
        self.round = 1
        self.elapsed_before = 0.0
        self.resumed = resume
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._open_records(resume)
        task = self.net.task
        self.census = (
            CloudCensus(task, self.run_dir, resume) if needs_census(topology, task) else None
        )
        self.layouts = dict(self.mode.layouts)
        if self.census is not None:
            self.layouts |= census_pass.layouts(task, part=True)
            if self.census.result is not None:  # kept by the run this one resumes
                self.mode.use_census(self.census.result)
        self.phase = STARTING
        self.schedule = cloud_schedule(self)
        # A fine-tuning round (`[personalization] method = "fine-tune"`) ends with `tuned`.
        fine_tunes = topology.personalization.fine_tunes
        self.summary_kinds = (self.mode.summary_kind, *([protocol.TUNED] if fine_tunes else []))
        self.publish = publish
        self.live = live_status(self.run_dir / STATUS_DIR, "cloud", self._live_status)
        self.started = time.monotonic()
        self.context = zmq.Context()
        self.auth = (
            start_authenticator(self.context, runtime.edge_keys.values()) if secure else None
        )
        self.socket = bind_router(
            self.context,
            bind or topology.cloud.address,
            max_bytes=runtime.max_message_bytes,
            keys=keys,
        )
        self.running = True

    def _open_records(self, resume: bool) -> None:
        """`run.json` and `metrics.jsonl`: fresh, or (resumed) as the last checkpoint left them."""
        metrics = self.run_dir / METRICS_FILE
        resumed = self.mode.restore() if resume else None
        if resumed is None:
            metrics.unlink(missing_ok=True)
        else:
            self.round, self.elapsed_before = resumed
        if resumed is None or not (self.run_dir / "run.json").exists():
            info = records.run_info(
                self.topology, self.net.model.name, self.net.task.metric, self.rounds, runtime=True
            )
            write_run_info(self.run_dir, info)
        else:
            records.plan_rounds(self.run_dir, self.rounds)
        self.writer = MetricsWriter(self.run_dir)

    def run(self) -> None:
        with compiling_once("cloud"):
            self.mode.warm_up()
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        self.log.info(
            "serving %d edges on %s; rounds %d..%d",
            len(self.edges),
            self.socket.LAST_ENDPOINT.decode(),
            self.round,
            self.rounds,
        )
        self.run_started = time.perf_counter()
        self.watch = ConnectionWatch(self.socket, self.runtime.heartbeat_timeout, self.log)
        try:
            while self.running and self.round <= self.rounds:
                if self.socket.poll(50, zmq.POLLIN):
                    self._drain()
                self._advance()
                self.live.update()
            if self.round > self.rounds:
                self.phase = DONE
                self.mode.finish(self.round)
                self._stop_edges()
        finally:
            self.running = False
            self.live.write()
            self.writer.close()
            self.mode.close()
            self.watch.close()
            self.socket.close(linger=1000)
            if self.auth:
                self.auth.stop()
            self.context.term()
            self.log.info("stopped")

    def stop(self) -> None:
        self.running = False

    # -- what a mode may ask of the shell (`cloud_modes.CloudShell`) --------------------------------

    def send(self, edge: str, frames: list) -> None:
        send_router(self.socket, edge, frames)

    def alive_edges(self) -> set[str]:
        return self.members.alive() & set(self.edges)

    def write(self, record: Mapping[str, Any]) -> None:
        self.writer.write(record)

    def serve(self, done: Callable[[], bool], seconds: float) -> None:
        """Answers the edges until `done()` or for at most `seconds` (or until stopped)."""
        deadline = time.monotonic() + seconds
        while self.running and not done() and time.monotonic() < deadline:
            if self.socket.poll(50, zmq.POLLIN):
                self._drain()
            self.live.update()

    # -- the round ----------------------------------------------------------------------------------

    def _stop_edges(self) -> None:
        frames = protocol.encode(protocol.STOP, CLOUD, round=self.rounds)
        for edge in self.edges:
            self.send(edge, frames)
        time.sleep(0.2)

    def _advance(self) -> None:
        now = time.monotonic()
        if self.phase == STARTING:
            if self.census is not None and self.census.result is None:
                self._census_down(now)
            elif start_waiting_over(
                len(self.alive_edges()),
                len(self.edges),
                self.schedule.required(),
                now - self.started,
                start_timeout=self.runtime.start_timeout,
                grace=self.runtime.heartbeat_timeout,
                resumed=self.resumed,
            ):
                self.phase = COLLECTING
                self.schedule.open()
        elif self.phase == COLLECTING:
            self.schedule.advance(now)

    def _census_down(self, now: float) -> None:
        """Finishes the census once every plant reported (or waiting is over) and sends it down."""
        reported = self.census.reported() & set(self.edges)
        if not start_waiting_over(
            len(reported),
            len(self.edges),
            len(self.edges),
            now - self.started,
            start_timeout=self.runtime.start_timeout,
            grace=self.runtime.heartbeat_timeout,
            resumed=self.resumed,
        ):
            return
        found = self.census.finish()
        self.mode.use_census(found)
        self.log.info(
            "census: %d examples from %s", found.examples, ", ".join(sorted(reported)) or "no plant"
        )
        for edge in sorted(self.alive_edges()):
            self._send_census(edge)

    def _send_census(self, edge: str) -> None:
        fields = census_pass.result_fields(self.census.result)
        self.send(edge, protocol.encode(protocol.CENSUS, CLOUD, **fields))

    def _drain(self) -> None:
        drain_router(self.socket, self._receive, self._refuse, self.watch.heard)
        self.watch.check()

    def _receive(self, peer: bytes, frames: list) -> None:
        message = protocol.parse_message(
            frames,
            senders=self.edges,
            spec=self.net.spec,
            layouts=self.layouts,
            max_bytes=self.runtime.max_message_bytes,
            routing_id=peer,
        )
        if self.auth is not None:
            check_peer_key(frames, message.sender, self.runtime.edge_keys)
        joined = self.members.seen(message.sender)
        if joined:
            self.log.info("edge %s joined", message.sender)
        # An edge (re)starting says hello with the global model version it holds; the mode may
        # first send what it misses (under HE, the aggregates since).
        restarted = message.kind == protocol.HELLO and self.mode.hello(
            message.sender, message.header["model_version"], self.round, self.phase == DONE
        )
        if (joined or restarted) and self.census is not None and self.census.result is not None:
            self._send_census(message.sender)
        if (joined or restarted) and self.phase == COLLECTING:
            self.schedule.joined(message.sender)
        self._handle(message)

    def _refuse(self, peer: bytes, error: protocol.MessageRejected) -> None:
        self.counters.reject(self.log, peer, error)
        if error.reason == protocol.STALE_ROUND:
            self.late += 1
        reply = protocol.encode(
            protocol.REJECTED, CLOUD, round=self.round, reason=error.reason, detail=str(error)
        )
        send_router(self.socket, peer, reply)

    def _handle(self, message: protocol.Message) -> None:
        if message.kind in (protocol.HELLO, protocol.HEARTBEAT):
            self.send(message.sender, protocol.encode(protocol.HEARTBEAT, CLOUD, round=self.round))
        elif message.kind == protocol.CENSUS:
            self.census.take(message.sender, message.header)
            if self.census.result is not None:  # an edge that reports late, or again
                self._send_census(message.sender)
        elif message.kind == protocol.EVALUATION:
            self.mode.evaluation(message, self.round)
        elif message.kind in self.summary_kinds:
            self.schedule.summary(message, self.phase == COLLECTING)
        else:
            raise protocol.MessageRejected(
                protocol.UNEXPECTED, f"edges do not send {message.kind} messages to the cloud"
            )

    def _live_status(self) -> dict[str, Any]:
        """What the dashboard shows of the cloud and its edges (`hierfl.runs.live`)."""
        collecting = self.phase == COLLECTING
        round_ = self.schedule.live() if collecting else {}
        answered, expected = round_.get("answered", set()), round_.get("expected", set())
        silences = self.members.silences()
        edges = {
            edge: {
                "silent_for": silences.get(edge),
                "expected": edge in expected,
                "answered": edge in answered,
            }
            for edge in self.edges
        }
        return {
            "node": "cloud",
            "running": self.running,
            "phase": self.phase,
            "round": self.round,
            "rounds": self.rounds,
            "deadline_in": round_.get("deadline_in"),
            "resumed": self.resumed,
            "heartbeat_timeout": self.runtime.heartbeat_timeout,
            "edges": edges,
            "rejected": self.counters.snapshot(),
            "refusals": list(self.counters.recent),
            "late": self.late,
            "publish": self.publish,
        }


def cloud_schedule(node: CloudNode) -> SyncRounds:
    """When the cloud aggregates: synchronous rounds, or (`[buffered_aggregation]`) as soon as
    its buffer is full (`cloud_async.BufferedRounds`). Chosen once, at start-up."""
    if node.topology.buffered is not None:
        from hierfl.runtime.cloud_async import BufferedRounds

        return BufferedRounds(node)
    return SyncRounds(node)
