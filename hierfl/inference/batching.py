"""Dynamic batching: which waiting requests run together, and how their rows are padded and split.

Requests wait in a FIFO `RequestQueue`. A batch is due when the waiting rows reach
`max_batch` or the oldest request has waited `max_wait` seconds; it then takes requests
in arrival order while their rows fit in `max_batch`. The rows are stacked and padded
with zeros up to the next *bucket* (powers of two up to `max_batch`, and `max_batch`
itself), so a compiled model needs one executable per bucket rather than one per batch
size, and the padding never costs more than the rows themselves. No socket, no clock of
its own: the server passes `now`, so every decision is testable.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

MAX_WAIT_MS = 600_000
"""The longest a request may be held for a fuller batch (10 minutes); beyond it a wait is a mistake."""


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """(1, 2, 4, ..., max_batch): powers of two below `max_batch`, then `max_batch`."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `rows` (`buckets` ascending, `rows` <= the largest)."""
    for bucket in buckets:
        if bucket >= rows:
            return bucket
    raise ValueError(f"{rows} rows exceed the largest bucket {buckets[-1]}")


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """`x` with zero rows appended up to `rows` along axis 0 (`x` itself when it has them already)."""
    if len(x) == rows:
        return x
    padded = np.zeros((rows, *x.shape[1:]), x.dtype)
    padded[: len(x)] = x
    return padded


def split_rows(y: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """`y` cut along axis 0 into consecutive pieces of `counts` rows (each a contiguous view)."""
    return np.split(y, np.cumsum(counts)[:-1]) if len(counts) > 1 else [y[: counts[0]]]


class Waiting(NamedTuple):
    """A request in the queue: `x` `[rows, ...]`, when it `arrived` (seconds), and `reply_to` (opaque to batching)."""

    x: np.ndarray
    arrived: float
    reply_to: Any


class RequestQueue:
    """The FIFO of prediction requests not yet run, and the rule for when the next batch is due."""

    def __init__(self, max_batch: int, max_wait: float):
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._items: collections.deque[Waiting] = collections.deque()
        self._rows = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def rows(self) -> int:
        """Rows waiting, over all requests."""
        return self._rows

    def add(self, item: Waiting) -> None:
        """Queues a request; its rows must not exceed `max_batch` (checked where requests enter)."""
        self._items.append(item)
        self._rows += len(item.x)

    def due(self, now: float) -> bool:
        """True when a batch should run now: enough rows, or the oldest request has waited long enough."""
        return bool(self._items) and (
            self._rows >= self.max_batch or now - self._items[0].arrived >= self.max_wait
        )

    def wait_time(self, now: float) -> float | None:
        """Seconds until the oldest request's wait runs out (0 if due now); None if nothing waits."""
        if not self._items:
            return None
        if self._rows >= self.max_batch:
            return 0.0
        return max(0.0, self._items[0].arrived + self.max_wait - now)

    def take(self) -> list[Waiting]:
        """Removes and returns the oldest requests whose rows fit together in `max_batch` (at least one)."""
        batch, rows = [], 0
        while self._items and (not batch or rows + len(self._items[0].x) <= self.max_batch):
            item = self._items.popleft()
            batch.append(item)
            rows += len(item.x)
        self._rows -= rows
        return batch
