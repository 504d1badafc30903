"""Live status of a running federation: small JSON files in ``RUN_DIR/status/``.

The cloud writes ``status/cloud.json``, an edge given a status folder
``status/edge-<plant>.json``, an inference server given one ``status/serve-<name>.json``;
``hierfl dashboard`` reads them (with ``metrics.jsonl``) and never talks to a node. A file
is written whole to a temporary file in the same folder and renamed over the old one, so a
reader sees the old status or the new one, never a torn file.

Times in a status are durations measured by the writer (``deadline_in``, ``silent_for``: s)
plus ``written``, the wall-clock time (s since the epoch) of the write, so a reader on any
clock adds the time since ``written`` and a status whose writer died shows as old. A
refused message's ``at`` is the wall-clock time it was refused.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

STATUS_DIR = "status"


def status_path(folder: Path | str, node: str) -> Path:
    """Where node `node` (``cloud``, ``edge-<plant>``, ``serve-<name>``) writes its status."""
    return Path(folder) / f"{node}.json"


def write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Writes `data` as JSON to `path` through a temporary file and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(dict(data), file, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(path: Path) -> dict[str, Any] | None:
    """The status in `path`, or None if there is none or it is not a JSON object."""
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def live_status(
    folder: Path | None, node: str, describe: Callable[[], dict[str, Any]]
) -> LiveStatus | NoStatus:
    """`node`'s status writer into `folder`, or one that writes nothing when `folder` is None."""
    return NoStatus() if folder is None else LiveStatus(status_path(folder, node), describe)


class NoStatus:
    """A node asked to write no status."""

    def update(self) -> None:
        pass

    def write(self) -> None:
        pass


class LiveStatus:
    """Writes a node's status to `path` at most once per `every` seconds (`update`), or now (`write`).

    `describe()` returns the status; `written` (wall-clock time) is added on each write.
    """

    def __init__(
        self, path: Path, describe: Callable[[], dict[str, Any]], every: float = 1.0, clock=time
    ):
        self.path, self.describe, self.every, self.clock = path, describe, every, clock
        self.last = -float("inf")

    def update(self) -> None:
        """Writes the status if `every` seconds have passed since the last write."""
        if self.clock.monotonic() - self.last >= self.every:
            self.write()

    def write(self) -> None:
        self.last = self.clock.monotonic()
        write_atomically(self.path, {**self.describe(), "written": self.clock.time()})
