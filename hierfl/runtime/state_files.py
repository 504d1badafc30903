"""Reading a node's own state files back on `--resume`: an edge's `edge-<plant>.npz`, a
device's control variate `<device>.npy`.

A file cut short by a crash, overwritten by something else or made by another version
is refused in one line that names it, says why, and says what to do; it never ends in a
traceback. (Each file is written to a temporary name and renamed, so a crash while
writing leaves the previous one whole.)
"""

from __future__ import annotations

import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from hierfl.errors import RunDirError

MAX_STATE_BYTES = 1 << 32
"""A state file holds a model's worth of floats at most; anything larger is not one of ours."""


def read_array(path: Path, what: str) -> np.ndarray:
    """The array in the `.npy` file `path`; RunDirError naming it if it cannot be read."""
    _check_size(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise _unreadable(path, what, error) from None


def read_arrays(path: Path, what: str, required: Collection[str]) -> dict[str, Any]:
    """The arrays of the `.npz` file `path` (all `required` there); RunDirError naming it if not."""
    _check_size(path, what)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _unreadable(path, what, error) from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise _unreadable(path, what, f"no {', '.join(missing)} in it")
    return arrays


def _check_size(path: Path, what: str) -> None:
    size = path.stat().st_size
    if size > MAX_STATE_BYTES:
        raise _unreadable(path, what, f"{size:,} bytes, too large to be one")


def _unreadable(path: Path, what: str, why: object) -> RunDirError:
    reason = str(why).splitlines()[0] if str(why) else type(why).__name__
    return RunDirError(
        f"{path}: not a readable {what} ({reason}); move it away to start this node afresh"
    )
