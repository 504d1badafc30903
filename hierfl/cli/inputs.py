"""The examples `hierfl predict` sends: read from a .npy or a CSV file, checked before sending.

A file is read by its content: a NumPy header makes it a .npy array; anything else is
read as CSV text. A CSV file holds one example per row: numbers separated by commas (tabs
in a .tsv file), with an optional header row (a first row holding any cell that is not a
number names the columns). A row's numbers fill one example in C order, so a model of
input shape [8, 8, 1] takes rows of 64 numbers; an array may hold examples of the input
shape, one example, or such rows. Rows are counted as a spreadsheet shows them: from 1,
the header included.

Every refusal names the file and the place in it. Values that are not finite in the
model's dtype (NaN, infinite, or out of its range) are refused before anything is sent,
naming the row and column (CSV) or the example (array): a model answers a NaN with a
NaN, so they are not skipped silently; fill or remove them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hierfl.errors import HierflError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
MAX_NAMED = 10
"""The most rows or examples a refusal lists before it counts the rest."""


def read_examples(
    path: Path, input_shape: tuple[int, ...], dtype: str, features: Sequence[str] = ()
) -> np.ndarray:
    """The examples in file `path` as `[n, *input_shape]` of `dtype`; HierflError naming what is wrong.

    `features` are the model's named input columns (a model trained on named columns): a
    CSV file with a header then gives those columns, in that order, and may hold others
    (a label, a timestamp), which are left out.
    """
    try:
        with open(path, "rb") as file:
            magic = file.read(len(NPY_MAGIC))
    except OSError as err:
        raise HierflError(f"{path}: cannot read examples ({err.strerror or err})") from None
    if magic.startswith(ZIP_MAGIC):
        raise HierflError(
            f"{path}: an .npz archive holds several arrays; give one array as .npy, or a CSV file"
        )
    if magic == NPY_MAGIC:
        x = as_examples(_read_npy(path), input_shape, str(path))
        with np.errstate(
            over="ignore", invalid="ignore"
        ):  # out of the dtype's range: refused below
            x = x.astype(dtype)
        return _finite(x, str(path))
    values, rows, columns = read_csv(path, features)
    size = math.prod(input_shape)
    if values.shape[1] != size:
        raise HierflError(
            f"{path}: rows of {values.shape[1]} numbers; the model takes {size} per example "
            f"(input shape [{', '.join(map(str, input_shape))}], filled in C order)"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        x = values.astype(dtype)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        row, column = bad[0]
        more = f" ({len(bad) - 1} more such cells)" if len(bad) > 1 else ""
        raise HierflError(
            f"{path}, row {rows[row]}, {columns[column]}: {values[row, column]:g} is not a finite "
            f"{dtype} number{more}; the model takes finite numbers: fill or remove the row"
        )
    return x.reshape(len(x), *input_shape)


def read_csv(path: Path, features: Sequence[str] = ()) -> tuple[np.ndarray, list[int], list[str]]:
    """`(values [rows, columns] float64, each row's number in the file, each column's name)` of
    a CSV file: all its columns, or, when it has a header, the named `features` in order."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    values: list[list[float]] = []
    rows: list[int] = []
    names: list[str] | None = None
    keep: list[int] | None = None  # the columns read, when the header names the features
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, delimiter=delimiter)
            for cells in reader:
                row = reader.line_num
                if not any(cell.strip() for cell in cells):
                    continue  # a blank line
                if keep is not None:
                    if len(cells) != len(names):
                        raise HierflError(
                            f"{path}, row {row}: {len(cells)} columns, the header has {len(names)}"
                        )
                    cells = [cells[j] for j in keep]
                numbers = [_number(cell) for cell in cells]
                if not values and names is None and None in numbers:
                    names = [cell.strip() for cell in cells]  # the header row
                    keep = _feature_columns(path, names, features)
                    continue
                if None in numbers:
                    column = numbers.index(None)
                    where = _column(column if keep is None else keep[column], names)
                    raise HierflError(
                        f"{path}, row {row}, {where}: {cells[column].strip()!r} is not a number"
                    )
                if values and len(numbers) != len(values[0]):
                    raise HierflError(
                        f"{path}, row {row}: {len(numbers)} columns, but row {rows[0]} has {len(values[0])}"
                    )
                values.append(numbers)
                rows.append(row)
    except UnicodeDecodeError as err:
        raise HierflError(
            f"{path}: neither a .npy array nor CSV text (byte {err.start} is not UTF-8)"
        ) from None
    except csv.Error as err:
        raise HierflError(f"{path}: not a CSV file ({err})") from None
    except OSError as err:
        raise HierflError(f"{path}: cannot read examples ({err.strerror or err})") from None
    if not values:
        raise HierflError(
            f"{path}: no rows of numbers (one example per row, numbers separated by '{delimiter}')"
        )
    if keep is not None:
        names = [names[j] for j in keep]
    if names is not None and len(names) != len(values[0]):
        names = None  # a header that does not fit the rows names nothing
    return np.array(values), rows, [_column(j, names) for j in range(len(values[0]))]


def _feature_columns(path: Path, header: list[str], features: Sequence[str]) -> list[int] | None:
    """The header's indices of `features` (None when there are none to pick)."""
    if not features:
        return None
    missing = [name for name in features if name not in header]
    if missing:
        raise HierflError(
            f"{path}: no column {missing[0]!r}; the model reads {', '.join(features)} "
            f"(the header has: {', '.join(header)})"
        )
    return [header.index(name) for name in features]


def as_examples(x: np.ndarray, input_shape: tuple[int, ...], source: str) -> np.ndarray:
    """`x` as `[n, *input_shape]`: examples, one example, or rows of the input's size; HierflError otherwise."""
    size = math.prod(input_shape)
    if x.shape == input_shape or (x.ndim == 1 and x.size == size):
        x = x.reshape(1, *input_shape)
    elif x.ndim == 2 and x.shape[1] == size:
        x = x.reshape(len(x), *input_shape)
    if x.shape[1:] != input_shape:
        dims = ", ".join(map(str, input_shape))
        raise HierflError(
            f"{source}: examples of shape [{', '.join(map(str, x.shape))}]; the model takes [n, {dims}] "
            f"(n examples, one example [{dims}], or rows of {size} numbers)"
        )
    if len(x) == 0:
        raise HierflError(f"{source}: holds no examples")
    return x


def _read_npy(path: Path) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise HierflError(f"{path}: not a readable .npy array ({err})") from None
    if x.dtype.kind not in "biuf":
        raise HierflError(f"{path}: holds {x.dtype} values; the model takes numbers")
    return x


def _finite(x: np.ndarray, source: str) -> np.ndarray:
    """`x`, unless an example holds a value that is not finite: HierflError naming the examples."""
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad) == 0:
        return x
    listed = ", ".join(map(str, bad[:MAX_NAMED]))
    more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
    which = (
        f"examples {listed}{more} (counted from 0) hold"
        if len(bad) > 1
        else f"example {listed} (counted from 0) holds"
    )
    raise HierflError(
        f"{source}: {which} NaN, infinite or out-of-range {x.dtype} values; "
        "the model takes finite numbers: fill or remove them"
    )


def _number(cell: str) -> float | None:
    """The number a CSV cell holds, or None if it holds something else (text, nothing)."""
    try:
        return float(cell)
    except ValueError:
        return None


def _column(index: int, names: list[str] | None) -> str:
    return f"column {index + 1}" + (f" ({names[index]!r})" if names and names[index] else "")
