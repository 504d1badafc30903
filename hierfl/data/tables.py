"""CSV and Parquet loaders: a table's feature columns become x, its label or target columns y.

Both stream, CSV through `pyarrow.csv.open_csv` and Parquet through `ParquetFile.iter_batches`,
and turn each batch into float32 at once, so a file of gigabytes never sits in memory as text,
Python objects or float64. Peak memory is about twice the final x for CSV (the batches' float32
blocks, then one concatenate); for Parquet it is x (one array of the file's row count, filled in
place) and one row group's decoded columns, the unit Parquet compresses and pyarrow decodes.

A CSV's feature and target columns are parsed as float32 unless `column_types` says otherwise.
An empty cell is a missing value; "nan" and "inf" are NaN and infinity; both are bad values
that `Schema.on_bad_rows` refuses or drops. Any other cell that is not a number is refused.
pyarrow's conversion error names the column but not the row, so on one the file is read again
with those columns as text, and the failing batch is searched for its first bad cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from hierfl.data.batches import Columns, Rows, convert_batch, is_number, numeric_or_text
from hierfl.data.schema import Examples, Schema, check_shape, reason, require_path
from hierfl.errors import DataError


@dataclasses.dataclass(frozen=True)
class CsvLoader:
    """Reads a device's CSV file (see `csv`). `block_size` is the bytes pyarrow parses per batch."""

    features: tuple[str, ...] | None
    label: str | None
    targets: tuple[str, ...]
    delimiter: str = ","
    column_types: tuple[tuple[str, pa.DataType], ...] = ()
    block_size: int = 1 << 20

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return None if self.features is None else (len(self.features),)

    def read(self, path: Path, schema: Schema) -> Examples:
        name = str(path)
        require_path(path, folder=False)
        _check_task(name, self, schema)
        header = self._header(name, path)
        columns = _resolve(name, header, self.features, self.label, self.targets)
        check_shape(name, (len(columns.features),), schema)
        declared = dict(self.column_types)
        numbers = {c: declared.get(c, pa.float32()) for c in columns.numbers}
        for column, kind in numbers.items():
            if not is_number(kind):
                raise DataError(
                    f"{name}: column_types reads column {column!r} as {kind}, "
                    "but a feature or target column needs a number type"
                )
        types = {**numbers, **{c: declared.get(c, pa.string()) for c in columns.labels}}
        rows, seen = Rows(columns), 0
        try:
            with self._open(path, _typed(columns, types)) as reader:
                for batch in reader:
                    rows.add(*convert_batch(name, batch, seen, columns, schema, numbers))
                    seen += batch.num_rows
        except pa.ArrowInvalid as error:
            text = {c: pa.string() for c in columns.order}  # nothing fails to convert to text
            self._search(name, path, columns, schema, numbers, text, seen)
            raise DataError(f"{name}: cannot read: {reason(error)}{_after(seen)}") from None
        except OSError as error:
            raise DataError(f"{name}: cannot read: {reason(error)}") from None
        return rows.examples(name)

    def _open(self, path: Path, convert: pa_csv.ConvertOptions) -> pa_csv.CSVStreamingReader:
        return pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=self.block_size),
            parse_options=pa_csv.ParseOptions(delimiter=self.delimiter),
            convert_options=convert,
        )

    def _header(self, name: str, path: Path) -> list[str]:
        if path.stat().st_size == 0:
            raise DataError(f"{name}: empty file (no header)")
        text = pa_csv.ConvertOptions(default_column_type=pa.string(), check_utf8=False)
        try:
            with self._open(path, text) as reader:  # parses the first block only
                return reader.schema.names
        except pa.ArrowInvalid as error:
            if "Empty CSV file" in str(error):
                raise DataError(f"{name}: empty file (no header)") from None
            raise DataError(f"{name}: cannot read: {reason(error)}") from None
        except OSError as error:
            raise DataError(f"{name}: cannot read: {reason(error)}") from None

    def _search(self, name, path, columns, schema, numbers, text, start_row: int) -> None:
        """Reads the file again with every column as text and converts the rows from
        `start_row` on as the first pass did, which raises at the first bad cell."""
        seen = 0
        try:
            with self._open(path, _typed(columns, text)) as reader:
                for batch in reader:
                    if seen + batch.num_rows > start_row:
                        skip = max(0, start_row - seen)
                        part = batch.slice(skip)
                        convert_batch(name, part, seen + skip, columns, schema, numbers)
                    seen += batch.num_rows
        except (pa.ArrowInvalid, OSError):
            return  # the text fails too (a parse error): the caller reports pyarrow's message


@dataclasses.dataclass(frozen=True)
class ParquetLoader:
    """Reads a device's Parquet file (see `parquet`), `batch_size` rows at a time."""

    features: tuple[str, ...] | None
    label: str | None
    targets: tuple[str, ...]
    batch_size: int = 1 << 16

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return None if self.features is None else (len(self.features),)

    def read(self, path: Path, schema: Schema) -> Examples:
        name = str(path)
        require_path(path, folder=False)
        _check_task(name, self, schema)
        if path.stat().st_size == 0:
            raise DataError(f"{name}: empty file")
        try:
            # no pre-buffering: pyarrow would otherwise hold several row groups' pages at once
            file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{name}: cannot read: {reason(error)}") from None
        arrow_schema = file.schema_arrow
        columns = _resolve(name, arrow_schema.names, self.features, self.label, self.targets)
        check_shape(name, (len(columns.features),), schema)
        for column in columns.order:
            kind = arrow_schema.field(column).type
            if not numeric_or_text(kind):
                wanted = "class names or indices" if column == columns.label else "numbers"
                raise DataError(f"{name}: column {column!r} holds {kind}, not {wanted}")
        numbers = {c: pa.float32() for c in columns.numbers}
        rows, seen = Rows(columns, total=file.metadata.num_rows), 0
        try:
            for batch in file.iter_batches(self.batch_size, columns=list(columns.order)):
                rows.add(*convert_batch(name, batch, seen, columns, schema, numbers))
                seen += batch.num_rows
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{name}: cannot read: {reason(error)}{_after(seen)}") from None
        return rows.examples(name)


