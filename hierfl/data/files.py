"""Reading a device's examples from files on its own disk.

A task names a loader; the framework calls `read_examples(loader, path, schema)` with the
device's path and what the task expects (`Schema`), and gets `Examples` (x float32, y int32
class indices or float32 targets) or one `DataError` line naming the file and, where it can,
the row and column. Built-in loaders:

    csv(features, label=... | targets=[...])      a CSV file with a header (hierfl.data.tables)
    parquet(features, label=... | targets=[...])  a Parquet file
    npz(x="x", y="y")                             a .npz file holding the two arrays
    npy(x="x.npy", y="y.npy")                     a folder holding the two .npy files
    image_folder(size=(h, w), mode="L")           a folder per class (hierfl.data.images)

or the task's own function `path -> (x, y)`, whose arrays get the same checks as npz's.
Rows in messages count from 1 (data rows; a header is not one), indices from 0.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hierfl.data.images import ImageFolderLoader, image_folder
from hierfl.data.schema import (
    Examples,
    Loader,
    Schema,
    check_arrays,
    one_line,
    reason,
    require_path,
)
from hierfl.data.tables import CsvLoader, ParquetLoader, csv, parquet
from hierfl.errors import DataError, HierflError

TaskLoader = Callable[[Path], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class NpzLoader:
    """Reads a device's .npz file (see `npz`)."""

    x: str = "x"
    y: str = "y"
    input_shape = None

    def read(self, path: Path, schema: Schema) -> Examples:
        name = str(path)
        require_path(path, folder=False)
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DataError(f"{name}: cannot read: {reason(error)}") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{name}: not an .npz archive (one array, no names)")
        with archive:
            for key in (self.x, self.y):
                if key not in archive.files:
                    raise DataError(
                        f"{name}: no array {key!r} (arrays: {', '.join(archive.files)})"
                    )
            try:
                x, y = archive[self.x], archive[self.y]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
                raise DataError(f"{name}: cannot read: {reason(error)}") from None
        return check_arrays(name, x, y, schema)


@dataclasses.dataclass(frozen=True)
class NpyLoader:
    """Reads a device's folder of two .npy files (see `npy`)."""

    x: str = "x.npy"
    y: str = "y.npy"
    input_shape = None

    def read(self, path: Path, schema: Schema) -> Examples:
        name = str(path)
        require_path(path, folder=True)
        arrays = []
        for file in (self.x, self.y):
            if not (path / file).is_file():
                present = ", ".join(sorted(f.name for f in path.glob("*.npy")))
                raise DataError(f"{name}: no file {file!r} (.npy files: {present or 'none'})")
            try:  # mapped, then copied once: the file's dtype is not held in memory beside float32
                arrays.append(np.load(path / file, mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError, EOFError) as error:
                raise DataError(f"{path / file}: cannot read: {reason(error)}") from None
        return check_arrays(name, *arrays, schema)


def npz(*, x: str = "x", y: str = "y") -> NpzLoader:
    """A loader of one .npz file holding arrays `x` `[N, ...]` and `y` (labels `[N]` as class
    names or indices, or targets `[N, H]`)."""
    return NpzLoader(x, y)


def npy(*, x: str = "x.npy", y: str = "y.npy") -> NpyLoader:
    """A loader of a folder holding two .npy files, `x` and `y` (as for `npz`)."""
    return NpyLoader(x, y)


def read_examples(loader: Loader | TaskLoader, path: str | Path, schema: Schema) -> Examples:
    """Reads one device's (or one plant's test) data with a built-in loader or the user's own
    function `path -> (x, y)`, then applies the generic checks. Raises DataError."""
    path = Path(path)
    if callable(getattr(loader, "read", None)):
        return loader.read(path, schema)
    name = str(path)
    if not path.exists():
        raise DataError(f"{name}: no such file")
    try:
        result = loader(path)
    except HierflError:
        raise
    except Exception as error:  # the task's code: any failure is this device's data error
        raise DataError(
            f"{name}: the task's loader failed: {type(error).__name__}: {one_line(error)}"
        ) from error
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise DataError(
            f"{name}: the task's loader returned {_describe(result)}, not a pair of arrays (x, y)"
        )
    for part, value in zip("xy", result):
        if not (isinstance(value, np.ndarray) or hasattr(value, "__array__")):
            raise DataError(
                f"{name}: the task's loader returned {part} as {_describe(value)}, not an array"
            )
    return check_arrays(name, *result, schema)


def _describe(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


__all__ = [
    "CsvLoader",
    "Examples",
    "ImageFolderLoader",
    "Loader",
    "NpyLoader",
    "NpzLoader",
    "ParquetLoader",
    "Schema",
    "csv",
    "image_folder",
    "npy",
    "npz",
    "parquet",
    "read_examples",
]
