"""Following `metrics.jsonl` as it grows: each read parses only the complete lines added since.

A resumed cloud rewrites the file (`records.reconcile_metrics`: a new file renamed over the
old one); a follower that sees another file, or a shorter one, starts over. A line that is
not a record is skipped and reported, never fatal: the dashboard keeps serving.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(value: Any) -> float | None:
    """`value` as a float, or None when it is not a finite number (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def task_metrics(record: dict[str, Any]) -> list[str]:
    """The scores a record holds overall and per plant (`accuracy`, `macro_f1`, `rmse`...)."""
    return [
        name[len("plant_") :]
        for name, value in record.items()
        if name.startswith("plant_")
        and isinstance(value, dict)
        and name[len("plant_") :] in record
        and all(v is None or finite(v) is not None for v in value.values())
        and any(finite(v) is not None for v in value.values())
    ]


def round_point(record: dict[str, Any]) -> dict[str, Any]:
    """What the charts need of a round record: every score overall and per plant, the
    losses, the round's time, bytes per tier and epsilon, NaN as None."""
    metrics = task_metrics(record)
    overall = ["loss", "test_loss", *metrics, "round_seconds"]
    return {
        "round": record["round"],
        "global": {name: finite(record.get(name)) for name in overall if name in record},
        "plants": {
            name: {plant: finite(v) for plant, v in record[f"plant_{name}"].items()}
            for name in metrics
        },
        "bytes": {tier: finite(n) for tier, n in (record.get("bytes") or {}).items()},
        "epsilon": finite(record.get("epsilon")),
    }


class MetricsFollower:
    """The round records of a `metrics.jsonl`, read incrementally by `read()`."""

    def __init__(self, path: Path):
        self.path = path
        self._reset(None)

    def _reset(self, inode: int | None) -> None:
        self.inode, self.offset = inode, 0
        self.points: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None
        self.skipped: list[str] = []
        self.lines = 0

    def read(self) -> None:
        """Takes the complete lines added since the last read (all of them in a new file)."""
        try:
            stat = self.path.stat()
        except OSError:
            self._reset(None)
            return
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self._reset(stat.st_ino)
        if stat.st_size == self.offset:
            return
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read(stat.st_size - self.offset)
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        self.offset += len(complete)
        for line in complete.splitlines():
            self.lines += 1
            self._take(line)

    def _take(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
            point = round_point(record)
        except (ValueError, TypeError, KeyError, AttributeError):
            self.skipped.append(f"{self.path.name}:{self.lines}: not a round record; skipped")
            return
        self.points.append(point)
        self.last = record
