"""Simulated faulty devices, for testing robust aggregation: which devices, and what they send.

The topology's `[attack]` table makes `floor(fraction * devices)` devices of every plant
misbehave, chosen by the federation seed: `sign_flip` sends `-scale` times its honest
update (a device pushing the model the wrong way, hard), `gaussian` sends noise of
standard deviation `scale` (a broken sensor feeding garbage). Their updates are finite,
so only an aggregation rule can stop them (the non-finite screen does not).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hierfl.topology import Attack, Topology


def attacker_mask(topology: Topology) -> np.ndarray:
    """`[num_devices]` bool: which devices misbehave under the topology's `[attack]`."""
    attack = topology.attack
    mask = np.zeros(topology.num_devices, bool)
    if attack.kind == "none":
        return mask
    rng = np.random.default_rng([topology.federation.seed, 4])
    for plant in topology.plants:
        indices = np.array([device.index for device in plant.devices])
        count = int(np.floor(attack.fraction * len(indices)))
        mask[rng.choice(indices, size=count, replace=False)] = True
    return mask


def corrupt(attack: Attack, delta: jax.Array, key: jax.Array) -> jax.Array:
    """What a faulty device sends instead of its honest flat `delta`."""
    if attack.kind == "sign_flip":
        return -attack.scale * delta
    if attack.kind == "gaussian":
        return attack.scale * jax.random.normal(key, delta.shape, delta.dtype)
    return delta


def apply_attack(
    attack: Attack, deltas: jax.Array, attacker: jax.Array, keys: jax.Array
) -> jax.Array:
    """A `[K, P]` stack with the rows of `attacker` devices replaced by what they send."""
    if attack.kind == "none":
        return deltas
    corrupted = jax.vmap(lambda delta, key: corrupt(attack, delta, key))(deltas, keys)
    return jnp.where(attacker[:, None], corrupted, deltas)
