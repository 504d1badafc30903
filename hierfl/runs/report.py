"""Plots and a markdown summary of a run directory.

``write_report(run_dir)`` reads ``run.json`` and ``metrics.jsonl`` (see ``hierfl.runs.metrics``)
and writes, into the same directory,

* ``accuracy.png`` -- global test accuracy per cloud round (bold) and one line per plant
  (for a task scored otherwise, ``<metric>.png``, e.g. ``rmse.png``: see ``hierfl.data.scoring``);
* ``bytes.png`` -- cumulative bytes sent per tier over the cloud rounds;
* ``loss.png`` -- training loss and test loss per cloud round;
* ``report.md`` -- run settings, final and best accuracy, per-plant final accuracy, total
  bytes per tier and the edge->cloud / device->edge ratio, wall time, and the plots. For a
  classifier whose records carry them (``hierfl.data.classification``), the final round's
  per-class precision, recall, F1 and support, macro F1, AUROC (two classes), confusion
  matrix and chance level, globally and per plant.

The numbers are computed by small pure functions over the round records; the figures are
built with matplotlib's object API (``Figure``, no pyplot), so nothing touches global
plotting state and no display is needed. Works on a run that is still training: it
reports the rounds recorded so far.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter

from hierfl.data.scoring import ACCURACY, Metric, run_metric
from hierfl.runs.metrics import BYTE_TIERS, METRICS_FILE, MetricsError, read_metrics, read_run_info

Record = Mapping[str, Any]

ACCURACY_PLOT = "accuracy.png"
BYTES_PLOT = "bytes.png"
LOSS_PLOT = "loss.png"
REPORT_FILE = "report.md"

TIER_LABELS = {
    "device_to_edge": "device → edge",
    "edge_to_device": "edge → device",
    "edge_to_cloud": "edge → cloud",
    "cloud_to_edge": "cloud → edge",
}

RUN_INFO_ORDER = (
    "name",
    "task",
    "model",
    "algorithm",
    "topology",
    "seed",
    "num_plants",
    "num_devices",
    "cloud_rounds",
    "edge_rounds",
    "local_steps",
    "batch_size",
    "learning_rate",
    "started",
    "hierfl_version",
)
"""The order of ``run.json`` keys in the report's settings table; other keys follow."""

LOG_SCALE_SPREAD = 10.0
"""Plot bytes on a log axis when the largest tier total exceeds the smallest nonzero one
by more than this factor; on a linear axis the small tiers would lie flat on zero."""

TIER_STYLES = {
    "device_to_edge": {"color": "#1f77b4", "linestyle": "-"},
    "edge_to_device": {"color": "#9ecae1", "linestyle": "--"},
    "edge_to_cloud": {"color": "#d62728", "linestyle": "-"},
    "cloud_to_edge": {"color": "#fc9272", "linestyle": "--"},
}
"""One hue per link, uplink dark and solid, downlink light and dashed: links that carry
the same bytes both ways (the model down, the update up) then show as one two-tone line
instead of one line hiding the other."""

_BYTE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")
_DPI = 150


# --- numbers -------------------------------------------------------------------------


def rounds(records: Sequence[Record]) -> list[int]:
    """Returns the cloud round number of each record."""
    return [int(record["round"]) for record in records]


def cumulative_bytes(records: Sequence[Record]) -> dict[str, list[int]]:
    """Returns, per tier of ``BYTE_TIERS``, the running total of bytes sent after each
    record's round (records hold per-round bytes). Each list has one entry per record."""
    totals = {tier: [] for tier in BYTE_TIERS}
    for tier, running in totals.items():
        sent = 0
        for record in records:
            sent += int(record["bytes"][tier])
            running.append(sent)
    return totals


def total_bytes(records: Sequence[Record]) -> dict[str, int]:
    """Returns the bytes sent per tier of ``BYTE_TIERS`` over all records."""
    return {tier: sum(int(record["bytes"][tier]) for record in records) for tier in BYTE_TIERS}


