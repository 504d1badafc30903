"""How the cloud aggregates: one object per mode, chosen once at start-up (`cloud_mode`).

`PlainAggregation` (`cloud_plain`) holds the global model and applies the server step to
the decoded summaries; `EncryptedAggregation` (`cloud_encrypted`) adds CKKS ciphertexts and
holds no plaintext model. The shell (`cloud.CloudNode`) owns the sockets, membership,
deadlines and the run's files, and calls the same few methods of either (`CloudMode`);
a mode reaches back only through `CloudShell`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from hierfl.data.census import Census
from hierfl.data.evaluation import Scores
from hierfl.errors import HomomorphicError
from hierfl.runtime import protocol
from hierfl.runtime.node import NodeModel
from hierfl.topology import Topology

CLOUD = "cloud"
"""The cloud's sender name on the wire."""


class Closing(NamedTuple):
    """A cloud round as the shell closes it.

    `enough`: `min_edge_participation` was met, so the summaries are applied (else the model
    stays as it is, and the shell has said so). `summaries`: this round's summary headers by
    edge. `models_sent`: global models sent this round. `record(scores, clip_norm)`: the
    round's record (`hierfl.runs.records.round_record` plus the runtime's fields).
    """

    round: int
    enough: bool
    summaries: Mapping[str, Mapping[str, Any]]
    edges: int
    models_sent: int
    record: Callable[[Scores, float], dict[str, Any]]


class Resumed(NamedTuple):
    """Where a restored checkpoint leaves the cloud: the next round and the seconds trained before."""

    round: int
    elapsed_seconds: float


class CloudShell(Protocol):
    """What a mode may ask of the cloud's shell."""

    log: logging.Logger
    rounds: int  # the cloud rounds this run trains

    def send(self, edge: str, frames: list) -> None: ...

    def alive_edges(self) -> set[str]: ...

    def write(self, record: Mapping[str, Any]) -> None: ...

    def serve(self, done: Callable[[], bool], seconds: float) -> None: ...


class CloudMode(Protocol):
    """One way of aggregating the edges' summaries; every method is called by the shell only."""

    summary_kind: str
    """The message kind an edge's summary has in this mode."""
    layouts: Mapping[str, tuple[str, Any]]
    """What `protocol.parse_message` checks a summary's frames (and an evaluation's counts) against."""

    def warm_up(self) -> None:
        """Compiles what a round runs, before serving."""

    def restore(self) -> Resumed | None:
        """Loads the last checkpoint and rewrites `metrics.jsonl` to match; None if there is none."""

    def open_round(self, round: int) -> list:
        """Clears the summary stack; the frames that open `round` at every edge."""

    def take(self, row: int, message: protocol.Message, weight: float) -> None:
        """Stores a checked summary in `row` of the stack with `weight` (stale ones already discounted)."""

    def close_round(self, closing: Closing) -> None:
        """Aggregates the stack, checkpoints, and writes (or holds back) the round's record."""

    def use_census(self, found: Census) -> None:
        """The federation's census, before round 1 (example count; channels' mean and std)."""
        ...

    def hello(self, edge: str, held: int, round: int, done: bool) -> bool:
        """An edge (re)started holding global model `held`; whether it needs the open round's frames again."""

    def evaluation(self, message: protocol.Message, round: int) -> None:
        """An edge's test scores of a global model; MessageRejected where the mode expects none."""

    def finish(self, round: int) -> None:
        """After the last round (`round` - 1): the final model is written, by the cloud or the edges."""

    def close(self) -> None:
        """Releases files and sockets the mode opened."""


def cloud_mode(
    topology: Topology,
    net: NodeModel,
    run_dir: Path,
    shell: CloudShell,
    *,
    publish: str | None,
    he_context: Path | None,
) -> CloudMode:
    """The mode the topology asks for: encrypted under `[privacy] homomorphic`, a buffer
    (`[buffered_aggregation]`, `cloud_buffer`), else plain."""
    if topology.privacy.homomorphic:
        from hierfl.runtime.cloud_encrypted import EncryptedAggregation

        return EncryptedAggregation(topology, net, run_dir, shell, he_context, publish)
    if he_context is not None:
        raise HomomorphicError("--he-context is for topologies with [privacy] homomorphic = true")
    if topology.buffered is not None:
        from hierfl.runtime.cloud_buffer import BufferedAggregation

        return BufferedAggregation(topology, net, run_dir, shell, publish)
    from hierfl.runtime.cloud_plain import PlainAggregation

    return PlainAggregation(topology, net, run_dir, shell, publish)
