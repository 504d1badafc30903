"""The run directory's record of a training run: ``run.json`` and ``metrics.jsonl``.

A run directory holds

* ``run.json`` -- what was run (federation name, task, model, algorithm, topology source,
  seed, sizes, round counts, hyperparameters, start time, hierfl version), written once;
* ``metrics.jsonl`` -- one JSON object per cloud round, appended as training runs, so a
  crashed run keeps every round it finished. Each record has the fields in
  ``ROUND_FIELDS``: ``round`` (1-based), ``loss`` (mean local training loss),
  ``test_loss``, ``accuracy`` (global test accuracy in [0, 1]), ``plant_accuracy``
  (plant name -> accuracy), ``bytes`` (tier in ``BYTE_TIERS`` -> bytes sent during that
  round, not cumulative), ``round_seconds``, ``elapsed_seconds`` and ``devices`` (devices
  that trained that round). Extra fields are kept and ignored.

  ``accuracy`` and ``plant_accuracy`` are the fields of a classification task. A task scored
  otherwise (a regression task: ``rmse``) has its deciding metric's fields instead, named
  by ``run.json``'s ``metric`` (see ``hierfl.data.scoring``), e.g. ``rmse`` and ``plant_rmse``.
  A classification task's records also carry ``macro_f1``, ``auroc`` (two classes only),
  ``per_class`` (class -> ``precision``, ``recall``, ``f1``, ``support``), ``confusion``
  (rows: true class, columns: predicted) and ``chance`` (``class``, ``accuracy``,
  ``macro_f1`` of always predicting the test set's majority class), and each per plant as
  ``plant_<name>`` (plant -> value); NaN or null where nothing was evaluated
  (``hierfl.data.classification``). Readers need not use them.

This module owns the format: both engines build what they write with
``hierfl.runs.records`` and write it through ``MetricsWriter`` and ``write_run_info``; the
report and anything else read through ``read_run_info`` and ``read_metrics``, which check
each record once so readers can trust it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from hierfl.errors import RunDirError

RUN_INFO_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"

BYTE_TIERS = ("device_to_edge", "edge_to_device", "edge_to_cloud", "cloud_to_edge")
"""The links whose traffic each round record counts, uplink and downlink per tier."""

ROUND_FIELDS = (
    "round",
    "loss",
    "test_loss",
    "accuracy",
    "plant_accuracy",
    "bytes",
    "round_seconds",
    "elapsed_seconds",
    "devices",
)
"""The fields every ``metrics.jsonl`` record must have."""


class MetricsError(RunDirError):
    """A run directory's ``run.json`` or ``metrics.jsonl`` is missing or malformed."""


def to_json_value(value: Any) -> Any:
    """Returns ``value`` as something ``json`` can write: numpy/JAX scalars and arrays
    become Python numbers and (nested) lists, paths become strings.

    Meant as ``json.dumps(..., default=to_json_value)``, which calls it only for objects
    json cannot write itself. Raises ``TypeError`` for anything else.
    """
    if hasattr(value, "tolist"):  # numpy and JAX scalars and arrays alike
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write a {type(value).__name__} to a metrics file: {value!r}")


def encode_record(record: Mapping[str, Any]) -> str:
    """Returns ``record`` as one line of JSON (with the trailing newline), keys in the
    order given. NaN and infinities are written as ``NaN``/``Infinity``, which
    ``json.loads`` reads back."""
    return json.dumps(dict(record), default=to_json_value) + "\n"


class MetricsWriter:
    """Appends round records to ``RUN_DIR/metrics.jsonl``, one line each.

    Every ``write`` is flushed, so a crash loses no finished round. Creates ``run_dir``
    if needed. Use as a context manager, or call ``close``.
    """

    def __init__(self, run_dir: Path | str):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        self._file: TextIO = self.path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends ``record`` as one JSON line and flushes it."""
        line = encode_record(record)  # encode fully first: a bad value writes nothing
        self._file.write(line)
        self._file.flush()

    def close(self) -> None:
        """Closes the file; further writes raise ``ValueError``. Safe to call twice."""
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_run_info(run_dir: Path | str, info: Mapping[str, Any]) -> Path:
    """Writes ``info`` to ``RUN_DIR/run.json`` (indented, keys in the order given),
    creating ``run_dir`` if needed. Returns the path written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_INFO_FILE
    path.write_text(
        json.dumps(dict(info), indent=2, default=to_json_value) + "\n", encoding="utf-8"
    )
    return path


