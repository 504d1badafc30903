"""A rich progress bar for cloud rounds, showing the latest accuracy and loss."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RoundProgress:
    """Context manager: `update(record)` advances one round; disabled, it does nothing."""

    def __init__(self, total: int, *, enabled: bool = True, title: str = "training"):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("acc {task.fields[accuracy]}  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self._task = self._progress.add_task(title, total=total, accuracy="-", loss="-")

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def update(self, record: dict[str, Any]) -> None:
        self._progress.update(
            self._task,
            advance=1,
            accuracy=f"{record['accuracy']:.4f}",
            loss=f"{record['loss']:.4f}",
        )
