"""What a task expects of a device's examples, and the checks that hold a loader's output to it.

`Schema` is the task's side (input shape, class or target names, what to do with bad rows),
`Examples` what a loader hands back: `x` float32 `[N, *input_shape]`, `y` int32 `[N]` class
indices or float32 `[N, H]` targets. A `Loader` turns a device's path into `Examples`; the
built-in ones live in `hierfl.data.files`, `tables` and `images`.

Every refusal is one `DataError` line that starts with the file's path and, where it can,
names the row and column. Rows count from 1 and are data rows (a header is not a row);
indices into an example or a target vector (`feature index 3`) count from 0, as in numpy.
"""

from __future__ import annotations

import dataclasses
import operator
from pathlib import Path
from typing import Protocol

import numpy as np

from hierfl.errors import DataError

NOT_A_CLASS = -1
MISSING = -2
"""Codes `class_indices` gives a label that names no class, and an empty or NaN label."""

DROP_HINT = ' (set on_bad_rows = "drop" to drop such rows)'


@dataclasses.dataclass(frozen=True)
class Schema:
    """What the task expects of a device's examples.

    `input_shape` is one example's shape (None: take what the file has). A classification
    task names its `class_names` (a label is one of them, or its index 0..C-1), a regression
    task its `target_names` (y is float32 `[N, len(target_names)]`). `on_bad_rows`: "refuse"
    a row with an empty, NaN or infinite value, or "drop" it and count it in `Examples.dropped`.
    Text where a number belongs, or a label that is not a class, is refused either way: it is
    a wrong file or column, not a missing measurement.
    """

    input_shape: tuple[int, ...] | None
    class_names: tuple[str, ...] = ()
    target_names: tuple[str, ...] = ()
    on_bad_rows: str = "refuse"

    def __post_init__(self):
        if self.input_shape is not None:
            try:
                shape = tuple(operator.index(d) for d in self.input_shape)
            except TypeError:
                shape = (0,)
            if any(d <= 0 for d in shape):
                raise ValueError(f"input_shape is a tuple of positive ints, got {self.input_shape}")
            object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "target_names", tuple(self.target_names))
        if bool(self.class_names) == bool(self.target_names):
            raise ValueError(
                "a Schema names class_names (classification) or target_names (regression), "
                f"not {'both' if self.class_names else 'neither'}"
            )
        names = self.class_names + self.target_names
        if not all(isinstance(n, str) for n in names):
            raise ValueError(f"class and target names are strings, got {names}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be distinct, got {self.class_names}")
        if self.on_bad_rows not in ("refuse", "drop"):
            raise ValueError(f'on_bad_rows is "refuse" or "drop", got {self.on_bad_rows!r}')


@dataclasses.dataclass(frozen=True, eq=False)
class Examples:
    """One device's examples: `x` float32 `[N, *input_shape]` (C-contiguous), `y` int32 `[N]`
    class indices or float32 `[N, H]` targets, and how many bad rows were `dropped`."""

    x: np.ndarray
    y: np.ndarray
    dropped: int = 0


class Loader(Protocol):
    """Reads one device's examples from `path` (a file or folder) as `schema` asks."""

    input_shape: tuple[int, ...] | None  # known without reading a file; None if not

    def read(self, path: Path, schema: Schema) -> Examples: ...


def require_path(path: Path, *, folder: bool) -> None:
    """DataError unless `path` is an existing file (or folder)."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if folder and not path.is_dir():
        raise DataError(f"{path}: not a folder")
    if not folder and not path.is_file():
        raise DataError(f"{path}: not a file")


def check_shape(name: str, example_shape: tuple[int, ...], schema: Schema) -> None:
    """DataError unless one example's shape is the task's input shape (or the task takes any)."""
    if schema.input_shape is not None and tuple(example_shape) != schema.input_shape:
        raise DataError(
            f"{name}: examples have shape {tuple(example_shape)}, "
            f"the task's input is {schema.input_shape}"
        )


def reason(error: BaseException) -> str:
    """Another library's error as one line: the OS's reason for an OSError, else its message."""
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return one_line(text) or type(error).__name__


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def classes_hint(class_names: tuple[str, ...]) -> str:
    return f"classes: {', '.join(class_names)}"


def show(value) -> str:
    """A cell's value as a message shows it: strings quoted, numbers bare."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, (float, np.floating)):
        return bad_value(value) if not np.isfinite(value) else repr(float(value))
    return str(value)


def bad_value(value: float) -> str:
    """How a message names a non-finite number."""
    return "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")


def first(mask: np.ndarray) -> int | None:
    """The index of the first True in a 1-D mask, or None."""
    if not mask.size:
        return None
    index = int(np.argmax(mask))
    return index if mask[index] else None


