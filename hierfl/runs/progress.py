"""A rich progress bar for cloud rounds, showing the latest score (accuracy, RMSE...) and loss."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hierfl.data.scoring import ACCURACY, Metric


class RoundProgress:
    """Context manager: `update(record)` advances one round; disabled, it does nothing."""

    def __init__(
        self,
        total: int,
        *,
        enabled: bool = True,
        title: str = "training",
        metric: Metric = ACCURACY,
    ):
        self._metric = metric
        short = "acc" if metric.name == "accuracy" else metric.name
        self._progress = Progress(
            TextColumn(
                "{task.description}", style="bold", markup=False
            ),  # the user's name, as written
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(short + " {task.fields[score]}  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self._task = self._progress.add_task(title, total=total, score="-", loss="-")

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def update(self, record: dict[str, Any]) -> None:
        self._progress.update(
            self._task,
            advance=1,
            score=f"{record[self._metric.name]:.4f}",
            loss=f"{record['loss']:.4f}",
        )
