"""FedAvg / HierFAVG and FedSGD as pure functions over params pytrees, and the local
training loop every device algorithm shares.

An algorithm is the device's and the cloud's share of a round, as pure functions:

- `local_update(params, data, key, correction=None) -> LocalResult`: a device trains its
  local steps of SGD from `params` and returns its delta (new - old), its weight (example
  count) and its mean training loss. `correction` is a pytree added to every gradient
  (SCAFFOLD's `c - c_i`; None for the others).
- `server_update(params, state, summary) -> (params, state)`: the cloud applies an optax
  transformation to the negated mean delta (FedAvg is SGD with learning rate 1 on it).

Aggregation at the edge and the cloud is the tier's rule (`hierfl.core.rules`), the same for
every algorithm. A `Summary` (a weighted sum of deltas and its total weight) is what every
tier passes up, so aggregation composes to any depth; `hierfl.core.steps` runs a whole round.

FedSGD is the special case of one local step on the device's full data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]
ExampleLoss = Callable[[jax.Array, jax.Array], jax.Array]


class DeviceData(NamedTuple):
    """One device's training data, padded: x `[N, ...]`, y `[N]`, the first `count` real.

    `steps` is the device's compute budget, the local steps it runs per edge round (at
    most the algorithm's `local_steps`); None runs all `local_steps`.
    """

    x: jax.Array
    y: jax.Array
    count: jax.Array
    steps: jax.Array | None = None


class LocalResult(NamedTuple):
    """What a device sends up after local training."""

    delta: Params
    weight: jax.Array
    loss: jax.Array


class Summary(NamedTuple):
    """An aggregated update: `delta_sum` = sum of weight * delta, and the total `weight`."""

    delta_sum: Params
    weight: jax.Array


class Algorithm(NamedTuple):
    """A federated algorithm: the pure functions every tier calls, with hyperparameters bound.

    `variate_delta(delta, steps, cloud_variate) -> change of the device's variate` is set
    only for algorithms with control variates (SCAFFOLD); see `hierfl.core.algorithms.scaffold`.
    """

    name: str
    local_update: Callable[..., LocalResult]
    server_init: Callable[[Params], optax.OptState]
    server_update: Callable[[Params, optax.OptState, Summary], tuple[Params, optax.OptState]]
    variate_delta: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None

    @property
    def control_variates(self) -> bool:
        return self.variate_delta is not None


def screen_nonfinite(result: LocalResult) -> tuple[LocalResult, jax.Array]:
    """Neutralises a result whose delta or loss is not finite: `(result, ok)`.

    A NaN or inf update (a diverged device, a corrupted sensor batch) gets weight 0 and a
    zero delta, so it counts as a device that did not answer and can never reach an
    aggregate; `ok` says whether it was kept. Works on one result (vmap it for a stack).
    """
    ok = jnp.isfinite(result.loss)
    for leaf in jax.tree.leaves(result.delta):
        ok = ok & jnp.all(jnp.isfinite(leaf))
    delta = jax.tree.map(lambda d: jnp.where(ok, d, jnp.zeros_like(d)), result.delta)
    return LocalResult(
        delta, jnp.where(ok, result.weight, 0.0), jnp.where(ok, result.loss, 0.0)
    ), ok


def mean_delta(summary: Summary) -> Params:
    """The weighted mean delta of a summary; zeros when nobody contributed (weight 0)."""
    scale = jnp.where(summary.weight > 0, 1.0 / jnp.maximum(summary.weight, 1e-30), 0.0)
    return jax.tree.map(lambda s: s * scale.astype(s.dtype), summary.delta_sum)


def apply_summary(params: Params, summary: Summary) -> Params:
    """The aggregated model of an edge: its params moved by the summary's mean delta."""
    return jax.tree.map(jnp.add, params, mean_delta(summary))


def edge_result(edge_params: Params, global_params: Params, weight: jax.Array) -> LocalResult:
    """What an edge sends to the cloud after its edge rounds, before any encoding.

    Its model's change since the global model it started from, with the weight of the
    examples it aggregated (`weight`). Works on one edge or a stack of edges (leading
    axis E, with `global_params` broadcast).
    """
    delta = jax.tree.map(jnp.subtract, edge_params, global_params)
    return LocalResult(delta, weight, jnp.zeros_like(weight))


