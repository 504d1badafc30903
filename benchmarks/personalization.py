"""A model per plant against one global model and against each plant alone (issue 17).

    python benchmarks/personalization.py                      # the three tasks, 20 rounds
    python benchmarks/personalization.py --tasks bearing-fault --rounds 10
    python benchmarks/personalization.py --write docs/personalization.md

For each task (bearing-fault: the `bearing` preset; steel-defects: the defect-detection
example; bearing-rul, a regression: the equipment-failure example's `rul.toml`) the same
federation, seed and budget of `--rounds` cloud rounds trains:

- global: the topology as written, one global model (HierFAVG);
- local-only: each plant alone, its devices' data pooled, the same SGD steps as its devices
  (`hierfl.studies.baselines.train_local_only`);
- fine-tuned: `[personalization] method = "fine-tune"`, the last `--fine-tune` of the rounds
  each plant trains the global model alone: every layer, and the head only;
- plant-layers: `method = "plant-layers"`, the head kept per plant (FedPer).

Printed per plant: the task's deciding metric of each plant's model on the plant's own held-
out test data after the last round, the best marked; then whether the best personalized
method meets the issue's target (at least local-only and global on every plant, better than
global on the most-shifted plant). `--write` puts the tables between the markers of the page.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from hierfl.data.loading import load_topology
from hierfl.data.plan import make_plan
from hierfl.sim.engine import simulate
from hierfl.studies.baselines import train_local_only
from hierfl.topology import Personalization, Topology, preset_path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Case:
    """A task's federation and the name of its model's last layer."""

    source: str
    head: str


CASES = {
    "bearing-fault": Case(preset_path("bearing"), "head"),
    "steel-defects": Case(str(ROOT / "examples/defect_detection/topology.toml"), "head"),
    "bearing-rul": Case(str(ROOT / "examples/equipment_failure/rul.toml"), "inner/head"),
}


def methods(case: Case, fine_tune: int) -> dict[str, Personalization]:
    """The federated runs of a case: label -> its `[personalization]`."""
    return {
        "global": Personalization(),
        f"fine-tuned, all layers ({fine_tune} rounds)": Personalization("fine-tune", (), fine_tune),
        f"fine-tuned, head ({fine_tune} rounds)": Personalization(
            "fine-tune", (case.head,), fine_tune
        ),
        "plant-layers (head per plant)": Personalization("plant-layers", (case.head,)),
    }


def plant_scores(record: dict, metric: str, personalized: bool) -> dict[str, float]:
    """Each plant's score of its own model in a run's last record."""
    key = f"plant_personal_{metric}" if personalized else f"plant_{metric}"
    return dict(record[key])


def measure(name: str, case: Case, rounds: int, fine_tune: int, seed: int | None) -> dict:
    """Every method's per-plant score on one task, and the seconds each took."""
    topology: Topology = load_topology(case.source).with_federation(cloud_rounds=rounds)
    if seed is not None:
        topology = topology.with_federation(seed=seed)
    plan = make_plan(topology)
    metric = plan.task.metric
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    local = train_local_only(plan)
    seconds["local-only"] = time.perf_counter() - started
    rows["local-only"] = {
        result.plants[0]: result.final[f"plant_{metric.name}"][result.plants[0]] for result in local
    }
    for label, personalization in methods(case, fine_tune).items():
        started = time.perf_counter()
        run = simulate(dataclasses.replace(topology, personalization=personalization))
        seconds[label] = time.perf_counter() - started
        rows[label] = plant_scores(run.history[-1], metric.name, personalization.enabled)
        print(f"{name}: {label} done in {seconds[label]:.0f} s", flush=True)
    return {
        "task": name,
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "shifts": {plant.name: plant.shift for plant in topology.plants},
        "rounds": rounds,
        "federation": topology.federation,
        "devices": topology.num_devices,
        "rows": rows,
        "seconds": seconds,
    }


def best(scores: Sequence[float], higher: bool) -> float:
    return max(scores) if higher else min(scores)