def edge_to_cloud_ratio(totals: Mapping[str, int]) -> float | None:
    """Returns edge->cloud bytes over device->edge bytes: how much of the traffic the
    devices send the edges reaches the cloud. ``None`` if no device->edge bytes."""
    if totals["device_to_edge"] == 0:
        return None
    return totals["edge_to_cloud"] / totals["device_to_edge"]


def best_round(records: Sequence[Record], metric: Metric = ACCURACY) -> tuple[int, float]:
    """Returns ``(round, score)`` of the record with the best global test score (the highest
    accuracy, or the lowest error for a lower-is-better ``metric``); the earliest such round
    on ties. NaN scores never win unless all are NaN. ``records`` must not be empty."""
    best = records[metric.best_index([float(record[metric.name]) for record in records])]
    return int(best["round"]), float(best[metric.name])


def plant_accuracy_series(
    records: Sequence[Record], metric: Metric = ACCURACY
) -> dict[str, list[float]]:
    """Returns, per plant (sorted by name), its accuracy (or ``metric``) at each record,
    NaN where a record has no entry for that plant."""
    key = metric.plant_key
    plants = sorted({plant for record in records for plant in record[key]})
    return {
        plant: [float(record[key].get(plant, math.nan)) for record in records] for plant in plants
    }


def final_plant_accuracy(records: Sequence[Record], metric: Metric = ACCURACY) -> dict[str, float]:
    """Returns each plant's accuracy (or ``metric``) in the last record, sorted by plant
    name. ``records`` must not be empty."""
    last = records[-1][metric.plant_key]
    return {plant: float(last[plant]) for plant in sorted(last)}


def bytes_axis_scale(totals: Mapping[str, int]) -> str:
    """Returns ``"log"`` if the nonzero tier totals span more than ``LOG_SCALE_SPREAD``,
    else ``"linear"``."""
    nonzero = [total for total in totals.values() if total > 0]
    if nonzero and max(nonzero) > LOG_SCALE_SPREAD * min(nonzero):
        return "log"
    return "linear"


def format_bytes(count: float) -> str:
    """Returns ``count`` bytes in decimal units to three significant digits:
    ``"512 B"``, ``"1.5 kB"``, ``"12.3 MB"``, ``"1 GB"``."""
    value = float(count)
    if abs(value) < 999.5:
        return f"{value:.0f} B"
    for unit in _BYTE_UNITS[1:-1]:
        value /= 1000
        if abs(value) < 999.5:  # would not round up to "1e+03"
            return f"{value:.3g} {unit}"
    return f"{value / 1000:.3g} {_BYTE_UNITS[-1]}"


