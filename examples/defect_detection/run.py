"""Visual defect detection across three rolling mills: hierarchical FL against its references.

    python examples/defect_detection/run.py

trains, on the federation of `topology.toml` (same model, initialisation, data and budget):

1. hierarchical federated learning (HierFAVG, the topology as written);
2. flat FedAvg: every camera reports to the cloud after each of its local training rounds;
3. local-only: each mill trains on its own cameras' images, tested on every mill's test set;
4. centralized: all images pooled in one place (not allowed in practice: the upper bound);

then writes into the output folder (default: this one) `results.md` (the tables),
`results.json` (every number and curve), `results.png` (accuracy against training
examples processed, and against edge->cloud bytes) and `samples.png` (test images per
class and mill). `--rounds` and `--topology` make quick runs (the tests use both).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter
from rich.console import Console

HERE = Path(__file__).resolve().parent
COMMAND = "python examples/defect_detection/run.py"
SAMPLES_PER_MILL = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", type=Path, default=HERE / "topology.toml", help="topology file (default: this example's)")
    parser.add_argument("--rounds", type=int, help="cloud rounds (default: the topology's)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the results (default: this example's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the four trainings and writes the results; returns what results.json holds."""
    import hierfl
    from hierfl.baselines import (
        flat_fedavg,
        model_bytes,
        train_baselines,
        uplink_at_equal_accuracy,
    )
    from hierfl.loading import load_topology
    from hierfl.plan import make_plan

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = " ".join([COMMAND, *argv])
    console = Console(quiet=args.quiet)
    topology = load_topology(args.topology)
    if args.rounds is not None:
        topology = topology.with_federation(cloud_rounds=args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    plan = make_plan(topology)
    samples_figure(plan).savefig(args.out / "samples.png", dpi=120)
    seconds["data"] = time.perf_counter() - started

    console.rule("[bold]1/4 hierarchical federated learning")
    started = time.perf_counter()
    hierarchical = hierfl.simulate(topology, progress=progress)
    seconds["hierarchical"] = time.perf_counter() - started

    console.rule("[bold]2/4 flat FedAvg")
    started = time.perf_counter()
    flat = hierfl.simulate(flat_fedavg(topology), progress=progress)
    seconds["flat_fedavg"] = time.perf_counter() - started

    console.rule("[bold]3/4 and 4/4 centralized and local-only")
    started = time.perf_counter()
    baselines = train_baselines(plan, progress=progress)
    seconds["baselines"] = time.perf_counter() - started

    message_bytes = model_bytes(hierarchical.params)
    uplink = uplink_at_equal_accuracy(hierarchical.history, flat.history, message_bytes)
    results = collect_results(command, args, plan, hierarchical.history, flat.history, baselines, uplink, message_bytes, seconds)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    markdown = results_markdown(results)
    (args.out / "results.md").write_text(markdown, encoding="utf-8")
    results_figure(results).savefig(args.out / "results.png", dpi=120)
    console.print(markdown)
    console.print(f"wrote results.md, results.json, results.png, samples.png to {args.out}")
    return results


# --- numbers -----------------------------------------------------------------------------


def collect_results(command, args, plan, hierarchical, flat, baselines, uplink, message_bytes, seconds) -> dict[str, Any]:
    """Everything the tables and the plot show, as plain JSON values."""
    from hierfl.baselines import flat_uplink_bytes, mean_final_accuracy

    topology, federation = plan.topology, plan.topology.federation
    plants = list(topology.plant_names)
    train_examples = int(plan.shards.counts.sum())
    per_round = topology.num_devices * federation.edge_rounds * federation.local_steps * federation.batch_size
    local = baselines.local_only
    return {
        "command": command,
        "topology": str(args.topology.relative_to(HERE) if args.topology.is_relative_to(HERE) else args.topology),
        "federation": {
            "task": federation.task,
            "model": federation.model or plan.task.default_model,
            "plants": {p.name: {"shift": p.shift, "lines": len(p.lines), "devices": p.num_devices} for p in topology.plants},
            "devices": topology.num_devices,
            "cloud_rounds": federation.cloud_rounds,
            "edge_rounds": federation.edge_rounds,
            "local_steps": federation.local_steps,
            "batch_size": federation.batch_size,
            "learning_rate": federation.learning_rate,
            "seed": federation.seed,
            "train_examples": train_examples,
            "test_examples": {name: int(np.sum(plan.test.plant == i)) for i, name in enumerate(plants)},
            "model_bytes": message_bytes,
        },
        "budget": {
            "examples_per_round": per_round,
            "examples": per_round * federation.cloud_rounds,
            "epochs": per_round * federation.cloud_rounds / train_examples,
        },
        "hierarchical": {
            **_final(hierarchical[-1]),
            "edge_to_cloud_bytes": sum(int(r["bytes"]["edge_to_cloud"]) for r in hierarchical),
            "curve": _curve(hierarchical, [per_round * r["round"] for r in hierarchical]),
        },
        "flat_fedavg": {
            **_final(flat[-1]),
            "edge_to_cloud_bytes": sum(flat_uplink_bytes(r, message_bytes) for r in flat),
            "curve": _curve(flat, [per_round // federation.edge_rounds * r["round"] for r in flat]),
        },
        "centralized": {
            **_final(baselines.centralized.final),
            "steps": baselines.centralized.budget.steps,
            "raw_image_bytes": int(plan.shards.x[0, 0].nbytes) * train_examples,
            "curve": _curve(baselines.centralized.history, [r["examples_seen"] for r in baselines.centralized.history]),
        },
        "local_only": {
            "accuracy": mean_final_accuracy(local),
            "plant_accuracy": {p: float(np.mean([m.final["plant_accuracy"][p] for m in local])) for p in plants},
            "models": {
                m.plants[0]: {**_final(m.final), "steps": m.budget.steps, "train_examples": m.train_examples} for m in local
            },
            "curve": {
                "examples": [sum(m.history[i]["examples_seen"] for m in local) for i in range(len(local[0].history))],
                "accuracy": [float(np.mean([m.history[i]["accuracy"] for m in local])) for i in range(len(local[0].history))],
            },
        },
        "uplink_at_equal_accuracy": {
            "target": uplink.target,
            "hierarchical_round": uplink.hierarchical_round,
            "hierarchical_bytes": uplink.hierarchical_bytes,
            "flat_round": uplink.flat_round,
            "flat_bytes": uplink.flat_bytes,
            "saving": uplink.saving,
        },
        "bytes_curves": {
            "hierarchical": np.cumsum([int(r["bytes"]["edge_to_cloud"]) for r in hierarchical]).tolist(),
            "flat_fedavg": np.cumsum([flat_uplink_bytes(r, message_bytes) for r in flat]).tolist(),
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def _final(record: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": float(record["accuracy"]), "plant_accuracy": {k: float(v) for k, v in record["plant_accuracy"].items()}}


def _curve(history: Sequence[dict[str, Any]], examples: Sequence[int]) -> dict[str, list]:
    return {"examples": [int(e) for e in examples], "accuracy": [float(r["accuracy"]) for r in history]}


# --- markdown ----------------------------------------------------------------------------


def results_markdown(results: dict[str, Any]) -> str:
    """The results tables (what README.md quotes)."""
    from hierfl.report import format_bytes, markdown_table

    fed = results["federation"]
    plants = list(fed["plants"])
    def pct(accuracy: float) -> str:
        return f"{100 * accuracy:.1f}%"

    def row(label, entry, sent):
        return [label, f"**{pct(entry['accuracy'])}**", *(pct(entry["plant_accuracy"][p]) for p in plants), sent]

    hier, flat, central, local = (results[k] for k in ("hierarchical", "flat_fedavg", "centralized", "local_only"))
    rows = [
        row(f"hierarchical FL (HierFAVG, {len(plants)} edges, κ2 = {fed['edge_rounds']})", hier, format_bytes(hier["edge_to_cloud_bytes"])),
        row(f"flat FedAvg ({fed['devices']} devices → cloud)", flat, format_bytes(flat["edge_to_cloud_bytes"])),
        row(f"local-only, mean of {len(plants)} mills", local, "0 B"),
        *(row(f"  local-only: {p}'s model", local["models"][p], "0 B") for p in plants),
        row("centralized (upper bound)", central, f"{format_bytes(central['raw_image_bytes'])} of raw images"),
    ]
    header = ["method", "accuracy, all mills", *(f"{p} (shift {fed['plants'][p]['shift']:g})" for p in plants), "edge → cloud"]
    uplink = results["uplink_at_equal_accuracy"]
    budget = results["budget"]
    equal_rows = [
        ["hierarchical FL", str(uplink["hierarchical_round"]), format_bytes(uplink["hierarchical_bytes"])],
        ["flat FedAvg", str(uplink["flat_round"]), format_bytes(uplink["flat_bytes"])],
    ]
    saving = "n/a" if uplink["saving"] is None else f"{uplink['saving']:.1f}x"
    return "\n\n".join([
        "## Results",
        (
            f"`{results['command']}` (seed {fed['seed']}): {fed['devices']} cameras in {len(plants)} mills, "
            f"task `{fed['task']}`, model `{fed['model']}` ({fed['model_bytes']:,} bytes), "
            f"{fed['train_examples']:,} training images, test images per mill: "
            + ", ".join(f"{p} {n}" for p, n in fed["test_examples"].items()) + "."
        ),
        (
            f"Every method processes the same {budget['examples']:,} training examples ({budget['epochs']:.0f} epochs) "
            f"in SGD steps of {fed['batch_size']} at learning rate {fed['learning_rate']:g}: the federation's "
            f"{fed['cloud_rounds']} cloud rounds x {fed['edge_rounds']} edge rounds x {fed['local_steps']} local steps on "
            f"every camera. Accuracy is on the test images of all mills, then of each mill, after the last round."
        ),
        markdown_table(header, rows),
        f"### Edge → cloud bytes at equal accuracy ({pct(uplink['target'])}, the best accuracy both reach)",
        markdown_table(["run", "first round at target", "edge → cloud bytes until then"], equal_rows),
        f"Flat FedAvg sends **{saving}** the bytes of the hierarchy to the cloud for the same accuracy.",
        "![accuracy against examples processed and against edge-to-cloud bytes](results.png)",
    ]) + "\n"


# --- figures -----------------------------------------------------------------------------


STYLES = {
    "hierarchical": ("hierarchical FL", "#d62728", "-"),
    "flat_fedavg": ("flat FedAvg", "#1f77b4", "-"),
    "centralized": ("centralized (upper bound)", "black", "--"),
    "local_only": ("local-only (mean of mills)", "#2ca02c", "-."),
}


def results_figure(results: dict[str, Any]) -> Figure:
    """Left: accuracy on all mills against epochs processed; right: against edge->cloud bytes."""
    from hierfl.report import format_bytes

    train = results["federation"]["train_examples"]
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    for key, (label, colour, style) in STYLES.items():
        curve = results[key]["curve"]
        left.plot(np.asarray(curve["examples"]) / train, curve["accuracy"], style, color=colour, label=label, linewidth=1.8)
    left.set_xlabel("epochs (training examples processed / training examples)")
    left.set_ylabel("test accuracy, all mills")
    left.set_title("Same budget: accuracy as training proceeds")
    for key in ("hierarchical", "flat_fedavg"):
        label, colour, style = STYLES[key]
        right.plot(results["bytes_curves"][key], results[key]["curve"]["accuracy"], style, color=colour, label=label,
                   linewidth=1.8, marker="o", markersize=3)
    uplink = results["uplink_at_equal_accuracy"]
    right.axhline(uplink["target"], color="grey", linewidth=1, linestyle=":", label=f"target {100 * uplink['target']:.1f}%")
    for key, at in (("hierarchical", uplink["hierarchical_bytes"]), ("flat_fedavg", uplink["flat_bytes"])):
        if at is not None:
            right.plot([at], [uplink["target"]], "D", color=STYLES[key][1], markersize=8)
    right.set_xscale("log")
    right.xaxis.set_major_formatter(FuncFormatter(lambda value, _: format_bytes(value)))
    right.set_xlabel("edge → cloud bytes sent (cumulative)")
    right.set_title("Communication: accuracy against cloud uplink")
    for axes in (left, right):
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower right", fontsize="small")
    return figure


def samples_figure(plan) -> Figure:
    """Test images: one row per class, `SAMPLES_PER_MILL` columns per mill (each mill's camera)."""
    task, topology, test = plan.task, plan.topology, plan.test
    plants = topology.plants
    columns = SAMPLES_PER_MILL * len(plants)
    figure = Figure(figsize=(1.1 * columns + 1.6, 1.1 * task.num_classes + 0.6), layout="constrained")
    grid = figure.subplots(task.num_classes, columns, squeeze=False)
    for c, name in enumerate(task.class_names):
        for p, plant in enumerate(plants):
            members = np.flatnonzero((test.y == c) & (test.plant == p))[:SAMPLES_PER_MILL]
            for j in range(SAMPLES_PER_MILL):
                axes = grid[c, p * SAMPLES_PER_MILL + j]
                axes.set_xticks([])
                axes.set_yticks([])
                if j < len(members):
                    axes.imshow(test.x[members[j], ..., 0], cmap="gray", vmin=0.0, vmax=1.0)
                if c == 0 and j == SAMPLES_PER_MILL // 2:
                    axes.set_title(f"{plant.name}\nshift {plant.shift:g}", fontsize="small")
        grid[c, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize="small")
    return figure


if __name__ == "__main__":
    from hierfl.parallel import request_cpu_devices

    request_cpu_devices()  # before JAX starts: train the devices on every core
    main()
