"""Visual defect detection across three rolling mills: hierarchical FL against its references.

    python examples/defect_detection/run.py

trains, on the federation of `topology.toml` (same model, initialisation, data and budget):

1. hierarchical federated learning (HierFAVG, the topology as written);
2. flat FedAvg: every camera reports to the cloud after each of its local training rounds;
3. local-only: each mill trains on its own cameras' images, tested on every mill's test set;
4. centralized: all images pooled in one place (not allowed in practice: the upper bound);

(`hierfl.studies.comparison`), then writes into the output folder (default: this one)
`results.md` (the tables), `results.json` (every number and curve), `results.png`
(accuracy against training examples processed, and against edge->cloud bytes) and
`samples.png` (test images per class and mill). `--rounds` and `--topology` make quick runs (the tests use both).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from rich.console import Console

HERE = Path(__file__).resolve().parent
COMMAND = "python examples/defect_detection/run.py"
SAMPLES_PER_MILL = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--topology",
        type=Path,
        default=HERE / "topology.toml",
        help="topology file (default: this example's)",
    )
    parser.add_argument("--rounds", type=int, help="cloud rounds (default: the topology's)")
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder for the results (default: this example's)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the four trainings and writes the results; returns what results.json holds."""
    from hierfl.data.loading import load_topology
    from hierfl.data.plan import make_plan
    from hierfl.studies.comparison import Words, collect_results, compare, write_results

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = " ".join([COMMAND, *argv])
    console = Console(quiet=args.quiet)
    words = Words("camera", "cameras", "mill", "mills", "image", "images")
    topology = load_topology(args.topology)
    if args.rounds is not None:
        topology = topology.with_federation(cloud_rounds=args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    plan = make_plan(topology)
    samples_figure(plan).savefig(args.out / "samples.png", dpi=120)
    data_seconds = time.perf_counter() - started

    comparison = compare(
        topology,
        plan=plan,
        progress=not args.quiet,
        announce=lambda title: console.rule(f"[bold]{title}"),
    )
    label = str(
        args.topology.relative_to(HERE) if args.topology.is_relative_to(HERE) else args.topology
    )
    results = collect_results(command, label, comparison, words)
    results["seconds"] = {"data": round(data_seconds, 1), **results["seconds"]}
    markdown = write_results(args.out, "results", results, words)
    console.print(markdown)
    console.print(f"wrote results.md, results.json, results.png, samples.png to {args.out}")
    return results


# --- figures -----------------------------------------------------------------------------


def samples_figure(plan) -> Figure:
    """Test images: one row per class, `SAMPLES_PER_MILL` columns per mill (each mill's camera)."""
    task, topology, test = plan.task, plan.topology, plan.test
    plants = topology.plants
    columns = SAMPLES_PER_MILL * len(plants)
    figure = Figure(
        figsize=(1.1 * columns + 1.6, 1.1 * task.num_classes + 0.6), layout="constrained"
    )
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
    from hierfl.sim.parallel import request_cpu_devices

    request_cpu_devices()  # before JAX starts: train the devices on every core
    main()
