"""The versions a server holds: the one it serves and, for rollback, the ones it served before.

Only fully loaded, warmed-up models enter (`swap`), so whatever `current` returns can
answer at once. The server's serving thread is the only one that touches this object:
a swap or rollback happens between two batches, never during one.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from hierfl.errors import InferenceError


class _Versioned(Protocol):
    @property
    def meta(self): ...


M = TypeVar("M", bound=_Versioned)


class ModelVersions(Generic[M]):
    """A bounded stack of loaded models: `current` is served, `keep - 1` older ones wait for a rollback."""

    def __init__(self, first: M, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        self._stack: list[M] = [first]

    @property
    def current(self) -> M:
        return self._stack[-1]

    @property
    def history(self) -> list[int]:
        """Model versions held, oldest first; the last is served."""
        return [m.meta.version for m in self._stack]

    def swap(self, model: M) -> M:
        """Serves `model` from now on; returns the model it replaces (kept for rollback)."""
        old = self._stack[-1]
        self._stack.append(model)
        del self._stack[: -self.keep]
        return old

    def rollback(self) -> M:
        """Drops the served model and serves the one before it, which it returns.

        Raises `InferenceError` when no earlier version is held.
        """
        if len(self._stack) < 2:
            raise InferenceError(
                f"no previous version to roll back to: only version {self.current.meta.version} is loaded"
            )
        self._stack.pop()
        return self._stack[-1]
