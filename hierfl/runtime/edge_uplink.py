"""How an edge talks to the cloud: what it takes from it, and how its summaries leave.

`PlainUplink` takes `model` messages (the global model, the clip norm, SCAFFOLD's `c`)
and sends summaries encoded with the uplink's codec (`steps.make_edge_upload`, jitted
once, with its error-feedback residual). `EncryptedUplink` (`[privacy] homomorphic`,
`hierfl.runtime.edge_encrypted`) holds the global model itself and takes encrypted
aggregates instead. Both answer a cloud message with a `FromCloud`, so the edge's shell
never asks which one it has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.core import personal, steps
from hierfl.data.census import Census
from hierfl.data.evaluation import make_plant_evaluator
from hierfl.data.plan import TestSet, standardized
from hierfl.errors import HomomorphicError
from hierfl.kernels import ravel, unravel
from hierfl.runs.checkpoint import save_params
from hierfl.runtime import protocol
from hierfl.runtime.evaluations import release_evaluation
from hierfl.runtime.node import NodeModel
from hierfl.runtime.publishing import RoundPublisher
from hierfl.topology import Plant, Topology


class CloudModel(NamedTuple):
    """A model to run cloud round `round` from: the global model's `version`, values `[P]`
    (the plant's own model in a fine-tuning round, `fine_tune`), the clip norm, and the
    frames every model an edge sends its devices adds (SCAFFOLD's `c`)."""

    round: int
    version: int
    flat: np.ndarray
    clip_norm: float
    variate_frames: tuple[np.ndarray, ...] = ()
    fine_tune: bool = False


class FromCloud(NamedTuple):
    """What an edge does with a message from the cloud: checkpoint if its state `changed`,
    send `replies` (`(kind, fields)`) up, then start a cloud round from `model`."""

    model: CloudModel | None = None
    replies: tuple[tuple[str, dict[str, Any]], ...] = ()
    changed: bool = False


class Uplink(Protocol):
    """What the shell asks of a cloud link (see the module docstring)."""

    layouts: dict  # `protocol.parse_message` layouts of the cloud messages it takes
    version: int  # the global model version the edge holds (its `hello` says it)

    def warm_up(self) -> None: ...
    def use_census(self, found: Census) -> None: ...
    def receive(self, message: protocol.Message) -> FromCloud: ...
    def summary(
        self, edge_flat, base_flat, weight: float, round: int, key_index: int, extra: list
    ) -> tuple[str, dict[str, Any]]: ...
    def state(self) -> dict[str, np.ndarray]: ...
    def restore(self, state) -> str: ...
    def close(self) -> None: ...


def edge_uplink(
    topology: Topology,
    plant: Plant,
    net: NodeModel,
    test: Callable[[], TestSet],
    log: logging.Logger,
    *,
    he_context: Path | None,
    model_out: Path | None,
) -> Uplink:
    """The plant's cloud link; `test()` reads the plant's test examples (the edge evaluates
    each global model on them: `hierfl.runtime.evaluations`)."""
    index = topology.plant_names.index(plant.name)
    if topology.privacy.homomorphic:
        from hierfl.runtime.edge_encrypted import EncryptedUplink

        return EncryptedUplink(
            topology,
            plant,
            net,
            test(),
            index,
            log,
            he_context=he_context,
            model_out=model_out,
        )
    if he_context is not None or (model_out is not None and not topology.personalization.enabled):
        raise HomomorphicError(
            "--he-context and --model-out are for topologies with [privacy] homomorphic = true "
            "(--model-out also for [personalization])"
        )
    plain = PlainUplink(topology, net, index, test())
    if not topology.personalization.enabled:
        return plain
    publisher = None
    if plant.publish is not None:
        publisher = RoundPublisher(plant.publish, net, topology, plant=plant.name)
        log.info("publishing %s's models on %s", plant.name, plant.publish)
    plant_models = PlantModels(plain, model_out, publisher)
    if topology.personalization.fine_tunes:
        return FineTuneUplink(plain, plant_models)
    return PlantLayersUplink(plain, personal.topology_mask(topology, net.spec), plant_models)


class PlainUplink:
    """The cloud sends models; summaries leave through the uplink's codec. Each new global
    model is evaluated on the plant's test examples and its sums sent up (`evaluation`)."""

    version = 0  # a plain edge holds no global model between rounds

    def __init__(self, topology: Topology, net: NodeModel, index: int, test: TestSet):
        codec = net.codecs.edge_to_cloud
        self.net, self.index, self.codec = net, index, codec.name
        self.default_clip_norm = topology.privacy.clip_norm
        self.layouts = {protocol.MODEL: ("none", net.model_layout)}
        self.upload = jax.jit(steps.make_edge_upload(codec, topology.federation.seed))
        self.residual = np.zeros(codec.residual_size, np.float32)
        self.test = test
        self.evaluate = make_plant_evaluator(net.model, net.task, test, index)
        self.evaluation: tuple[int, dict[str, Any]] | None = None

    def use_census(self, found: Census) -> None:
        """Evaluates on the plant's test data standardized by the federation's census."""
        test = standardized(self.test, found)
        self.evaluate = make_plant_evaluator(self.net.model, self.net.task, test, self.index)

    def warm_up(self) -> None:
        flat = jnp.zeros(self.net.spec.size, jnp.float32)
        self.upload(flat, flat, jnp.float32(0), self.residual, jnp.int32(0), jnp.int32(self.index))
        self.evaluate(self.net.zero_params())

    def receive(self, message: protocol.Message) -> FromCloud:
        """A checked `model`: its scores on the plant's test data sent up (version 1 on),
        then its round started (unless it is the `final` model, which only is evaluated)."""
        header = message.header
        version = int(header["model_version"])
        replies = self._evaluation(version, message.arrays[0])
        if header.get("final") is True or header.get("evaluate") is True:
            return FromCloud(replies=replies)  # a model to score, which no round starts from
        model = CloudModel(
            message.round,
            version,
            message.arrays[0],
            protocol.header_number(header, "clip_norm", self.default_clip_norm),
            tuple(np.array(a) for a in message.arrays[1:]),
        )
        return FromCloud(model, replies)

    def _evaluation(self, version: int, flat: np.ndarray) -> tuple[tuple[str, dict], ...]:
        """The `evaluation` reply for global model `version` (computed once per version)."""
        if version < 1:
            return ()  # the initial model: no round's record awaits its scores
        if self.evaluation is None or self.evaluation[0] != version:
            sums = self.evaluate(unravel(self.net.spec, np.asarray(flat)))
            self.evaluation = (version, release_evaluation(sums))
        return ((protocol.EVALUATION, {"round": version, **self.evaluation[1]}),)

    def summary(
        self, edge_flat, base_flat, weight: float, round: int, key_index: int, extra: list
    ) -> tuple[str, dict[str, Any]]:
        """A `summary` of `edge_flat - base_flat` weighted by `weight`, encoded with the key
        of `key_index`, the `extra` frames (SCAFFOLD's variate sum) after the payload."""
        payload, residual = self.upload(
            edge_flat,
            base_flat,
            jnp.float32(weight),
            self.residual,
            jnp.int32(round),
            jnp.int32(key_index),
        )
        self.residual = np.asarray(residual)
        arrays = [*(np.asarray(a) for a in payload), *extra]
        return protocol.SUMMARY, {"spec": self.net.spec, "codec": self.codec, "arrays": arrays}

    def state(self) -> dict[str, np.ndarray]:
        return {"residual": self.residual}

    def close(self) -> None:
        pass

    def restore(self, state) -> str:
        self.residual = np.array(state["residual"], np.float32)
        return ""


class PlantModels:
    """A plant's own model as each global model version makes it: scored on the plant's
    test examples (the `evaluation` marked `personal`, once per version), written to
    `model_out` when given (`hierfl export --plant`) and published to the plant's inference
    servers by `publisher` when given (`plants.publish`)."""

    def __init__(
        self, plain: PlainUplink, model_out: Path | None, publisher: RoundPublisher | None
    ):
        self.plain, self.model_out, self.publisher = plain, model_out, publisher
        self.evaluation: tuple[int, dict[str, Any]] | None = None

    def released(self, version: int, flat: np.ndarray) -> tuple[str, dict]:
        """The plant's model `flat` with global model `version`: saved, published, and its
        `personal` `evaluation`."""
        params = unravel(self.plain.net.spec, flat)
        if self.model_out is not None:
            save_params(self.model_out, params)
        if self.publisher is not None:
            self.publisher.publish(version, params, {})
        if self.evaluation is None or self.evaluation[0] != version:
            self.evaluation = (version, release_evaluation(self.plain.evaluate(params)))
        return protocol.EVALUATION, {"round": version, "personal": True, **self.evaluation[1]}

    def use_census(self, found: Census) -> None:
        if self.publisher is not None:
            self.publisher.use_census(found)

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


class PlantModelUplink:
    """What both personalization uplinks do alike around a `PlainUplink`: the cloud link is
    the plain one, and the plant's own model is scored, saved and published (`PlantModels`)."""

    def __init__(self, plain: PlainUplink, plant_models: PlantModels):
        self.plain, self.plant_models = plain, plant_models
        self.layouts = plain.layouts

    @property
    def version(self) -> int:
        return self.plain.version

    def warm_up(self) -> None:
        self.plain.warm_up()

    def use_census(self, found: Census) -> None:
        self.plain.use_census(found)
        self.plant_models.use_census(found)

    def close(self) -> None:
        self.plant_models.close()


class PlantLayersUplink(PlantModelUplink):
    """`[personalization] plant-layers` around a `PlainUplink`: the edge keeps its plant's
    personal layers (`hierfl.core.personal`). Each global model it receives is evaluated as
    it is and merged with the plant's layers (both `evaluation`s go up, the personalized one
    marked `personal` and sent first: `PlantModels`), and the merged model is what its
    devices train from; a summary sends the change of the shared layers only and keeps the
    personal layers of the edge's model. The personal layers are part of the edge's state
    (`--resume`).
    """

    def __init__(self, plain: PlainUplink, mask: np.ndarray, plant_models: PlantModels):
        super().__init__(plain, plant_models)
        self.mask = mask
        self.personal = np.asarray(ravel(plain.net.spec, plain.net.initial_params))

    def receive(self, message: protocol.Message) -> FromCloud:
        taken = self.plain.receive(message)
        version = int(message.header["model_version"])
        merged = np.asarray(personal.merge(message.arrays[0], self.personal, self.mask))
        replies = taken.replies
        if version >= 1:
            replies = (self.plant_models.released(version, merged), *replies)
        model = taken.model
        if model is not None:
            model = model._replace(flat=merged)
        return taken._replace(model=model, replies=replies)

    def summary(
        self, edge_flat, base_flat, weight: float, round: int, key_index: int, extra: list
    ) -> tuple[str, dict[str, Any]]:
        """The plain summary of the shared layers' change; the personal layers stay here."""
        self.personal = np.asarray(personal.merge(self.personal, edge_flat, self.mask))
        shared = personal.shared_part(edge_flat, base_flat, self.mask)
        return self.plain.summary(shared, base_flat, weight, round, key_index, extra)

    def state(self) -> dict[str, np.ndarray]:
        return {**self.plain.state(), "personal": self.personal}

    def restore(self, state) -> str:
        self.personal = _personal_state(state, self.personal.size)
        return self.plain.restore(state)


class FineTuneUplink(PlantModelUplink):
    """`[personalization] fine-tune` around a `PlainUplink`: federated rounds as without
    it; from the first `model` marked `fine_tune` (the global model after the federated
    rounds) the edge keeps the plant's own model, its devices train from it, and a round
    ends with `tuned` (the summary's statistics, no arrays: the model stays here) instead of
    a summary. Every global model it receives is evaluated, and so is the plant's model
    (the global one until fine-tuning starts: `PlantModels`). The plant's model is part of
    the edge's state (`--resume`).
    """

    def __init__(self, plain: PlainUplink, plant_models: PlantModels):
        super().__init__(plain, plant_models)
        self.personal: np.ndarray | None = None  # the plant's model, once fine-tuning started
        self.tuning = False  # whether the round in progress is a fine-tuning round

    def receive(self, message: protocol.Message) -> FromCloud:
        taken = self.plain.receive(message)
        version = int(message.header["model_version"])
        tuning = protocol.header_flag(message.header, "fine_tune")
        if tuning and self.personal is None:
            self.personal = np.array(message.arrays[0])
        replies = taken.replies
        if version >= 1:
            mine = message.arrays[0] if self.personal is None else self.personal
            replies = (self.plant_models.released(version, mine), *replies)
        model = taken.model
        if model is not None:
            self.tuning = tuning
            if tuning:
                model = model._replace(flat=self.personal, fine_tune=True)
        return taken._replace(model=model, replies=replies)

    def summary(
        self, edge_flat, base_flat, weight: float, round: int, key_index: int, extra: list
    ) -> tuple[str, dict[str, Any]]:
        """The plain summary of a federated round; after a fine-tuning round, the edge's
        model becomes the plant's and only `tuned` goes up."""
        if not self.tuning:
            return self.plain.summary(edge_flat, base_flat, weight, round, key_index, extra)
        self.personal = np.array(edge_flat)
        return protocol.TUNED, {}

    def state(self) -> dict[str, np.ndarray]:
        mine = np.zeros(0, np.float32) if self.personal is None else self.personal
        return {**self.plain.state(), "personal": mine}

    def restore(self, state) -> str:
        if "personal" in state and np.asarray(state["personal"]).size == 0:
            self.personal = None
        else:
            self.personal = _personal_state(state, self.plain.net.spec.size)
        return self.plain.restore(state)


def _personal_state(state, size: int) -> np.ndarray:
    """The plant's model (or personal layers) `[size]` of a saved edge state."""
    if "personal" not in state:
        raise ValueError("no plant model in it (saved without [personalization])")
    personal_flat = np.array(state["personal"], np.float32)
    if personal_flat.shape != (size,):
        raise ValueError(f"a plant model of shape {personal_flat.shape}")
    return personal_flat
