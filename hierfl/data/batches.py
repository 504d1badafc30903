"""Arrow record batches to float32 rows, checked cell by cell: the core of the table loaders.

`convert_batch` turns one batch into x (float32), y (class indices or float32 targets) and a
count of dropped rows, or raises at the batch's first bad cell, first by row and then by the
file's column order: a cell that is not a number or not a class always, an empty, NaN or
infinite one unless the schema drops such rows. `Rows` gathers the batches' kept rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hierfl.data.schema import (
    DROP_HINT,
    MISSING,
    NOT_A_CLASS,
    Examples,
    Schema,
    bad_value,
    class_indices,
    first,
    not_a_class,
    show,
)
from hierfl.errors import DataError


@dataclasses.dataclass(frozen=True)
class Columns:
    """The columns a loader reads from one file: `order` is all of them in the file's order."""

    features: tuple[str, ...]
    label: str | None
    targets: tuple[str, ...]
    order: tuple[str, ...]

    @property
    def numbers(self) -> tuple[str, ...]:
        return self.features + self.targets

    @property
    def labels(self) -> tuple[str, ...]:
        return () if self.label is None else (self.label,)


def is_number(kind: pa.DataType) -> bool:
    """Whether a column of this type converts to float32 without parsing text."""
    checks = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_boolean)
    return pa.types.is_null(kind) or any(check(kind) for check in checks)


def is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def numeric_or_text(kind: pa.DataType) -> bool:
    """Whether a feature or target column of this type can be read (text is parsed)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return is_number(kind) or is_text(kind)


class Rows:
    """The kept rows, batch by batch: written into one array of the file's row count when it is
    known (Parquet), else kept as the batches' blocks and concatenated once (CSV)."""

    def __init__(self, columns: Columns, total: int | None = None):
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []
        self.filled = self.dropped = 0
        self.total = total
        if total is not None:
            self.x = np.empty((total, len(columns.features)), np.float32)
            y_shape = (total,) if columns.label is not None else (total, len(columns.targets))
            self.y = np.empty(y_shape, np.int32 if columns.label is not None else np.float32)

    def add(self, x: np.ndarray, y: np.ndarray, dropped: int) -> None:
        self.dropped += dropped
        if self.total is None:
            self.blocks.append((x, y))
        else:
            self.x[self.filled : self.filled + len(x)] = x
            self.y[self.filled : self.filled + len(y)] = y
        self.filled += len(x)

    def examples(self, name: str) -> Examples:
        if self.filled == 0:
            if self.dropped:
                raise DataError(f"{name}: no rows left after dropping {self.dropped} bad rows")
            raise DataError(f"{name}: no rows")
        if self.total is not None:
            return Examples(self.x[: self.filled], self.y[: self.filled], self.dropped)
        if len(self.blocks) == 1:
            x, y = self.blocks[0]
        else:
            x = np.concatenate([b[0] for b in self.blocks])
            y = np.concatenate([b[1] for b in self.blocks])
        self.blocks.clear()
        return Examples(x, y, self.dropped)


def convert_batch(
    name: str,
    batch: pa.RecordBatch,
    first_row: int,
    columns: Columns,
    schema: Schema,
    numbers: dict[str, pa.DataType],
) -> tuple[np.ndarray, np.ndarray, int]:
    """One batch as float32 x, y (class indices or targets) and the count of dropped rows.

    DataError at the batch's first bad cell: one that is not a number or not a class, or (under
    on_bad_rows "refuse") an empty, NaN or infinite one. `first_row` is the rows before it.
    """
    n = batch.num_rows
    x = np.empty((n, len(columns.features)), np.float32)
    values, unparsed = {}, {}
    for j, column in enumerate(columns.features):
        values[column] = x[:, j]
        unparsed[column] = _fill_numbers(x[:, j], batch.column(column), numbers[column])
    bad = ~np.isfinite(x).all(axis=1)
    if columns.label is not None:
        y = _label_codes(batch.column(columns.label), schema.class_names)
        bad |= y == MISSING
        hard = [first(y == NOT_A_CLASS)]
    else:
        y = np.empty((n, len(columns.targets)), np.float32)
        for j, column in enumerate(columns.targets):
            values[column] = y[:, j]
            unparsed[column] = _fill_numbers(y[:, j], batch.column(column), numbers[column])
        bad |= ~np.isfinite(y).all(axis=1)
        hard = []
    refuse = schema.on_bad_rows == "refuse"
    candidates = [
        r for r in (*hard, *unparsed.values(), first(bad) if refuse else None) if r is not None
    ]
    if candidates:
        row = min(candidates)
        problem = _cell_problem(batch, row, columns, schema, values, unparsed, refuse)
        raise DataError(f"{name}: row {first_row + row + 1}, {problem}")
    dropped = int(bad.sum())
    if dropped:
        x, y = x[~bad], y[~bad]
    return x, y, dropped