def make_local_update(
    apply_fn: ApplyFn,
    example_loss: ExampleLoss,
    *,
    local_steps: int,
    batch_size: int,
    learning_rate: float,
    full_batch: bool = False,
    proximal_mu: float = 0.0,
    normalize_to: float | None = None,
) -> Callable[..., LocalResult]:
    """Local SGD on one device: `local_update(params, data, key, correction=None)`.

    Mini-batches walk a fresh random permutation of the device's `count` examples
    (epoch-style, wrapping around), so every example is seen before any repeats. With
    `full_batch`, each step uses all `count` examples (padding masked out). The device
    runs `data.steps` of the `local_steps` steps (all of them when None); the rest leave
    its parameters alone.

    Every gradient gets `proximal_mu * (w - params)` added (FedProx's proximal term
    `mu/2 ||w - params||^2`) and `correction` (SCAFFOLD's control-variate correction).
    With `normalize_to`, the delta is rescaled to `normalize_to / steps` of itself
    (FedNova: every device's update counts as if it ran `normalize_to` steps).
    """
    tx = optax.sgd(learning_rate)

    def batch_loss(params, x, y, mask):
        losses = example_loss(apply_fn(params, x), y)
        return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    def local_update(
        params: Params, data: DeviceData, key: jax.Array, correction: Params | None = None
    ) -> LocalResult:
        capacity = data.y.shape[0]
        valid = jnp.arange(capacity) < data.count
        steps = (
            jnp.int32(local_steps) if data.steps is None else jnp.minimum(data.steps, local_steps)
        )
        if full_batch:
            batches = jnp.broadcast_to(jnp.arange(capacity), (local_steps, capacity))
            mask = valid.astype(jnp.float32)
        else:
            order = jnp.argsort(jnp.where(valid, jax.random.uniform(key, (capacity,)), 2.0))
            positions = jnp.arange(local_steps * batch_size).reshape(local_steps, batch_size)
            batches = order[positions % jnp.maximum(data.count, 1)]
            mask = jnp.ones((batch_size,), jnp.float32)

        def step(carry, step_and_batch):
            p, opt_state = carry
            index, batch = step_and_batch
            loss, grads = jax.value_and_grad(batch_loss)(p, data.x[batch], data.y[batch], mask)
            if proximal_mu:
                grads = jax.tree.map(lambda g, w, w0: g + proximal_mu * (w - w0), grads, p, params)
            if correction is not None:
                grads = jax.tree.map(jnp.add, grads, correction)
            updates, new_state = tx.update(grads, opt_state, p)
            active = index < steps
            keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731
            new_p = jax.tree.map(keep, optax.apply_updates(p, updates), p)
            return (new_p, jax.tree.map(keep, new_state, opt_state)), jnp.where(active, loss, 0.0)

        (trained, _), losses = jax.lax.scan(
            step, (params, tx.init(params)), (jnp.arange(local_steps), batches)
        )
        delta = jax.tree.map(jnp.subtract, trained, params)
        if normalize_to is not None:
            scale = normalize_to / jnp.maximum(steps, 1).astype(jnp.float32)
            delta = jax.tree.map(lambda d: d * scale.astype(d.dtype), delta)
        loss = losses.sum() / jnp.maximum(steps, 1).astype(jnp.float32)
        return LocalResult(delta, data.count.astype(jnp.float32), loss)

    return local_update


def make_server_update(tx: optax.GradientTransformation):
    """The cloud step: `tx` applied to the negated mean delta; a no-op when nobody answered."""

    def server_update(params: Params, state: optax.OptState, summary: Summary):
        pseudo_grad = jax.tree.map(jnp.negative, mean_delta(summary))
        updates, new_state = tx.update(pseudo_grad, state, params)
        new_params = optax.apply_updates(params, updates)
        answered = summary.weight > 0
        keep = lambda new, old: jnp.where(answered, new, old)  # noqa: E731
        return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_state, state)

    return server_update


def fedavg(
    apply_fn: ApplyFn,
    example_loss: ExampleLoss,
    *,
    local_steps: int,
    batch_size: int,
    learning_rate: float,
    server_learning_rate: float = 1.0,
    server_tx: optax.GradientTransformation | None = None,
    full_batch: bool = False,
    proximal_mu: float = 0.0,
    normalize_to: float | None = None,
    variate_delta: Callable | None = None,
    name: str = "fedavg",
) -> Algorithm:
    """FedAvg (HierFAVG in a tree): local SGD, example-weighted averaging, SGD at the cloud.

    `server_tx` replaces the cloud's `optax.sgd(server_learning_rate)` (FedOpt); the
    other keywords are the local-training variants of `make_local_update`, which FedProx,
    FedNova and SCAFFOLD set.
    """
    server_tx = server_tx or optax.sgd(server_learning_rate)
    return Algorithm(
        name=name,
        local_update=make_local_update(
            apply_fn,
            example_loss,
            local_steps=local_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            full_batch=full_batch,
            proximal_mu=proximal_mu,
            normalize_to=normalize_to,
        ),
        server_init=server_tx.init,
        server_update=make_server_update(server_tx),
        variate_delta=variate_delta,
    )


def fedsgd(
    apply_fn: ApplyFn,
    example_loss: ExampleLoss,
    *,
    learning_rate: float,
    server_learning_rate: float = 1.0,
    server_tx=None,
    **_: Any,
) -> Algorithm:
    """FedSGD: one full-batch gradient step per device per edge round, then FedAvg's averaging."""
    return fedavg(
        apply_fn,
        example_loss,
        local_steps=1,
        batch_size=1,
        learning_rate=learning_rate,
        server_learning_rate=server_learning_rate,
        server_tx=server_tx,
        full_batch=True,
        name="fedsgd",
    )
