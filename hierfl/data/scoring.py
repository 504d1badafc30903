"""What a task is scored by: a named test metric with a direction, and how to show it.

Classification tasks are scored by accuracy (higher is better, shown as a percentage);
regression tasks by errors such as RMSE or MAE (lower is better, in the target's unit).
A task lists its metrics, the first being the one that decides (best round, equal-score
comparisons); evaluation reports all of them. Every round record carries each metric under
its own name (``accuracy``, ``rmse``) and per plant under ``plant_<name>``, and ``run.json``
carries the deciding metric's description (``describe``), so reports of a run directory
label and compare the right number without importing the task.

This module is pure Python (no JAX): the per-example functions live with the tasks
(`hierfl.data.tasks.base`) and are attached to a `Metric` there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Metric:
    """A test metric: ``value = mean(example_value(outputs, y))``, square-rooted if ``root``.

    Attributes:
      name: the record key (``accuracy``, ``rmse``, ``mae``); per plant ``plant_<name>``.
      higher_is_better: accuracy yes, errors no.
      label: how tables and axes call it (``"accuracy"``, ``"RMSE (hours)"``).
      percent: values are fractions in [0, 1] shown as percentages.
      unit: the unit of the value, shown after it (``"h"``); empty for none.
      root: the value is the square root of the mean (RMSE from squared errors).
      example_value: ``(outputs [B, ...], y [B, ...]) -> [B]``; None in a description read
        back from a run directory (which only labels and compares).
    """

    name: str
    higher_is_better: bool = True
    label: str = ""
    percent: bool = False
    unit: str = ""
    root: bool = False
    example_value: Callable[[Any, Any], Any] | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    @property
    def plant_key(self) -> str:
        """The record key of the per-plant values: ``plant_<name>``."""
        return f"plant_{self.name}"

    @property
    def title(self) -> str:
        """The label, or the name when no label is set."""
        return self.label or self.name

    def reduce(self, mean: float) -> float:
        """The metric from the mean of its per-example values."""
        return math.sqrt(max(mean, 0.0)) if self.root else mean

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` (NaN is never better)."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b if self.higher_is_better else a < b

    def reaches(self, value: float, target: float) -> bool:
        """Whether ``value`` is at least as good as ``target``."""
        return value >= target if self.higher_is_better else value <= target

    def best_index(self, values: Sequence[float]) -> int:
        """Index of the best of ``values`` (the first on ties); ``values`` must not be empty."""
        best = 0
        for i, value in enumerate(values):
            if self.better(float(value), float(values[best])):
                best = i
        return best

    def worst_of(self, values: Sequence[float]) -> float:
        """The worst of ``values``: the best score every one of them reaches."""
        return min(values) if self.higher_is_better else max(values)

    def format(self, value: float, digits: int = 1) -> str:
        """``"79.2%"`` for a percentage, ``"12.3 h"`` (three significant digits) otherwise; a
        missing score is ``"n/a"``, an infinite one (training diverged) ``"diverged"``."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if math.isinf(value):
            return "diverged"
        if self.percent:
            return f"{100 * value:.{digits}f}%"
        text = f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2g}"
        return f"{text} {self.unit}" if self.unit else text

    def describe(self) -> dict[str, Any]:
        """The metric as JSON (for ``run.json``), without its per-example function."""
        return {
            "name": self.name,
            "higher_is_better": self.higher_is_better,
            "label": self.label,
            "percent": self.percent,
            "unit": self.unit,
            "root": self.root,
        }


ACCURACY = Metric("accuracy", higher_is_better=True, label="accuracy", percent=True)
"""The description of accuracy (the task's copy carries the per-example function)."""


def from_description(description: Mapping[str, Any] | None) -> Metric:
    """The `Metric` a ``run.json`` describes; accuracy when it describes none (older runs)."""
    if not description:
        return ACCURACY
    return Metric(
        name=str(description["name"]),
        higher_is_better=bool(description.get("higher_is_better", True)),
        label=str(description.get("label", "")),
        percent=bool(description.get("percent", False)),
        unit=str(description.get("unit", "")),
        root=bool(description.get("root", False)),
    )


def run_metric(info: Mapping[str, Any]) -> Metric:
    """The deciding metric of a run from its ``run.json`` contents (accuracy if unstated)."""
    return from_description(info.get("metric"))