def _cell_problem(batch, row, columns, schema, values, unparsed, refuse) -> str:
    """What is wrong with the first bad cell of `row` (columns in the file's order)."""
    for column in columns.order:
        cell = batch.column(column)[row]
        if column == columns.label:
            code = _label_codes(batch.column(column).slice(row, 1), schema.class_names)[0]
            if code == NOT_A_CLASS:
                return f"column {column!r}: {not_a_class(cell.as_py(), schema.class_names)}"
            if code == MISSING and refuse:
                return f"column {column!r}: {'NaN' if cell.is_valid else 'empty cell'}{DROP_HINT}"
            continue
        if unparsed[column] == row:
            return f"column {column!r}: not a number: {show(cell.as_py())}"
        if not refuse or (unparsed[column] is not None and unparsed[column] < row):
            continue
        if not cell.is_valid:
            return f"column {column!r}: empty cell{DROP_HINT}"
        if not np.isfinite(values[column][row]):
            return f"column {column!r}: {bad_value(values[column][row])}{DROP_HINT}"
    raise AssertionError(f"row {row} was found bad but no cell of it is")  # unreachable


def _fill_numbers(out: np.ndarray, array: pa.Array, number_type: pa.DataType) -> int | None:
    """Writes `array` into `out` as float32, NaN where a cell is empty. A text array is parsed
    as `number_type` (as pyarrow's CSV reader does, after trimming spaces); the first cell that
    is not a number is returned (its row and those after it are left NaN), else None."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_dictionary(kind):
        array, kind = array.dictionary_decode(), kind.value_type
    if pa.types.is_null(kind):
        out[:] = np.nan
        return None
    if is_text(kind):
        trimmed = pc.utf8_trim_whitespace(array)
        try:
            array = pc.cast(trimmed, number_type)
        except pa.ArrowInvalid:
            bad = _first_unparseable(trimmed, number_type)
            out[bad:] = np.nan
            _fill_numbers(out[:bad], trimmed.slice(0, bad), number_type)
            return bad
    elif pa.types.is_decimal(kind) or pa.types.is_boolean(kind):
        array = pc.cast(array, pa.float64())
    out[:] = array.to_numpy(zero_copy_only=False)
    return None


def _first_unparseable(array: pa.Array, number_type: pa.DataType) -> int:
    """The first index at which casting text `array` to `number_type` fails (one is known to):
    a bisection, each step casting the half that must hold it."""
    low, high = 0, len(array)  # the first bad index is in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            pc.cast(array.slice(low, middle - low), number_type)
            low = middle
        except pa.ArrowInvalid:
            high = middle
    return low


def _label_codes(array: pa.Array, class_names: tuple[str, ...]) -> np.ndarray:
    """int32 class indices of a label column (`class_indices` per distinct value for text)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_null(kind):
        return np.full(len(array), MISSING, np.int32)
    if is_text(kind) or pa.types.is_dictionary(kind):
        encoded = array if pa.types.is_dictionary(kind) else array.dictionary_encode()
        dictionary = encoded.dictionary.to_numpy(zero_copy_only=False)
        lookup = np.append(class_indices(dictionary, class_names), np.int32(MISSING))
        indices = pc.fill_null(encoded.indices, len(dictionary)).to_numpy(zero_copy_only=False)
        return lookup[indices]
    return class_indices(array.to_numpy(zero_copy_only=False), class_names)
