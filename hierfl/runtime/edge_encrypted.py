"""The edge's cloud link under CKKS (`[privacy] homomorphic = true`): the edge holds the global model.

The cloud sends encrypted aggregates instead of models. `EncryptedUplink` decrypts each
onto its copy of the global model (once per version), answers with the plant's test
scores (rounded: `evaluations.release_evaluation`), starts the round from that model, and
sends its summaries encrypted; the final aggregate ends the run and the model is written
to `--model-out`. Its checkpoint state is the decrypted model and its version. The
protocol and its checks are `hierfl.runtime.encrypted`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hierfl.data.census import Census
from hierfl.data.evaluation import make_plant_evaluator
from hierfl.data.plan import TestSet, standardized
from hierfl.errors import HomomorphicError
from hierfl.kernels import ravel, unravel
from hierfl.runtime import encrypted, protocol
from hierfl.runtime.edge_uplink import CloudModel, FromCloud
from hierfl.runtime.evaluations import release_evaluation
from hierfl.runtime.node import NodeModel
from hierfl.topology import Plant, Topology


class EncryptedUplink:
    """The plants' secret CKKS context, the global model (`version`, flat `[P]`) and the plant's test examples."""

    def __init__(
        self,
        topology: Topology,
        plant: Plant,
        net: NodeModel,
        test: TestSet,
        index: int,
        log: logging.Logger,
        *,
        he_context: Path | None,
        model_out: Path | None,
    ):
        if he_context is None:
            raise HomomorphicError(
                "privacy.homomorphic: an edge needs the plants' secret CKKS context: --he-context ckks-secret.bin (`hierfl keys ckks`)"
            )
        parameters = encrypted.he.CkksParameters.of(topology.privacy)
        problem = encrypted.layout_problem(topology, net.spec, topology.runtime.max_message_bytes)
        if problem:
            raise HomomorphicError(problem)
        context = encrypted.load_plant_context(he_context, topology)
        self.cipher = encrypted.PlantCipher(context, net.spec, parameters)
        layout = encrypted.cipher_layout(net.spec, parameters, allow_empty=True)
        self.layouts = {protocol.HE_AGGREGATE: (encrypted.CODEC, layout)}
        self.net, self.plant, self.log = net, plant.name, log
        self.clip_norm = topology.privacy.clip_norm
        self.residual_size = net.codecs.edge_to_cloud.residual_size
        self.flat = np.asarray(ravel(net.spec, net.initial_params))
        self.version = 0
        self.evaluation: tuple[int, dict] | None = None
        self.model_out = Path(model_out) if model_out is not None else None
        self.test, self.index = test, index
        self.evaluate = make_plant_evaluator(net.model, net.task, test, index)
        log.info(
            "homomorphic encryption: CKKS key %s; summaries leave encrypted", self.cipher.key_id
        )

    def warm_up(self) -> None:
        self.evaluate(self.net.zero_params())

    def use_census(self, found: Census) -> None:
        """Evaluates on the plant's test data standardized by the federation's census."""
        test = standardized(self.test, found)
        self.evaluate = make_plant_evaluator(self.net.model, self.net.task, test, self.index)

    def receive(self, message: protocol.Message) -> FromCloud:
        """A checked `he_aggregate`: decrypted onto the global model (once per version), its
        scores sent up, then the round starts from it (or, `final`, the model is written).

        An aggregate under another key, or one this edge cannot catch up to, raises
        HomomorphicError: the edge could never contribute again, and one that kept sending
        heartbeats would hold up every cloud round until its deadline.
        """
        version = int(message.header["model_version"])
        catching_up = message.header.get("catch_up") is True
        try:
            changed = self._apply(message, version, evaluate=not catching_up)
        except HomomorphicError as error:  # it stops, naming why (exit status 2)
            self.log.error(
                "cannot use the cloud's aggregate for round %d: %s", message.round, error
            )
            raise HomomorphicError(
                f"plant {self.plant}: cannot use the cloud's aggregate for round {message.round}: {error}"
            ) from None
        if catching_up:
            self.log.info("caught up to global model version %d", version)
            return FromCloud(changed=changed)
        replies = ()
        if self.evaluation is not None and self.evaluation[0] == version:
            replies = ((protocol.EVALUATION, {"round": version, **self.evaluation[1]}),)
        if message.header.get("final") is True:
            self._write_final_model()
            return FromCloud(replies=replies, changed=changed)
        model = CloudModel(message.round, version, self.flat, self.clip_norm)
        return FromCloud(model, replies, changed)

    def _apply(self, message: protocol.Message, version: int, *, evaluate: bool) -> bool:
        """Adds the aggregate to the model if it makes the next version; True if it did."""
        self.cipher.check_key(message)
        if not encrypted.catch_up(self.version, version).apply:
            return False
        self.flat = self.flat + self.cipher.decrypt(message)
        self.version = version
        if evaluate:
            scores = self.evaluate(unravel(self.net.spec, self.flat))
            self.evaluation = (
                version,
                release_evaluation(scores, digits=encrypted.EVALUATION_DIGITS),
            )
        return True

    def _write_final_model(self) -> None:
        if self.model_out is None:
            self.log.warning(
                "final global model (version %d) not written: no --model-out", self.version
            )
            return
        from hierfl.runs.checkpoint import save_params

        save_params(self.model_out, unravel(self.net.spec, self.flat))
        self.log.info("final global model (version %d) written to %s", self.version, self.model_out)

    def summary(
        self, edge_flat, base_flat, weight: float, round: int, key_index: int, extra: list
    ) -> tuple[str, dict[str, Any]]:
        """An `he_summary` of `edge_flat - base_flat` (no codec, no extra frames under CKKS)."""
        delta = np.asarray(edge_flat, np.float32) - np.asarray(base_flat, np.float32)
        return protocol.HE_SUMMARY, self.cipher.summary_fields(delta, weight, round)

    def state(self) -> dict[str, np.ndarray]:
        residual = np.zeros(self.residual_size, np.float32)  # the file's layout in both modes
        return {"residual": residual, "global_flat": self.flat, "global_version": self.version}

    def close(self) -> None:
        pass

    def restore(self, state) -> str:
        if "global_version" in state:
            self.flat = np.array(state["global_flat"], np.float32)
            self.version = int(state["global_version"])
        return f" (global model version {self.version})"
