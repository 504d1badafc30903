"""A node's model versions, published as inference artifacts to edge inference servers.

The cloud publishes each round's global model (`hierfl cloud --publish`); with per-plant
layers a plant's edge publishes the plant's own model to `plants.publish`, where only that
plant's servers subscribe (and a server takes only models of the plant it serves:
`hierfl.inference.updates.incompatibility`). See `hierfl.inference.publisher` for the wire.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hierfl.data.census import Census
from hierfl.runtime.node import NodeModel
from hierfl.topology import Topology


class RoundPublisher:
    """Publishes a model per round as an inference artifact: the global model, or with `plant`
    that plant's own (the artifact's `run` then names it).

    The model's inference function is exported once (`jax.export`; the params are its
    arguments), so each round only packs new params with a new version number.
    """

    def __init__(self, address: str, net: NodeModel, topology: Topology, plant: str | None = None):
        from hierfl.inference.publisher import ModelPublisher

        self.net, self.run = net, {"name": topology.federation.name}
        if plant is not None:
            self.run["plant"] = plant
        self.template = self._export(None)
        self.publisher = ModelPublisher(address)

    def _export(self, found: Census | None):
        from hierfl.inference.export import export_model

        net = self.net
        return export_model(
            net.model, net.initial_params, net.task, version=0, run=self.run, census=found
        )

    def use_census(self, found: Census) -> None:
        """Exports the function again, standardizing its input with the census."""
        if found.standardizes:
            self.template = self._export(found)

    def publish(self, round: int, params: Any, metrics: Mapping[str, Any]) -> None:
        """Sends `params` as version `round`, with `metrics` (and the round) in its header."""
        from hierfl.runs.checkpoint import flatten_params

        meta = dataclasses.replace(
            self.template.meta, version=round, metrics={**metrics, "round": round}
        )
        self.publisher.publish(
            dataclasses.replace(self.template, meta=meta, params=flatten_params(params))
        )

    def close(self) -> None:
        self.publisher.close()