def csv(
    features: Sequence[str] | None = None,
    *,
    label: str | None = None,
    targets: Sequence[str] | None = None,
    delimiter: str = ",",
    column_types: Mapping[str, pa.DataType] | None = None,
) -> CsvLoader:
    """A loader of one CSV file with a header row.

    `features`: the columns of x, in order (None: every column but the label or targets;
    given, any other column in the file is refused). Exactly one of `label` (a column of class
    names or indices: classification) or `targets` (columns of y: regression). `column_types`
    maps a column to the pyarrow type to parse it as (pyarrow's `ConvertOptions`).
    """
    features, label, targets = _table_columns(features, label, targets)
    if not (isinstance(delimiter, str) and len(delimiter) == 1):
        raise ValueError(f"delimiter is one character, got {delimiter!r}")
    types = dict(column_types or {})
    for column, kind in types.items():
        if not isinstance(kind, pa.DataType):
            raise ValueError(
                f"column_types[{column!r}] is a pyarrow type (pa.float64(), ...), got {kind!r}"
            )
    return CsvLoader(features, label, targets, delimiter, tuple(types.items()))


def parquet(
    features: Sequence[str] | None = None,
    *,
    label: str | None = None,
    targets: Sequence[str] | None = None,
) -> ParquetLoader:
    """A loader of one Parquet file; `features`, `label` and `targets` as for `csv`."""
    return ParquetLoader(*_table_columns(features, label, targets))


def _table_columns(features, label, targets) -> tuple[tuple[str, ...] | None, str | None, tuple]:
    """The loader's column arguments, checked: ValueError names the mistake in the task's code."""
    if (label is None) == (targets is None):
        raise ValueError(
            "a table loader reads a label column (classification) or target columns "
            "(regression): give exactly one of label= and targets="
        )
    for argument, value in (("features", features), ("targets", targets)):
        if isinstance(value, str):
            raise ValueError(f"{argument} is a list of column names; for one write [{value!r}]")
        if value is not None and len(value) == 0:
            raise ValueError(f"{argument} names at least one column")
    features = None if features is None else tuple(features)
    targets = () if targets is None else tuple(targets)
    names = [*(features or ()), *((label,) if label is not None else targets)]
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"column names are non-empty strings, got {names}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"column {repeated[0]!r} is named twice in features, label and targets")
    return features, label, targets


def _resolve(name, header, features, label, targets) -> Columns:
    """The file's header against the loader's columns: missing ones, and extra ones when the
    loader lists its features, are refused."""
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"{name}: column {repeated[0]!r} appears twice in the header")
    outputs = (label,) if label is not None else targets
    for column in (*(features or ()), *outputs):
        if column not in header:
            raise DataError(f"{name}: missing column {column!r} (columns: {', '.join(header)})")
    if features is None:
        features = tuple(c for c in header if c not in outputs)
        if not features:
            raise DataError(f"{name}: no feature columns (columns: {', '.join(header)})")
    else:
        wanted = (*features, *outputs)
        for column in header:
            if column not in wanted:
                raise DataError(
                    f"{name}: extra column {column!r} (the task reads: {', '.join(wanted)}); "
                    "list it in features or remove it"
                )
    order = tuple(c for c in header if c in features or c in outputs)
    return Columns(features, label, targets, order)


def _check_task(name: str, loader, schema: Schema) -> None:
    """DataError unless the loader's label or targets fit the task's classes or targets."""
    if loader.label is not None and not schema.class_names:
        raise DataError(
            f"{name}: the loader reads class labels from column {loader.label!r}, "
            f"but the task predicts targets ({', '.join(schema.target_names)})"
        )
    if loader.targets and not schema.target_names:
        raise DataError(
            f"{name}: the loader reads targets ({', '.join(loader.targets)}), "
            f"but the task predicts classes ({', '.join(schema.class_names)})"
        )
    if loader.targets and len(loader.targets) != len(schema.target_names):
        raise DataError(
            f"{name}: the loader reads {len(loader.targets)} target columns "
            f"({', '.join(loader.targets)}), the task predicts {len(schema.target_names)} "
            f"({', '.join(schema.target_names)})"
        )


def _typed(columns: Columns, types: dict[str, pa.DataType]) -> pa_csv.ConvertOptions:
    """Reads just `columns`, each as `types` says; only an empty cell is missing ("nan" is NaN)."""
    return pa_csv.ConvertOptions(
        column_types=types,
        include_columns=list(columns.order),
        null_values=[""],
        strings_can_be_null=True,
    )


def _after(seen: int) -> str:
    return f" (in the rows after row {seen})" if seen else ""
