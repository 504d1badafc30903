"""The end-of-run table that `hierfl simulate` and `hierfl launch` print."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from hierfl.data.scoring import ACCURACY, Metric


def summary_table(
    history: list[dict], plant_names: Sequence[str], metric: Metric = ACCURACY
) -> Table:
    """The end-of-run table: final and best score (accuracy, or the task's metric), per-plant
    score, bytes per tier, time."""
    last = history[-1]
    best = history[metric.best_index([r[metric.name] for r in history])]
    name = metric.name if metric.name == "accuracy" else metric.title
    table = Table(title="simulation summary", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("cloud rounds", str(last["round"]))
    table.add_row(f"final test {name}", f"{last[metric.name]:.4f}")
    table.add_row(f"best test {name}", f"{best[metric.name]:.4f} (round {best['round']})")
    table.add_row("final train / test loss", f"{last['loss']:.4f} / {last['test_loss']:.4f}")
    for plant in plant_names:
        table.add_row(f"  {metric.name} {plant}", f"{last[metric.plant_key][plant]:.4f}")
    for tier in ("device_to_edge", "edge_to_cloud", "cloud_to_edge"):
        total = sum(r["bytes"][tier] for r in history)
        table.add_row(
            f"bytes {tier.replace('_to_', ' -> ').replace('_', ' ')}", f"{total / 1e6:,.2f} MB"
        )
    table.add_row(
        "rejected updates (non-finite)", str(sum(r.get("rejected_updates", 0) for r in history))
    )
    table.add_row("wall time", f"{last['elapsed_seconds']:.1f} s")
    return table
