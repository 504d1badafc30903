"""Evaluation at the edges: each plant scores the global model on its own test data.

The cloud holds no test data. After cloud round r it sends global model version r to the
edges (in the next round's `model`, or, after the last round, a `model` marked `final`
that starts no round); each edge evaluates it on its plant's held-out examples and sends
the sums up (`evaluation`: count, loss sum, metric sums, a classifier's confusion matrix
and two-class histogram). `PendingScores` holds round r's record until every live edge
has reported (or the next round closes), then completes it from the plants' sums with
`combine_plant_sums`, the function the simulator's evaluation uses, so both engines
record the same scores. A plant that does not report in time is NaN in that record.

With per-plant layers (`[personalization]`) each edge also sends the scores of its plant's
personalized model (an `evaluation` marked `personal`), and a record waits for both.

Under homomorphic encryption the scalars leave rounded (`release_evaluation(..., digits)`):
the cloud must not get exact functions of decrypted values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hierfl.data.evaluation import PlantSums, combine_plant_sums, count_shapes
from hierfl.data.tasks import Task
from hierfl.runs.records import personal_fields, score_fields
from hierfl.runtime import protocol


def evaluation_layout(task: Task) -> protocol.EvaluationLayout:
    """What an `evaluation` of `task` must carry: its counts' shapes and its metrics' names."""
    return protocol.EvaluationLayout(*count_shapes(task), tuple(m.name for m in task.metrics))


def release_evaluation(sums: PlantSums, digits: int | None = None) -> dict[str, Any]:
    """`protocol.encode` fields of an `evaluation`: the plant's test sums (the scalars rounded
    to `digits` significant digits if given), the counts (confusion, histogram) exact."""

    def scalar(value: float) -> float:
        return float(value) if digits is None else float(f"{float(value):.{digits}g}")

    return {
        "count": int(sums.count),
        "loss_sum": scalar(sums.loss_sum),
        "metric_sums": {name: scalar(value) for name, value in sums.metric_sums.items()},
        "confusion": np.asarray(sums.confusion, np.int64).tolist(),
        "histogram": np.asarray(sums.histogram, np.int64).tolist(),
    }


def evaluation_sums(header: Mapping[str, Any]) -> PlantSums:
    """The `PlantSums` a checked `evaluation` header reports."""
    return PlantSums(
        header["count"],
        float(header["loss_sum"]),
        {k: float(v) for k, v in header["metric_sums"].items()},
        _counts(header["confusion"]),
        _counts(header["histogram"]),
    )


def _counts(rows: list[list[int]]) -> np.ndarray:
    """A checked list of equally long rows of counts as an int64 array `[rows, columns]` (`[0, 0]` if empty)."""
    return np.array(rows, np.int64).reshape(len(rows), len(rows[0]) if rows else 0)


class PendingScores:
    """The cloud's records waiting for the plants' evaluations, by model version.

    `write(record, version, reporters)` is called once a record is complete, in round
    order, with the plants whose evaluations it holds. With `personal`, a plant has reported
    once both its evaluations (global and personalized) are in.
    """

    def __init__(
        self,
        task: Task,
        plant_names: Sequence[str],
        write: Callable[[dict[str, Any], int, list[str]], None],
        personal: bool = False,
    ):
        self.task, self.plant_names, self.write = task, tuple(plant_names), write
        self.personal = personal
        self.records: dict[int, dict[str, Any]] = {}
        self.sums: dict[int, dict[str, PlantSums]] = {}
        self.personal_sums: dict[int, dict[str, PlantSums]] = {}

    def add(self, version: int, record: dict[str, Any]) -> None:
        """Round `version`'s record, its scores to come."""
        self.records[version] = record
        self.sums.setdefault(version, {})

    def take(self, message: protocol.Message, round: int) -> None:
        """An edge's `evaluation` of model `message.round` (sent again if it got the model twice)."""
        version = message.round
        if version >= round:
            raise protocol.MessageRejected(
                protocol.FUTURE_ROUND,
                f"evaluation of model version {version}, not made yet (now round {round})",
            )
        marked = message.header.get("personal", False)
        if marked and not self.personal:
            raise protocol.MessageRejected(
                protocol.UNEXPECTED, "a personal evaluation, but this run has no [personalization]"
            )
        if version in self.records:
            kept = self.personal_sums if marked else self.sums
            kept.setdefault(version, {})[message.sender] = evaluation_sums(message.header)

    def complete(self, alive: set[str], force_before: int = 0) -> bool:
        """Writes, in round order, the records every edge in `alive` has evaluated (all
        before `force_before`, with what came); whether none is left."""
        for version in sorted(self.records):
            reported = self.sums.get(version, {})
            personal = self.personal_sums.get(version, {})
            waiting = alive - set(reported)
            if self.personal:
                waiting |= alive - set(personal)
            if version >= force_before and (waiting or not reported):
                return False
            record = self.records.pop(version)
            self.sums.pop(version, None)
            self.personal_sums.pop(version, None)
            scores = combine_plant_sums(self.task, [reported.get(n) for n in self.plant_names])
            record.update(score_fields(self.task, scores, self.plant_names))
            if self.personal:
                mine = combine_plant_sums(self.task, [personal.get(n) for n in self.plant_names])
                record.update(personal_fields(self.task, mine, self.plant_names))
            self.write(record, version, sorted(reported))
        return True
