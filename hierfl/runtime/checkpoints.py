"""The cloud's checkpoints: one orbax checkpoint per finished cloud round.

A checkpoint holds the global params, the server optimizer's state (its leaves, rebuilt
on restore with the structure of a fresh `server_init`), SCAFFOLD's cloud variate (empty
for other algorithms) and that round's metrics record.
The round number is the checkpoint's step; every random key of the next round derives
from (seed, round) alone (`hierfl.core.rng`), so it is all the RNG state there is. Orbax
writes a step to a temporary directory and renames it when complete, so a cloud killed
mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from hierfl.errors import RunDirError

logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs every save at INFO through absl

KEEP = 2


class CloudState(NamedTuple):
    """A restored checkpoint: the last finished round, params, server state, and that round's record."""

    round: int
    params: Any
    server_state: Any
    record: dict[str, Any]
    variate: np.ndarray


class CloudCheckpoints:
    """`save(round, params, server_state, record, variate)` after each round; `latest(params, server_state, variate)` to resume."""

    def __init__(self, directory: Path):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=KEEP, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(
        self,
        round: int,
        params: Any,
        server_state: Any,
        record: dict[str, Any],
        variate: np.ndarray,
    ) -> None:
        ocp = self._ocp
        state = _state(params, server_state, variate)
        self._manager.save(
            round,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
        )
        self._manager.wait_until_finished()

    def latest(self, params: Any, server_state: Any, variate: np.ndarray) -> CloudState | None:
        """The newest checkpoint, restored into the structure of `params`, `server_state` and `variate`; None if there is none."""
        step = self._manager.latest_step()
        if step is None:
            return None
        ocp = self._ocp
        template = _state(params, server_state, variate)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(template), record=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise RunDirError(
                f"{self.directory}: cannot restore cloud checkpoint {step} ({err})"
            ) from err
        leaves = [
            restored.state["server_state"][key]
            for key in sorted(restored.state["server_state"], key=int)
        ]
        server = jax.tree.unflatten(jax.tree.structure(server_state), leaves)
        return CloudState(
            int(step),
            restored.state["params"],
            server,
            dict(restored.record),
            restored.state.get("variate", np.zeros(0, np.float32)),
        )

    def close(self) -> None:
        self._manager.close()


def _state(params: Any, server_state: Any, variate: np.ndarray) -> dict[str, Any]:
    """What a checkpoint stores as arrays; an empty variate is left out (orbax refuses zero-size arrays)."""
    state = {"params": _numpy(params), "server_state": _leaves(server_state)}
    if np.size(variate):
        state["variate"] = np.asarray(variate)
    return state


def _numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def _leaves(tree: Any) -> dict[str, np.ndarray]:
    return {str(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}
