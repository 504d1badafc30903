"""A model per plant: per-plant layers (FedPer in the hierarchy) and fine-tuning, as masks over
the flat parameter buffer and the pure steps the engines call.

`[personalization] method = "plant-layers"` names layers (parameter paths or their prefixes,
`layer_mask`) that each plant keeps for itself. A cloud round then runs as usual except:

    merge         the model an edge sends its devices is the global model with the plant's
                  own values in the personal layers
    shared_part   what the edge sends up is its model with the personal layers put back to
                  the base it started from, so its summary's personal part is exactly zero;
                  the edge keeps that part of its aggregate as the plant's personal layers
    mask_personal the cloud zeroes the personal part of every decoded summary (a lossy codec
                  could make it nonzero), so the global model's personal layers stay at
                  their initial values and the cloud learns nothing of them

Edges aggregate the whole model over their devices each edge round, as without
personalization; the summary's weight is unchanged. The global model is therefore the
shared layers trained by everyone with the *initial* personal layers: the cloud holds no
trained head, and a plant's deployable model is its personalized one (`merge`).

`method = "fine-tune"` federates as without personalization for `cloud_rounds - rounds`
rounds; in each of the last `rounds` every plant's devices train from the plant's model and
its edge aggregates them (edge rounds as usual), with no cloud step. `fine_tune_mask` names
the layers adapted; `frozen_apply` gives the model through which devices train only those,
and `adapting_only` wraps the edge's release so a lossy codec cannot move the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.kernels import FlatSpec, unravel
from hierfl.topology import Topology


def matches(name: str, layer: str) -> bool:
    """Whether parameter `name` (`head/kernel`) belongs to `layer` (`head`, or the name itself)."""
    return name == layer or name.startswith(layer + "/")


def unknown_layers(names: Sequence[str], layers: Sequence[str]) -> list[str]:
    """The entries of `layers` that name no parameter of `names` (the model's parameter paths)."""
    return [layer for layer in layers if not any(matches(name, layer) for name in names)]


def layer_mask(spec: FlatSpec, layers: Sequence[str]) -> np.ndarray:
    """`[P]` bool: True at the flat positions of the parameters in `layers`."""
    mask = np.zeros(spec.size, bool)
    for name, offset, size in zip(spec.names, spec.offsets, spec.sizes):
        if any(matches(name, layer) for layer in layers):
            mask[offset : offset + size] = True
    return mask


def topology_mask(topology: Topology, spec: FlatSpec) -> np.ndarray | None:
    """The `[P]` mask of the topology's per-plant layers; None unless method "plant-layers"."""
    if not topology.personalization.keeps_layers:
        return None
    return layer_mask(spec, topology.personalization.layers)


def fine_tune_mask(topology: Topology, spec: FlatSpec) -> np.ndarray | None:
    """The `[P]` mask of the layers "fine-tune" adapts (every parameter when `layers` is
    empty); None unless method "fine-tune"."""
    personalization = topology.personalization
    if not personalization.fine_tunes:
        return None
    if not personalization.layers:
        return np.ones(spec.size, bool)
    return layer_mask(spec, personalization.layers)


def merge(global_flat: jax.Array, personal_flat: jax.Array, mask: jax.Array) -> jax.Array:
    """The plant's model `[P]`: `personal_flat` in the personal layers, `global_flat` elsewhere."""
    return jnp.where(mask, personal_flat, global_flat)


def shared_part(edge_flat: jax.Array, base_flat: jax.Array, mask: jax.Array) -> jax.Array:
    """`edge_flat` with the personal layers set back to `base_flat`'s: an edge model whose change
    since `base_flat` is zero in the personal layers (what the cloud may see)."""
    return jnp.where(mask, base_flat, edge_flat)


def mask_personal(deltas: jax.Array, mask: jax.Array) -> jax.Array:
    """Summaries `[..., P]` with the personal layers zeroed (the cloud's aggregate excludes them)."""
    return jnp.where(mask, jnp.zeros((), deltas.dtype), deltas)


def frozen_apply(
    apply_fn: Callable[[Any, jax.Array], jax.Array], spec: FlatSpec, adapted: np.ndarray
) -> Callable[[Any, jax.Array], jax.Array]:
    """`apply_fn(params, x)` through which only the parameters inside `adapted` `[P]` get a
    gradient: local SGD from it trains those and leaves the others exactly as they are
    (fine-tuning some layers; `hierfl.core.algorithms.build_algorithm` takes it as the model)."""
    trainable = unravel(spec, jnp.asarray(adapted))

    def apply(params, x):
        held = jax.tree.map(
            lambda w, t: jnp.where(t, w, jax.lax.stop_gradient(w)), params, trainable
        )
        return apply_fn(held, x)

    return apply


def keep_adapted(new_flat: jax.Array, old_flat: jax.Array, adapted: jax.Array) -> jax.Array:
    """`new_flat` `[P]` inside the `adapted` layers, `old_flat` outside them."""
    return jnp.where(adapted, new_flat, old_flat)


def adapting_only(edge_release: Callable[..., Any], mask: np.ndarray) -> Callable[..., Any]:
    """`edge_release` (`hierfl.core.steps.make_edge_release`) moving only the layers inside
    `mask` (`keep_adapted`): devices trained through `frozen_apply` send zeros outside it,
    but a lossy codec's decoded update need not be, and the frozen layers must not move."""

    def release(edge_flat, summary, *rest):
        outcome = edge_release(edge_flat, summary, *rest)
        return outcome._replace(edge_flat=keep_adapted(outcome.edge_flat, edge_flat, mask))

    return release