def class_indices(values: np.ndarray, class_names: tuple[str, ...]) -> np.ndarray:
    """int32 class indices of 1-D `values`: a class name (matched exactly) or an int 0..C-1.

    Anything else is `NOT_A_CLASS`; NaN is `MISSING`. Strings are mapped once per distinct
    value, so a column of millions of labels costs one `np.unique`.
    """
    count = len(class_names)
    kind = values.dtype.kind
    if kind in "biu":
        ints = values.astype(np.int64)
        return np.where((ints >= 0) & (ints < count), ints, NOT_A_CLASS).astype(np.int32)
    if kind == "f":
        with np.errstate(invalid="ignore"):
            ok = (values >= 0) & (values < count) & (values == np.floor(values))
            codes = np.where(ok, values, NOT_A_CLASS).astype(np.int32)
        codes[np.isnan(values)] = MISSING
        return codes
    uniques, inverse = np.unique(values.astype(str), return_inverse=True)
    index = {name: i for i, name in enumerate(class_names)}
    mapped = np.array([_class_index(str(u), index, count) for u in uniques], np.int32)
    return mapped[inverse.reshape(-1)] if uniques.size else np.zeros(0, np.int32)


def _class_index(text: str, index: dict[str, int], count: int) -> int:
    if text in index:
        return index[text]
    if text.isascii() and text.isdigit() and int(text) < count:
        return int(text)
    return NOT_A_CLASS


def check_arrays(name: str, x: np.ndarray, y: np.ndarray, schema: Schema) -> Examples:
    """The checks for examples that come as arrays (.npz, .npy, the task's own function).

    x: any numeric dtype, `[N, *example_shape]`; y: labels `[N]` (names or ints) or targets
    `[N, H]` (`[N]` when H is 1). A row with a non-finite value in x or y, or a NaN label, is
    refused or dropped as `schema.on_bad_rows` says; a label that is not a class is refused.
    """
    x, y = np.asarray(x), np.asarray(y)  # a memory map or a JAX array: a plain ndarray
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: x has dtype {x.dtype}, not numbers")
    if x.ndim == 0:
        raise DataError(f"{name}: x is a single number, not an array of examples")
    if schema.class_names:
        if y.ndim != 1:
            raise DataError(
                f"{name}: y has shape {y.shape}; the task's labels are one class per row"
            )
    else:
        width = len(schema.target_names)
        y = y.reshape(-1, 1) if y.ndim == 1 and width == 1 else y
        if y.ndim != 2 or y.shape[1] != width:
            raise DataError(
                f"{name}: y has shape {y.shape}, the task predicts {width} targets per row "
                f"({', '.join(schema.target_names)})"
            )
        if y.dtype.kind not in "biuf":
            raise DataError(f"{name}: y has dtype {y.dtype}, not numbers")
    if len(x) != len(y):
        raise DataError(f"{name}: x has {len(x)} rows, y has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{name}: no rows")
    check_shape(name, x.shape[1:], schema)

    x = np.require(x, np.float32, ["C", "W"])
    flat = x.reshape(len(x), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if schema.class_names:
        labels, y = y, class_indices(y, schema.class_names)
        bad |= y == MISSING
        wrong = first(y == NOT_A_CLASS)
    else:
        y = np.require(y, np.float32, ["C", "W"])
        bad |= ~np.isfinite(y).all(axis=1)
        wrong = None
    refused = first(bad) if schema.on_bad_rows == "refuse" else None
    if wrong is not None and (refused is None or wrong < refused):  # x is left of y
        value = labels[wrong].item()
        raise DataError(f"{name}: row {wrong + 1}, label: {not_a_class(value, schema.class_names)}")
    if refused is not None:
        raise DataError(
            f"{name}: row {refused + 1}, {_bad_cell(flat[refused], y[refused], x.shape[1:])}"
        )
    dropped = int(bad.sum())
    if dropped == len(x):
        raise DataError(f"{name}: no rows left after dropping {dropped} bad rows")
    if dropped:
        x, y = x[~bad], y[~bad]
    return Examples(x, y, dropped)


def not_a_class(value, class_names: tuple[str, ...]) -> str:
    """Why a label is refused; a number (or a cell of digits) also hears the valid indices."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    number = not isinstance(text, str) or text.strip().lstrip("+-").isdigit()
    indices = f"; or their indices 0..{len(class_names) - 1}" if number else ""
    return f"{show(value)} is not a class ({classes_hint(class_names)}{indices})"


def _bad_cell(features: np.ndarray, target, example_shape: tuple[int, ...]) -> str:
    """Where in one row of arrays the first non-finite value is, and what it is."""
    k = first(~np.isfinite(features))
    if k is not None:
        multi = len(example_shape) > 1
        index = tuple(int(i) for i in np.unravel_index(k, example_shape)) if multi else k
        return f"feature index {index}: {bad_value(features[k])}{DROP_HINT}"
    if np.ndim(target) == 0:  # a class index: MISSING
        return f"label: NaN{DROP_HINT}"
    k = first(~np.isfinite(target))
    return f"target index {k}: {bad_value(target[k])}{DROP_HINT}"