def format_duration(seconds: float) -> str:
    """Returns a duration for people: ``"42.3 s"``, ``"3 min 07 s"``, ``"2 h 05 min"``."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_accuracy(accuracy: float) -> str:
    """Returns an accuracy in [0, 1] as a percentage with two decimals: ``"91.23%"``."""
    return f"{100 * accuracy:.2f}%"


def format_figure(value: Any) -> str:
    """Returns a figure in [0, 1] (F1, AUROC) with three decimals: ``"0.913"``; ``"n/a"`` if missing or NaN."""
    if value is None or math.isnan(float(value)):
        return "n/a"
    return f"{float(value):.3f}"


def format_setting(value: Any) -> str:
    """Returns a ``run.json`` value as table text: floats in shortest form, containers as
    JSON, everything else via ``str``."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def run_info_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Returns ``(setting, value)`` rows of ``info``: the keys of ``RUN_INFO_ORDER`` present,
    in that order, then any other keys in file order."""
    keys = [key for key in RUN_INFO_ORDER if key in info]
    keys += [key for key in info if key not in RUN_INFO_ORDER]
    return [(key, format_setting(info[key])) for key in keys]


def run_title(info: Mapping[str, Any]) -> str:
    """Returns ``"<federation name>: <task>, <algorithm>"``; ``?`` for a missing field."""
    return f"{info.get('name', '?')}: {info.get('task', '?')}, {info.get('algorithm', '?')}"


# --- markdown ------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Returns a GitHub markdown table; ``|`` in cells is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def summary_markdown(info: Mapping[str, Any], records: Sequence[Record]) -> str:
    """Returns the text of ``report.md`` for a run with settings ``info`` and round
    ``records`` (not empty). Links the plots by their file names, relative to the run
    directory."""
    metric = run_metric(info)
    last = records[-1]
    best, best_score = best_round(records, metric)
    totals = total_bytes(records)
    ratio = edge_to_cloud_ratio(totals)
    planned = info.get("cloud_rounds")
    of_planned = f" of {planned} planned" if planned is not None else ""
    round_seconds = [float(record["round_seconds"]) for record in records]

    def show(value: float) -> str:
        return format_accuracy(value) if metric.percent else metric.format(value)

    plant_rows = [(plant, show(a)) for plant, a in final_plant_accuracy(records, metric).items()]
    plant_header: tuple[str, ...] = ("plant", f"final {metric.title}")
    personal = last.get(f"plant_personal_{metric.name}")
    personal_text = []
    if personal is not None:  # [personalization]: each plant's own model beside the global one
        plant_header = (
            "plant",
            f"final global {metric.title}",
            f"final personalized {metric.title}",
        )
        plant_rows = [
            (plant, a, show(float(personal.get(plant, math.nan)))) for plant, a in plant_rows
        ]
        personal_text = [
            f"Personalized ({personalization_words(info.get('personalization') or {})}): each "
            f"plant's test data scored by its own model, {metric.title} "
            f"**{show(float(last[f'personal_{metric.name}']))}** over all plants."
        ]
    byte_rows = [
        (TIER_LABELS[tier], format_bytes(totals[tier]), f"{totals[tier]:,}") for tier in BYTE_TIERS
    ]
    ratio_text = (
        "n/a (no device → edge bytes)"
        if ratio is None
        else f"**{ratio:.3g}** ({format_accuracy(ratio)} of device → edge traffic reaches the cloud)"
    )

    sections = [
        f"# {run_title(info)}",
        markdown_table(("setting", "value"), run_info_rows(info)),
        f"## {metric.title[:1].upper()}{metric.title[1:]}",
        f"Final global test {metric.title} **{show(float(last[metric.name]))}** "
        f"after cloud round {last['round']} ({len(records)} rounds recorded{of_planned}). "
        f"Best **{show(best_score)}**, reached in round {best}.",
        markdown_table(plant_header, plant_rows)
        if plant_rows
        else f"No per-plant {metric.title} recorded.",
        *personal_text,
        f"![Test {metric.title} per cloud round]({score_plot(metric)})",
        *classification_markdown(last),
        "## Communication",
        markdown_table(("tier", "total", "bytes"), byte_rows),
        f"Edge → cloud / device → edge bytes: {ratio_text}.",
        f"![Cumulative bytes per tier]({BYTES_PLOT})",
        "## Loss",
        f"Final training loss {float(last['loss']):.4g}, test loss {float(last['test_loss']):.4g}.",
        f"![Training and test loss per cloud round]({LOSS_PLOT})",
        "## Time",
        f"Wall time **{format_duration(float(last['elapsed_seconds']))}**; "
        f"mean cloud round {format_duration(sum(round_seconds) / len(round_seconds))}, "
        f"slowest {format_duration(max(round_seconds))}.",
        *simulated_time_text(last),
    ]
    return "\n\n".join(sections) + "\n"


def simulated_time_text(last: Record) -> list[str]:
    """The simulated wall-clock (`sim_seconds`, from the plants' declared speeds), if recorded."""
    if last.get("sim_seconds") is None:
        return []
    return [
        f"Simulated wall-clock from the plants' declared speeds: "
        f"**{format_duration(float(last['sim_seconds']))}** to cloud round {last['round']}."
    ]


def chance_text(chance: Mapping[str, Any] | None, where: str = "the test set") -> str:
    """Returns what always predicting the majority class of ``where`` scores, from a record's
    ``chance`` entry: ``"always predicting 'ok' scores 84.00% accuracy, macro F1 0.457"``."""
    if chance is None:
        return f"no examples of {where} were evaluated"
    return (
        f"always predicting {chance['class']!r} scores {format_accuracy(chance['accuracy'])} "
        f"accuracy, macro F1 {format_figure(chance['macro_f1'])}"
    )


def class_rows(per_class: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """Returns ``(class, precision, recall, F1, support)`` rows of a record's ``per_class`` entry."""
    return [
        (
            name,
            format_figure(entry["precision"]),
            format_figure(entry["recall"]),
            format_figure(entry["f1"]),
            str(entry["support"]),
        )
        for name, entry in per_class.items()
    ]


def confusion_markdown(class_names: Sequence[str], confusion: Sequence[Sequence[int]]) -> str:
    """Returns a confusion matrix as a table: one row per true class, one column per predicted class."""
    rows = [(name, *map(str, row)) for name, row in zip(class_names, confusion)]
    return markdown_table(("true \\ predicted", *class_names), rows)


CLASS_HEADER = ("class", "precision", "recall", "F1", "support")


def classification_markdown(record: Record) -> list[str]:
    """Returns the report's sections on a classifier's final round ``record``: per-class table,
    macro F1, AUROC, confusion matrix and chance level, globally and per plant; none for a
    record without them (a regression task, or a run recorded before they existed)."""
    if not isinstance(record.get("per_class"), Mapping):
        return []
    per_class = record["per_class"]
    two_classes = "auroc" in record
    auroc = f", AUROC **{format_figure(record['auroc'])}**" if two_classes else ""
    sections = [
        f"## Per class (round {record['round']})",
        f"Global macro F1 **{format_figure(record['macro_f1'])}**{auroc}. "
        f"Chance level: {chance_text(record.get('chance'))}.",
        markdown_table(CLASS_HEADER, class_rows(per_class)),
        "Confusion matrix (rows: true class, columns: predicted class):",
        confusion_markdown(list(per_class), record["confusion"]),
    ]
    plants = sorted(record.get("plant_per_class") or {})
    if not plants:
        return sections
    header = ("plant", "accuracy", "macro F1", *(("AUROC",) if two_classes else ()), "chance")

    def plant_row(plant: str) -> tuple[str, ...]:
        accuracy = record.get("plant_accuracy", {}).get(plant)
        chance = (record.get("plant_chance") or {}).get(plant)
        cells = [
            plant,
            "n/a" if accuracy is None or math.isnan(accuracy) else format_accuracy(accuracy),
            format_figure(record["plant_macro_f1"].get(plant)),
        ]
        if two_classes:
            cells.append(format_figure(record["plant_auroc"].get(plant)))
        cells.append(
            "n/a"
            if chance is None
            else f"{chance['class']!r} {format_accuracy(chance['accuracy'])}, "
            f"macro F1 {format_figure(chance['macro_f1'])}"
        )
        return tuple(cells)

    sections += [
        "### Per plant",
        "Each plant's own test set; chance: always predicting its majority class.",
        markdown_table(header, [plant_row(plant) for plant in plants]),
    ]
    for plant in plants:
        entry = record["plant_per_class"][plant]
        sections += [
            f"#### {plant}",
            markdown_table(CLASS_HEADER, class_rows(entry))
            if isinstance(entry, Mapping)
            else "Not evaluated in this round.",
        ]
    return sections


# --- figures -------------------------------------------------------------------------


def _round_axes(figure: Figure, title: str, ylabel: str):
    """Returns the figure's single axes with the shared look: cloud rounds on x (integer
    ticks), a light grid, ``title`` and ``ylabel``."""
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("cloud round")
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, alpha=0.3)
    return axes


def _marker(records: Sequence[Record]) -> str | None:
    """Returns a point marker for short runs, where the points are worth seeing."""
    return "o" if len(records) <= 30 else None


def score_plot(metric: Metric) -> str:
    """The file name of the score plot: ``accuracy.png``, or ``<metric>.png`` (``rmse.png``)."""
    return ACCURACY_PLOT if metric.name == "accuracy" else f"{metric.name}.png"


def accuracy_figure(info: Mapping[str, Any], records: Sequence[Record]) -> Figure:
    """Returns a figure of global test accuracy (or the run's metric, see ``hierfl.data.scoring``)
    per cloud round (bold, black) and each plant's (thin, one colour per plant), with a legend."""
    metric = run_metric(info)
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = _round_axes(figure, f"Test {metric.title} — {run_title(info)}", f"test {metric.title}")
    x = rounds(records)
    plants = plant_accuracy_series(records, metric)
    colours = matplotlib.colormaps["tab10" if len(plants) <= 10 else "tab20"]
    for index, (plant, accuracy) in enumerate(plants.items()):
        colour = colours(index % colours.N)
        axes.plot(x, accuracy, linewidth=1.2, alpha=0.85, color=colour, label=plant)
    axes.plot(
        x,
        [float(record[metric.name]) for record in records],
        color="black",
        linewidth=2.8,
        marker=_marker(records),
        markersize=4,
        label="global",
        zorder=3,
    )
    if metric.percent:
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.legend(loc="best", fontsize="small", ncols=1 + len(plants) // 12)
    return figure


def bytes_figure(info: Mapping[str, Any], records: Sequence[Record]) -> Figure:
    """Returns a figure of the cumulative bytes sent per tier over the cloud rounds (styled
    by ``TIER_STYLES``), on a log axis when the tiers differ by more than ``LOG_SCALE_SPREAD`` (see
    ``bytes_axis_scale``), with ticks and legend totals in B/kB/MB/GB."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = _round_axes(figure, f"Communication — {run_title(info)}", "cumulative bytes sent")
    x = rounds(records)
    totals = total_bytes(records)
    scale = bytes_axis_scale(totals)
    for tier, running in cumulative_bytes(records).items():
        if scale == "log" and totals[tier] == 0:
            continue  # nothing to draw on a log axis
        values = [math.nan if scale == "log" and sent == 0 else sent for sent in running]
        label = f"{TIER_LABELS[tier]} ({format_bytes(totals[tier])})"
        axes.plot(
            x,
            values,
            linewidth=2,
            marker=_marker(records),
            markersize=3,
            label=label,
            **TIER_STYLES[tier],
        )
    axes.set_yscale(scale)
    if scale == "linear":
        axes.set_ylim(bottom=0)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: format_bytes(value)))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.legend(loc="upper left", fontsize="small")
    return figure


def loss_figure(info: Mapping[str, Any], records: Sequence[Record]) -> Figure:
    """Returns a figure of the mean local training loss and the test loss per cloud round."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = _round_axes(figure, f"Loss — {run_title(info)}", "loss")
    x = rounds(records)
    marker = _marker(records)
    axes.plot(
        x,
        [float(r["loss"]) for r in records],
        linewidth=2,
        marker=marker,
        markersize=3,
        label="training (mean local)",
    )
    axes.plot(
        x,
        [float(r["test_loss"]) for r in records],
        linewidth=2,
        marker=marker,
        markersize=3,
        label="test",
    )
    axes.legend(loc="best", fontsize="small")
    return figure


# --- the run directory ---------------------------------------------------------------


def write_report(run_dir: Path | str) -> list[Path]:
    """Writes ``accuracy.png`` (``<metric>.png``), ``bytes.png``, ``loss.png`` and ``report.md`` into
    ``run_dir`` from its ``run.json`` and ``metrics.jsonl``; returns the paths written,
    in that order.

    Raises ``MetricsError`` if either file is missing or malformed, or no round has been
    recorded yet.
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise MetricsError(
            f"{run_dir / METRICS_FILE}: no cloud round recorded yet; nothing to report"
        )

    written = []
    for name, build in (
        (score_plot(run_metric(info)), accuracy_figure),
        (BYTES_PLOT, bytes_figure),
        (LOSS_PLOT, loss_figure),
    ):
        path = run_dir / name
        build(info, records).savefig(path, dpi=_DPI)
        written.append(path)
    report = run_dir / REPORT_FILE
    report.write_text(summary_markdown(info, records), encoding="utf-8")
    written.append(report)
    return written


def personalization_words(info: dict[str, Any]) -> str:
    """run.json's `personalization` in words, for the report."""
    layers = ", ".join(info.get("layers", []))
    if info.get("method") == "fine-tune":
        adapted = f"layers {layers}" if layers else "every layer"
        return (
            f"fine-tuned: the last {info.get('rounds')} rounds each plant trains {adapted} of "
            "the global model alone"
        )
    return f"per-plant layers: {layers}; the global model keeps the initial per-plant layers"