CENSUS_FILE = "census.json"


def write_census(run_dir: Path | str, described: Mapping[str, Any]) -> Path:
    """Writes a run's census (`Census.describe()`: examples, and each channel's mean and std
    when the task standardizes) to ``RUN_DIR/census.json``; export applies it."""
    path = Path(run_dir) / CENSUS_FILE
    path.write_text(json.dumps(dict(described), indent=2) + "\n", encoding="utf-8")
    return path


def read_census(run_dir: Path | str) -> dict[str, Any] | None:
    """``RUN_DIR/census.json``'s contents, None if the run has none (older runs)."""
    path = Path(run_dir) / CENSUS_FILE
    try:
        described = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise MetricsError(f"{path}: not a census file ({error})") from None
    if not isinstance(described, dict) or not isinstance(described.get("examples"), int):
        raise MetricsError(f"{path}: not a census file (no example count)")
    return described


def read_run_info(run_dir: Path | str) -> dict[str, Any]:
    """Returns the contents of ``RUN_DIR/run.json``.

    Raises ``MetricsError`` naming the file if it is missing, not JSON, or not an object.
    """
    path = Path(run_dir) / RUN_INFO_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MetricsError(f"{path}: no such file; is {run_dir} a hierfl run directory?") from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(info, dict):
        raise MetricsError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def read_metrics(run_dir: Path | str, metric: str | None = None) -> list[dict[str, Any]]:
    """Returns the round records of ``RUN_DIR/metrics.jsonl``, in file order.

    Each record must carry ``metric`` (by default the one ``run.json`` names, else
    ``accuracy``) and its per-plant field. Blank lines are skipped. Raises ``MetricsError`` if the file is missing (the run has
    no metrics yet) or a line is malformed, naming the file, the 1-based line number and
    what is wrong, e.g. ``runs/x/metrics.jsonl:3: not valid JSON (...)``.
    """
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MetricsError(
            f"{path}: no such file; the run has no metrics yet (it writes one line per finished cloud round)"
        ) from None
    if metric is None:
        metric = _run_metric_name(Path(run_dir))
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(parse_record(line, metric))
        except MetricsError as error:
            raise MetricsError(f"{path}:{number}: {error}") from None
    return records


def _run_metric_name(run_dir: Path) -> str:
    """The deciding metric ``run.json`` names; ``accuracy`` if it names none or is unreadable."""
    try:
        info = json.loads((run_dir / RUN_INFO_FILE).read_text(encoding="utf-8"))
        return str(info["metric"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return "accuracy"


def round_fields(metric: str = "accuracy") -> tuple[str, ...]:
    """``ROUND_FIELDS`` for a run scored by ``metric``: its fields replace accuracy's."""
    rename = {"accuracy": metric, "plant_accuracy": f"plant_{metric}"}
    return tuple(rename.get(field, field) for field in ROUND_FIELDS)


def parse_record(line: str, metric: str = "accuracy") -> dict[str, Any]:
    """Returns the round record on one ``metrics.jsonl`` line.

    Raises ``MetricsError`` (without a location; the caller adds it) if the line is not
    a JSON object, lacks a field of ``round_fields(metric)``, or ``bytes`` lacks a tier of
    ``BYTE_TIERS``.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise MetricsError(f"not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise MetricsError(f"expected a JSON object, got {type(record).__name__}")
    missing = [field for field in round_fields(metric) if field not in record]
    if missing:
        raise MetricsError(f"record lacks field(s) {', '.join(missing)}")
    if not isinstance(record[f"plant_{metric}"], dict):
        raise MetricsError(f"'plant_{metric}' must be an object mapping plant name to {metric}")
    if not isinstance(record["bytes"], dict):
        raise MetricsError("'bytes' must be an object mapping tier to bytes sent")
    missing = [tier for tier in BYTE_TIERS if tier not in record["bytes"]]
    if missing:
        raise MetricsError(f"'bytes' lacks tier(s) {', '.join(missing)}")
    return record
