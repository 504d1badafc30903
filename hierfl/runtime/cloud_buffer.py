"""The cloud's global model under `[buffered_aggregation]`: summaries into a buffer, applied when full.

A `PlainAggregation` holds the model, the server state, the checkpoints, the pending scores and
the publisher; this mode adds each decoded summary to a running buffer with its staleness
discount (`hierfl.core.buffered.make_buffer_add`) and applies the server step to the buffer
(`make_buffer_apply`) when its schedule (`cloud_async.BufferedRounds`) says so: the very
functions the simulator calls. A checkpoint is written after each application, with the
last cycle taken from each plant in its record (`cycles_taken`): after a crash the buffer
in progress is lost, never applied twice, and a summary already applied is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from hierfl.core import buffered
from hierfl.data.census import Census
from hierfl.runtime import protocol
from hierfl.runtime.cloud_modes import CLOUD, CloudShell, Resumed
from hierfl.runtime.cloud_plain import PlainAggregation
from hierfl.runtime.node import NodeModel
from hierfl.topology import Topology


class BufferedAggregation:
    """The global model, the buffer of summaries not applied yet, and the steps that move them."""

    summary_kind = protocol.SUMMARY

    def __init__(
        self,
        topology: Topology,
        net: NodeModel,
        run_dir: Path,
        shell: CloudShell,
        publish: str | None,
    ):
        self.plain = PlainAggregation(topology, net, run_dir, shell, publish)
        self.net, self.shell = net, shell
        self.layouts = self.plain.layouts
        self.add = jax.jit(buffered.make_buffer_add(topology.aggregation.cloud))
        self.step = jax.jit(buffered.make_buffer_apply(net.algorithm, net.spec))
        self.buffer = buffered.empty_buffer(net.spec.size)
        self.cycles_taken: dict[str, int] = {}

    @property
    def clip_norm(self) -> float:
        return float(self.plain.clip_norm)

    def warm_up(self) -> None:
        plain = self.plain
        flat = plain.ravel(plain.params)
        warm = self.add(self.buffer, flat, 1.0, 1.0)
        self.step(plain.params, plain.server_state, warm)

    def restore(self) -> Resumed | None:
        resumed = self.plain.restore()
        if resumed is not None:
            taken = self.plain.restored_record.get("cycles_taken", {})
            self.cycles_taken = {str(k): int(v) for k, v in taken.items()}
        return resumed

    def frames(self, version: int, cycle: int, evaluate: bool = False) -> list:
        """A `model` message of global model `version` that starts an edge's `cycle` (or, with
        `evaluate`, that it only scores)."""
        plain = self.plain
        return protocol.encode(
            protocol.MODEL,
            CLOUD,
            round=cycle,
            model_version=version,
            spec=self.net.spec,
            codec="none",
            arrays=[np.asarray(plain.ravel(plain.params))],
            **({"evaluate": True} if evaluate else {}),
        )

    def take(self, message: protocol.Message, factor: float) -> None:
        """Adds a checked summary to the buffer, its weight discounted by `factor`."""
        if self.net.codecs.edge_to_cloud.name == "none":
            delta = message.arrays[0]
        else:
            delta = self.plain.decode(self.net.payload(message.arrays))
        self.buffer = self.add(self.buffer, delta, float(message.header["weight"]), factor)

    def apply(self, version: int, record: dict[str, Any]) -> None:
        """The server step on the buffer, making global model `version`; checkpointed with
        `record`, which waits for the plants' scores of it."""
        plain = self.plain
        plain.params, plain.server_state = self.step(plain.params, plain.server_state, self.buffer)
        self.buffer = buffered.empty_buffer(self.net.spec.size)
        # Not forced: versions can follow faster than the edges' scores of them come back,
        # and a record written before every live edge's evaluation would score part of the
        # test set. A record waits (in order) until they all came; `finish` forces the rest.
        plain.scores.complete(self.shell.alive_edges())
        plain.checkpoints.save(version, plain.params, plain.server_state, record, plain.variate)
        plain.scores.add(version, record)
        if plain.publisher is not None:
            plain.models[version] = plain.params

    # -- as the plain mode ------------------------------------------------------------------------

    def use_census(self, found: Census) -> None:
        self.plain.use_census(found)

    def hello(self, edge: str, held: int, round: int, done: bool) -> bool:
        return False

    def evaluation(self, message: protocol.Message, round: int) -> None:
        self.plain.evaluation(message, round)

    def finish(self, round: int) -> None:
        self.plain.finish(round)

    def close(self) -> None:
        self.plain.close()
