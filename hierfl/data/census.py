"""The census before round 1: example counts and feature statistics, summed up the tree.

Each device counts its examples and, for a task that standardizes its inputs
(`Task.standardize`), sums each input channel (the last axis: a table's feature, an
image's colour) and its square over its rows; its edge adds its devices' parts, the cloud
its edges'; the mean and standard deviation of every channel go back down, and every
device, edge evaluation and served model standardizes with the federation's figures. No
row leaves a device: only `1 + 2C` numbers per device. The simulator computes the same
sums from every device's rows (`of_shards`), so both engines standardize alike.

All functions here are pure numpy; the parts are float64 (sums of many rows), the
result float32 like the examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

MIN_STD = 1e-6
"""A channel whose values barely vary is scaled by 1, not by its near-zero spread."""


@dataclasses.dataclass(frozen=True)
class Part:
    """What one device (or a subtree, summed) reports: its examples and, per channel, the
    sum of its values and of their squares (float64 `[C]`; empty without statistics).
    `step_examples`, under FedNova, is its local steps times its examples (0 otherwise)."""

    examples: int
    sums: np.ndarray
    squares: np.ndarray
    step_examples: int = 0


@dataclasses.dataclass(frozen=True)
class Census:
    """The federation's example count and, with statistics, each channel's mean and std;
    under FedNova, `effective_steps`: the example-weighted mean of the devices' local steps."""

    examples: int
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    effective_steps: float | None = None

    @property
    def standardizes(self) -> bool:
        return self.mean is not None

    def standardize(self, x: np.ndarray) -> np.ndarray:
        """`(x - mean) / std` per channel (the last axis), float32; x itself without statistics."""
        if self.mean is None:
            return x
        return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """As JSON (`census.json` of a run, an artifact's preprocessing)."""
        described: dict[str, Any] = {"examples": int(self.examples)}
        if self.mean is not None:
            described |= {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.effective_steps is not None:
            described["effective_steps"] = float(self.effective_steps)
        return described


def from_description(described: Mapping[str, Any]) -> Census:
    """The `Census` that `describe` wrote."""
    mean, effective = described.get("mean"), described.get("effective_steps")
    return Census(
        int(described["examples"]),
        None if mean is None else np.asarray(mean, np.float32),
        None if mean is None else np.asarray(described["std"], np.float32),
        None if effective is None else float(effective),
    )


def part_of(x: np.ndarray, statistics: bool, steps: int | None = None) -> Part:
    """A device's part: its rows `x [N, ..., C]` counted and, with `statistics`, summed per
    channel; with `steps` (FedNova), its steps times its examples too."""
    step_examples = 0 if steps is None else int(steps) * len(x)
    if not statistics:
        return Part(len(x), np.zeros(0), np.zeros(0), step_examples)
    values = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return Part(len(x), values.sum(axis=0), np.square(values).sum(axis=0), step_examples)


def add(parts: Iterable[Part]) -> Part:
    """The parts of a subtree, summed (an edge's of its devices, the cloud's of its edges)."""
    parts = list(parts)
    if not parts:
        return Part(0, np.zeros(0), np.zeros(0))
    return Part(
        sum(p.examples for p in parts),
        np.sum([p.sums for p in parts], axis=0),
        np.sum([p.squares for p in parts], axis=0),
        sum(p.step_examples for p in parts),
    )


def finish(total: Part, values_per_example: int) -> Census:
    """The census from the federation's summed part; `values_per_example` values of each
    channel per example (an image's pixels; 1 for a table)."""
    effective = (
        total.step_examples / total.examples if total.step_examples and total.examples else None
    )
    if total.sums.size == 0:
        return Census(total.examples, effective_steps=effective)
    n = max(total.examples * values_per_example, 1)
    mean = total.sums / n
    variance = np.maximum(total.squares / n - np.square(mean), 0.0)
    std = np.sqrt(variance)
    std = np.where(std < MIN_STD, 1.0, std)
    return Census(total.examples, mean.astype(np.float32), std.astype(np.float32), effective)


def of_shards(
    x: np.ndarray, counts: np.ndarray, input_shape: tuple[int, ...], statistics: bool
) -> Census:
    """The census of the simulator's shards `x [D, N_max, ...]` (only `counts[d]` rows real)."""
    parts = [part_of(x[d, : int(counts[d])], statistics) for d in range(len(counts))]
    return finish(add(parts), values_per_channel(input_shape))


def values_per_channel(input_shape: tuple[int, ...]) -> int:
    """How many values of each channel one example holds (all axes but the last)."""
    return int(np.prod(input_shape[:-1])) if len(input_shape) > 1 else 1