def at_least(a: float, b: float, higher: bool, tolerance: float) -> bool:
    """Whether `a` is at least as good as `b`, within `tolerance`."""
    return a >= b - tolerance if higher else a <= b + tolerance


def table(result: dict) -> str:
    """One task's markdown table: methods as rows, plants as columns, the best in bold."""
    plants, rows = list(result["shifts"]), result["rows"]
    higher = result["higher_is_better"]
    header = " | ".join(f"{p} (shift {result['shifts'][p]:g})" for p in plants)
    lines = [f"| {result['metric']} | {header} |", "| --- |" + " --- |" * len(plants)]
    for label, scores in rows.items():
        cells = []
        for plant in plants:
            value = scores[plant]
            top = best([r[plant] for r in rows.values()], higher)
            cells.append(f"**{value:.3f}**" if value == top else f"{value:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(result: dict, tolerance: float) -> str:
    """The issue's target, per personalized method: at least local-only and global on every
    plant (within `tolerance`), better than global on the most-shifted plant."""
    plants, rows = list(result["shifts"]), result["rows"]
    higher = result["higher_is_better"]
    shifted = max(plants, key=lambda p: result["shifts"][p])
    lines = []
    for label, scores in rows.items():
        if label in ("global", "local-only"):
            continue
        short = [
            p
            for p in plants
            if not (
                at_least(scores[p], rows["global"][p], higher, tolerance)
                and at_least(scores[p], rows["local-only"][p], higher, tolerance)
            )
        ]
        beats = not at_least(rows["global"][shifted], scores[shifted], higher, 0.0)
        met = not short and beats
        why = []
        if short:
            why.append("below local-only or global on " + ", ".join(short))
        if not beats:
            why.append(f"not better than global on {shifted}")
        lines.append(
            f"- {label}: target {'met' if met else 'missed'}"
            + (f" ({'; '.join(why)})" if why else "")
        )
    return "\n".join(lines)


def markdown(results: Sequence[dict], tolerance: float, load: str) -> str:
    parts = []
    for result in results:
        federation = result["federation"]
        total = sum(result["seconds"].values())
        parts += [
            f"### {result['task']}",
            "",
            f"{result['devices']} devices, {result['rounds']} cloud rounds x "
            f"{federation.edge_rounds} edge rounds x {federation.local_steps} local steps, "
            f"seed {federation.seed}; {result['metric']} "
            f"({'higher' if result['higher_is_better'] else 'lower'} is better) of each plant's "
            f"model on the plant's own test data after the last round ({total:.0f} s in all).",
            "",
            table(result),
            "",
            verdict(result, tolerance),
            "",
        ]
    parts.append(f"Load (`/proc/loadavg`) when the runs ended: {load}")
    return "\n".join(parts)


def markers(seed: int | None) -> tuple[str, str]:
    """Where a run's tables go in the page: the topologies' own seed, or another one's."""
    name = "measured" if seed is None else f"measured, seed {seed}"
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def write_between_markers(path: Path, text: str, seed: int | None) -> None:
    """Replaces what lies between the seed's markers in `path` by `text`."""
    begin, end = markers(seed)
    page = path.read_text()
    head, rest = page.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(CASES), help="comma-separated task names")
    parser.add_argument("--rounds", type=int, default=20, help="cloud rounds per run")
    parser.add_argument("--fine-tune", type=int, default=4, help="fine-tuning rounds of those")
    parser.add_argument(
        "--tolerance", type=float, default=0.005, help="ties for the target (metric units)"
    )
    parser.add_argument("--seed", type=int, help="another seed than the topologies' own (0)")
    parser.add_argument("--write", type=Path, help="page whose measured section to replace")
    args = parser.parse_args(argv)
    results = [
        measure(name, CASES[name], args.rounds, args.fine_tune, args.seed)
        for name in args.tasks.split(",")
    ]
    text = markdown(results, args.tolerance, Path("/proc/loadavg").read_text().strip())
    print(text)
    if args.write is not None:
        write_between_markers(args.write, text, args.seed)


if __name__ == "__main__":
    main()
