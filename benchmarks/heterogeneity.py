"""Federated optimizers under label skew and unequal compute, and the hierarchy against flat FedAvg.

    python benchmarks/heterogeneity.py            # docs/heterogeneity.{md,json,png}: 24 minutes on 2 busy CPU cores
    python benchmarks/heterogeneity.py --quick    # smoke run: digits only, one seed, 10 rounds (about 1 minute)

Issue 3's experiment. One federation shape for everything: 2 plants (plant-b's sensors
shifted, `shift = 0.3`) x 3 lines x 5 devices, with unequal compute budgets: the lines' devices
take 2, 5 and 10 local SGD steps per edge round (`[[plants.lines]] local_steps`), for every
algorithm, so FedNova's normalization has something to correct. Two edge rounds per cloud
round. Each line's data is split over its devices by Dirichlet(alpha) label skew, alpha in
{0.1, 1.0}, or uniformly (IID).

1. **Algorithms.** FedAvg, FedProx, FedNova, SCAFFOLD and FedAdam (FedAvg devices, Adam at the
   cloud) on `digits` and on `steel-defects`: final test accuracy (all plants' test data, after
   the last cloud round, mean over seeds) and the first cloud round reaching the task's
   threshold: 85% on digits; 70% on steel-defects, whose FedAvg reaches about 75-82% in the 12
   rounds its cost allows (bearing-fault's windows cost more per round and its FedAvg stayed at
   chance for the first rounds of a probe, so steel-defects is the industrial task).
2. **Tuning.** FedProx's `mu` and FedAdam's server learning rate are picked from small grids
   on one setting (digits, alpha 0.1, the first seed), by the mean accuracy of the last five
   rounds, and used everywhere; FedAvg, FedNova and SCAFFOLD have no extra hyperparameter
   (every method uses the task's device learning rate).
3. **Hierarchy against flat FedAvg.** FedAvg with `edge_rounds = 4` for R cloud rounds
   against `hierfl.studies.baselines.flat_fedavg` of the same topology (every device reports to
   the cloud after each of its local rounds) for 4R rounds: every device takes exactly the
   same SGD steps in both (checked), and the plot shows accuracy against edge->cloud bytes.

Writes `heterogeneity.md` (tables), `heterogeneity.json` (every curve) and
`heterogeneity.png` to `--out` (default `docs/`; `--quick` writes nothing unless given `--out`)
and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python benchmarks/heterogeneity.py"

LINE_STEPS = (2, 5, 10)
"""Local SGD steps per edge round of each plant's three lines (5 devices each)."""

PLANT_SHIFTS = (("plant-a", 0.0), ("plant-b", 0.3))
EDGE_ROUNDS = 2
"""Edge rounds per cloud round in the algorithm comparison."""

HIERARCHY_EDGE_ROUNDS = 4
"""Edge rounds per cloud round of the hierarchical run compared with flat FedAvg."""

LAST_ROUNDS = 5
"""Rounds averaged for the tuning criterion."""


@dataclasses.dataclass(frozen=True)
class Partition:
    """How each line's data is split over its devices."""

    label: str
    partition: str
    alpha: float = 0.5


PARTITIONS = (
    Partition("alpha 0.1", "dirichlet", 0.1),
    Partition("alpha 1.0", "dirichlet", 1.0),
    Partition("IID", "iid"),
)


@dataclasses.dataclass(frozen=True)
class TaskSetting:
    """One task's federation settings and experiment sizes.

    `rounds`: cloud rounds of the algorithm comparison; `hierarchy_rounds`: cloud rounds of
    the `edge_rounds = 4` run (flat FedAvg gets 4x as many); `threshold`: the accuracy whose
    first round is reported; `seeds`: seeds averaged over; `partitions` and
    `hierarchy_partitions`: the `PARTITIONS` labels each comparison runs.
    """

    task: str
    model: str
    batch_size: int
    learning_rate: float
    samples_per_device: int | None
    test_fraction: float
    rounds: int
    hierarchy_rounds: int
    threshold: float
    seeds: tuple[int, ...]
    partitions: tuple[str, ...]
    hierarchy_partitions: tuple[str, ...]


ALL = ("alpha 0.1", "alpha 1.0", "IID")
FULL = (
    TaskSetting(
        "digits",
        "mlp",
        32,
        0.1,
        None,
        0.2,
        rounds=40,
        hierarchy_rounds=20,
        threshold=0.85,
        seeds=(0, 1, 2),
        partitions=ALL,
        hierarchy_partitions=ALL,
    ),
    TaskSetting(
        "steel-defects",
        "cnn",
        16,
        0.1,
        64,
        0.25,
        rounds=12,
        hierarchy_rounds=6,
        threshold=0.70,
        seeds=(0,),
        partitions=ALL,
        hierarchy_partitions=("alpha 0.1",),
    ),
)
QUICK = (
    TaskSetting(
        "digits",
        "mlp",
        32,
        0.1,
        None,
        0.2,
        rounds=10,
        hierarchy_rounds=5,
        threshold=0.85,
        seeds=(0,),
        partitions=("alpha 0.1", "IID"),
        hierarchy_partitions=("alpha 0.1",),
    ),
)

MU_GRID = (0.001, 0.01, 0.1)
FEDADAM_LR_GRID = (0.003, 0.01, 0.03, 0.1)


@dataclasses.dataclass(frozen=True)
class Method:
    """An algorithm as the topology selects it: `federation.algorithm`, its one hyperparameter, the cloud optimizer."""

    name: str
    algorithm: str
    mu: float | None = None
    optimizer: str = "sgd"
    server_learning_rate: float = 1.0

    @property
    def setting(self) -> str:
        if self.mu is not None:
            return f"mu = {self.mu:g}"
        if self.optimizer != "sgd":
            return f"{self.optimizer}, server lr = {self.server_learning_rate:g}"
        return ""


def methods(mu: float, fedadam_lr: float) -> tuple[Method, ...]:
    return (
        Method("FedAvg", "fedavg"),
        Method("FedProx", "fedprox", mu=mu),
        Method("FedNova", "fednova"),
        Method("SCAFFOLD", "scaffold"),
        Method("FedAdam", "fedavg", optimizer="adam", server_learning_rate=fedadam_lr),
    )


# --- topologies --------------------------------------------------------------------------


def topology_text(setting: TaskSetting, partition: Partition, edge_rounds: int) -> str:
    """The TOML of the experiment's federation for one task and partition (algorithm: fedavg)."""
    samples = (
        ""
        if setting.samples_per_device is None
        else f"samples_per_device = {setting.samples_per_device}\n"
    )
    text = (
        "[federation]\n"
        f'name = "heterogeneity-{setting.task}"\n'
        f'task = "{setting.task}"\n'
        f'model = "{setting.model}"\n'
        'algorithm = "fedavg"\n'
        f"cloud_rounds = {setting.rounds}\n"
        f"edge_rounds = {edge_rounds}\n"
        f"local_steps = {max(LINE_STEPS)}\n"
        f"batch_size = {setting.batch_size}\n"
        f"learning_rate = {setting.learning_rate}\n"
        "seed = 0\n\n"
        "[data]\n"
        f'partition = "{partition.partition}"\n'
        f"alpha = {partition.alpha}\n"
        f"{samples}"
        f"test_fraction = {setting.test_fraction}\n\n"
        "[cloud]\n"
        'address = "tcp://127.0.0.1:5550"\n'
    )
    for p, (plant, shift) in enumerate(PLANT_SHIFTS):
        text += f'\n[[plants]]\nname = "{plant}"\naddress = "tcp://127.0.0.1:{5560 + p}"\nshift = {shift}\n'
        for index, steps in enumerate(LINE_STEPS, start=1):
            text += (
                f'\n[[plants.lines]]\nname = "line-{index}"\ndevices = 5\nlocal_steps = {steps}\n'
            )
    return text


def base_topology(setting: TaskSetting, partition: Partition, edge_rounds: int = EDGE_ROUNDS):
    """The federation as `hierfl.load_topology` would load it (task and algorithm names checked)."""
    from hierfl.core.algorithms import ALGORITHMS
    from hierfl.data.tasks import TASKS
    from hierfl.topology import parse_topology

    source = f"<heterogeneity {setting.task} {partition.label}>"
    choices = {"federation.task": TASKS, "federation.algorithm": ALGORITHMS}
    return parse_topology(topology_text(setting, partition, edge_rounds), source, choices=choices)


def with_method(topology, method: Method, seed: int, rounds: int):
    """`topology` running `method` with `seed` for `rounds` cloud rounds (`hierfl.studies.comparison.Alternative.apply`)."""
    from hierfl.studies.comparison import Alternative

    alternative = Alternative(
        method.name, method.algorithm, method.mu, method.optimizer, method.server_learning_rate
    )
    return alternative.apply(topology.with_federation(seed=seed, cloud_rounds=rounds))


def device_steps(topology) -> int:
    """SGD steps all devices take in the whole run."""
    federation = topology.federation
    return sum(topology.device_steps) * federation.edge_rounds * federation.cloud_rounds


# --- runs --------------------------------------------------------------------------------


def run(topology, label: str, log) -> dict[str, Any]:
    """Simulates `topology`; its accuracy curve, edge->cloud bytes per round and seconds."""
    import hierfl
    from hierfl.studies.baselines import model_bytes

    started = time.perf_counter()
    result = hierfl.simulate(topology)
    seconds = time.perf_counter() - started
    federation = topology.federation
    curve = [float(r["accuracy"]) for r in result.history]
    log(
        f"{label}, seed {federation.seed}, {federation.cloud_rounds} rounds: "
        f"final {100 * curve[-1]:.1f}%, best {100 * max(curve):.1f}% ({seconds:.0f} s)"
    )
    return {
        "accuracy": curve,
        "edge_to_cloud_bytes": [int(r["bytes"]["edge_to_cloud"]) for r in result.history],
        "devices": int(result.history[-1]["devices"]),
        "model_bytes": model_bytes(result.params),
        "device_steps": device_steps(topology),
        "seconds": round(seconds, 1),
    }


def first_round(curve: Sequence[float], threshold: float) -> int | None:
    """The first cloud round (1-based) whose accuracy is >= threshold, or None."""
    for r, accuracy in enumerate(curve, start=1):
        if accuracy >= threshold:
            return r
    return None


def tune(setting: TaskSetting, partition: Partition, log) -> dict[str, Any]:
    """FedProx's mu and FedAdam's server learning rate on one setting: the best last-rounds mean."""
    base = base_topology(setting, partition)
    seed = setting.seeds[0]
    candidates = {
        "fedprox_mu": [(mu, Method("FedProx", "fedprox", mu=mu)) for mu in MU_GRID],
        "fedadam_server_lr": [
            (lr, Method("FedAdam", "fedavg", optimizer="adam", server_learning_rate=lr))
            for lr in FEDADAM_LR_GRID
        ],
    }
    tuning: dict[str, Any] = {
        "task": setting.task,
        "partition": partition.label,
        "seed": seed,
        "criterion": f"mean accuracy of the last {LAST_ROUNDS} rounds",
    }
    for key, grid in candidates.items():
        scores = {}
        for value, method in grid:
            label = f"tuning {setting.task} {partition.label} {method.name} {key} = {value:g}"
            curve = run(with_method(base, method, seed, setting.rounds), label, log)["accuracy"]
            scores[value] = float(np.mean(curve[-LAST_ROUNDS:]))
        best = max(scores, key=lambda value: scores[value])
        tuning[key] = {"grid": {f"{v:g}": s for v, s in scores.items()}, "chosen": best}
    return tuning


def compare_algorithms(setting: TaskSetting, method_list: Sequence[Method], log) -> dict[str, Any]:
    """Every method x partition x seed on one task: curves and summaries."""
    results: dict[str, Any] = {}
    for partition in PARTITIONS:
        if partition.label not in setting.partitions:
            continue
        base = base_topology(setting, partition)
        per_method = {}
        for method in method_list:
            label = f"{setting.task} {partition.label} {method.name}" + (
                f" ({method.setting})" if method.setting else ""
            )
            runs = [
                run(with_method(base, method, seed, setting.rounds), label, log)
                for seed in setting.seeds
            ]
            curves = np.array([r["accuracy"] for r in runs])
            reached = [first_round(curve, setting.threshold) for curve in curves]
            per_method[method.name] = {
                "final_accuracy": float(curves[:, -1].mean()),
                "final_accuracy_std": float(curves[:, -1].std()),
                "rounds_to_threshold": reached,
                "mean_curve": curves.mean(axis=0).tolist(),
                "edge_to_cloud_bytes_per_round": runs[0]["edge_to_cloud_bytes"][0],
                "runs": runs,
            }
        results[partition.label] = per_method
    return results


def compare_hierarchy(setting: TaskSetting, log) -> dict[str, Any]:
    """FedAvg with edge_rounds = 4 against flat FedAvg at equal device steps, per partition."""
    from hierfl.studies.baselines import flat_fedavg, flat_uplink_bytes

    results: dict[str, Any] = {}
    fedavg = Method("FedAvg", "fedavg")
    for partition in PARTITIONS:
        if partition.label not in setting.hierarchy_partitions:
            continue
        base = base_topology(setting, partition, edge_rounds=HIERARCHY_EDGE_ROUNDS)
        entry: dict[str, Any] = {}
        for seed in setting.seeds:
            hierarchical = with_method(base, fedavg, seed, setting.hierarchy_rounds)
            flat = flat_fedavg(hierarchical)
            if device_steps(flat) != device_steps(hierarchical):
                raise RuntimeError(
                    f"unequal device steps: flat {device_steps(flat)}, hierarchical {device_steps(hierarchical)}"
                )
            h = run(
                hierarchical,
                f"{setting.task} {partition.label} FedAvg hierarchical, edge_rounds = {HIERARCHY_EDGE_ROUNDS}",
                log,
            )
            f = run(flat, f"{setting.task} {partition.label} FedAvg flat", log)
            # The simulator counts a flat run's uplink as its edges'; flat FedAvg's devices talk to the cloud.
            f["edge_to_cloud_bytes"] = [
                flat_uplink_bytes({"devices": f["devices"]}, f["model_bytes"])
            ] * len(f["accuracy"])
            entry.setdefault("hierarchical", []).append(h)
            entry.setdefault("flat", []).append(f)
        results[partition.label] = summarize_hierarchy(entry, setting.threshold)
    return results


def summarize_hierarchy(entry: dict[str, list], threshold: float) -> dict[str, Any]:
    """Mean curves against cumulative bytes and device steps, and the bytes until the threshold."""
    out: dict[str, Any] = {}
    for kind, runs in entry.items():
        curve = np.mean([r["accuracy"] for r in runs], axis=0)
        sent = np.cumsum(runs[0]["edge_to_cloud_bytes"]).tolist()
        rounds = len(curve)
        steps = [runs[0]["device_steps"] * (r + 1) // rounds for r in range(rounds)]
        at = first_round(curve, threshold)
        out[kind] = {
            "mean_curve": curve.tolist(),
            "cumulative_bytes": sent,
            "cumulative_device_steps": steps,
            "final_accuracy": float(curve[-1]),
            "device_steps": runs[0]["device_steps"],
            "total_bytes": int(sent[-1]),
            "round_at_threshold": at,
            "bytes_at_threshold": None if at is None else int(sent[at - 1]),
            "runs": runs,
        }
    h, f = out["hierarchical"], out["flat"]
    out["saving_at_threshold"] = (
        None
        if h["bytes_at_threshold"] is None or f["bytes_at_threshold"] is None
        else f["bytes_at_threshold"] / h["bytes_at_threshold"]
    )
    return out


# --- markdown ----------------------------------------------------------------------------


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def rounds_cell(reached: Sequence[int | None], total: int) -> str:
    """Mean first round over the seeds that reached the threshold; `> total` if none did."""
    hit = [r for r in reached if r is not None]
    if not hit:
        return f"> {total}"
    text = f"{np.mean(hit):.1f}".removesuffix(".0") if len(reached) > 1 else str(hit[0])
    return text if len(hit) == len(reached) else f"{text} ({len(hit)}/{len(reached)})"


def algorithm_table(setting: dict[str, Any], results: dict[str, Any]) -> str:
    from hierfl.runs.report import markdown_table

    threshold, rounds = setting["threshold"], setting["rounds"]
    header = ["method", "setting"]
    for label in results:
        header += [f"{label}: final", f"{label}: rounds to {pct(threshold)}"]
    rows = []
    names = list(next(iter(results.values())))
    best = {label: max(results[label][m]["final_accuracy"] for m in names) for label in results}
    for name in names:
        row = [name, setting["methods"][name]]
        for label, per_method in results.items():
            entry = per_method[name]
            final = pct(entry["final_accuracy"])
            if len(setting["seeds"]) > 1:
                final += f" ± {100 * entry['final_accuracy_std']:.1f}"
            if entry["final_accuracy"] == best[label]:
                final = f"**{final}**"
            row += [final, rounds_cell(entry["rounds_to_threshold"], rounds)]
        rows.append(row)
    return markdown_table(header, rows)


def findings_table(setting: dict[str, Any], results: dict[str, Any]) -> str:
    """Per partition: the best and worst final accuracy and the fastest to the threshold, each against FedAvg.

    Differences to FedAvg are paired by seed (a seed fixes the data split, the test set and
    the initial model for every method), with their range over the seeds.
    """
    from hierfl.runs.report import markdown_table

    rows = []
    for label, per_method in results.items():
        finals = {
            name: np.array([r["accuracy"][-1] for r in entry["runs"]])
            for name, entry in per_method.items()
        }
        speeds = {
            name: _mean_rounds(entry["rounds_to_threshold"]) for name, entry in per_method.items()
        }
        means = {name: float(values.mean()) for name, values in finals.items()}
        best, worst = max(means, key=means.get), min(means, key=means.get)

        def versus(name: str) -> str:
            if name == "FedAvg":
                return f"FedAvg {pct(means[name])}"
            diff = 100 * (finals[name] - finals["FedAvg"])
            text = f"{name} {pct(means[name])} ({diff.mean():+.1f} points vs FedAvg"
            if len(diff) > 1:
                text += f"; per seed {diff.min():+.1f} to {diff.max():+.1f}"
            return text + ")"

        reached = {name: r for name, r in speeds.items() if r is not None}
        if reached:
            fastest = min(reached.values())
            names = ", ".join(name for name, r in reached.items() if r == fastest)
            fedavg_rounds = speeds["FedAvg"]
            speed = f"{names}: {fastest:.3g} rounds (FedAvg: {'not reached' if fedavg_rounds is None else f'{fedavg_rounds:.3g}'})"
        else:
            speed = "none reached it"
        rows.append([label, versus(best), versus(worst), speed])
    return markdown_table(
        [
            "partition",
            "best final accuracy",
            "worst final accuracy",
            f"fastest to {pct(setting['threshold'])}",
        ],
        rows,
    )


def _mean_rounds(reached: Sequence[int | None]) -> float | None:
    """Mean first round over the seeds; None unless every seed reached the threshold."""
    return None if any(r is None for r in reached) else float(np.mean(reached))


def hierarchy_table(setting: dict[str, Any], results: dict[str, Any]) -> str:
    from hierfl.runs.report import format_bytes, markdown_table

    threshold = setting["threshold"]
    rows = []
    for label, entry in results.items():
        h, f = entry["hierarchical"], entry["flat"]
        saving = (
            "n/a"
            if entry["saving_at_threshold"] is None
            else f"{entry['saving_at_threshold']:.1f}x"
        )
        for name, run_entry, rounds in (
            (f"hierarchical, edge_rounds = {HIERARCHY_EDGE_ROUNDS}", h, len(h["mean_curve"])),
            ("flat FedAvg", f, len(f["mean_curve"])),
        ):
            at = run_entry["round_at_threshold"]
            rows.append(
                [
                    label,
                    name,
                    str(rounds),
                    f"{run_entry['device_steps']:,}",
                    pct(run_entry["final_accuracy"]),
                    format_bytes(run_entry["total_bytes"]),
                    "not reached"
                    if at is None
                    else f"round {at}: {format_bytes(run_entry['bytes_at_threshold'])}",
                    saving if run_entry is h else "",
                ]
            )
    header = [
        "partition",
        "run",
        "cloud rounds",
        "device steps",
        "final accuracy",
        "edge → cloud bytes",
        f"bytes until {pct(threshold)}",
        "flat / hierarchical bytes",
    ]
    return markdown_table(header, rows)


def bytes_note(results: dict[str, Any]) -> str:
    """Edge->cloud bytes per cloud round of each method (SCAFFOLD also sends its control variates)."""
    from hierfl.runs.report import format_bytes

    per_method = next(iter(results.values()))
    return (
        "Edge → cloud bytes per cloud round: "
        + ", ".join(
            f"{name} {format_bytes(entry['edge_to_cloud_bytes_per_round'])}"
            for name, entry in per_method.items()
        )
        + "."
    )


def results_markdown(results: dict[str, Any]) -> str:
    """The tables of docs/heterogeneity.md, with the command and the settings."""
    parts = [
        "# Federated optimizers under heterogeneity",
        f"    {results['command']}",
        (
            f"Made by the command above in {results['seconds'] / 60:.1f} minutes on {results['machine']}. "
            f"Federation: 2 plants (plant-b shifted, shift 0.3) x 3 lines x 5 devices = 30 devices; "
            f"the lines' devices take {', '.join(map(str, LINE_STEPS))} local SGD steps per edge round "
            f"(all algorithms); {EDGE_ROUNDS} edge rounds per cloud round; each line's data split over its "
            "devices by Dirichlet(alpha) label skew or uniformly (IID). Accuracy is on the held-out test "
            "data of both plants after the last cloud round; rounds are cloud rounds."
        ),
    ]
    tuning = results["tuning"]
    if not tuning["fedprox_mu"]["grid"]:
        parts.append(
            f"Not tuned (`--quick`): FedProx mu = {tuning['fedprox_mu']['chosen']:g}, "
            f"FedAdam server learning rate = {tuning['fedadam_server_lr']['chosen']:g}."
        )
    else:
        parts.append(
            f"Tuned once, on {tuning['task']} {tuning['partition']} seed {tuning['seed']} "
            f"({tuning['criterion']}), then used everywhere: FedProx mu in "
            + ", ".join(f"{k} ({pct(v)})" for k, v in tuning["fedprox_mu"]["grid"].items())
            + f" → **{tuning['fedprox_mu']['chosen']:g}**; FedAdam server learning rate in "
            + ", ".join(f"{k} ({pct(v)})" for k, v in tuning["fedadam_server_lr"]["grid"].items())
            + f" → **{tuning['fedadam_server_lr']['chosen']:g}** (Adam beta1 0.9, beta2 0.99, tau 1e-3)."
        )
    for task, entry in results["tasks"].items():
        setting = entry["setting"]
        seeds = setting["seeds"]
        parts.append(f"## {task}: algorithms")
        parts.append(
            f"Model `{setting['model']}`, batch {setting['batch_size']}, device learning rate "
            f"{setting['learning_rate']:g}, {setting['rounds']} cloud rounds, "
            + (
                f"seeds {', '.join(map(str, seeds))} (final accuracy: mean ± std over seeds; rounds: mean over seeds; "
                "a seed also redraws the data split and the test set, so the spread is mostly the data's: the table "
                "after this one compares each method with FedAvg seed by seed)"
                if len(seeds) > 1
                else f"seed {seeds[0]}"
            )
            + f". Threshold {pct(setting['threshold'])}; `> {setting['rounds']}` = not reached. "
            "Bold: the best final accuracy of the column."
        )
        parts.append(algorithm_table(setting, entry["algorithms"]))
        parts.append(findings_table(setting, entry["algorithms"]))
        parts.append(bytes_note(entry["algorithms"]))
        if entry["hierarchy"]:
            parts.append(f"## {task}: hierarchical against flat FedAvg at equal device steps")
            parts.append(
                f"FedAvg; the hierarchical run aggregates at the plants {HIERARCHY_EDGE_ROUNDS} times per cloud round, "
                f"flat FedAvg sends every device's update to the cloud after each of its local rounds "
                f"(`hierfl.studies.baselines.flat_fedavg`) for {HIERARCHY_EDGE_ROUNDS}x the rounds, so both take the same device "
                "steps (the column is checked equal). Bytes: the cloud uplink, cumulative; "
                + ("mean accuracy over the seeds." if len(seeds) > 1 else f"seed {seeds[0]}.")
            )
            parts.append(hierarchy_table(setting, entry["hierarchy"]))
    parts.append(
        "![accuracy against edge-to-cloud bytes, and against cloud rounds](heterogeneity.png)"
    )
    return "\n\n".join(parts) + "\n"


NOTES_MARKER = "<!-- notes: written by hand, kept when the script rewrites the tables above -->"


def kept_notes(document: Path) -> str:
    """The hand-written part of an existing `document`: from `NOTES_MARKER` to its end ("" if none)."""
    if not document.exists():
        return ""
    text = document.read_text(encoding="utf-8")
    at = text.find(NOTES_MARKER)
    return "" if at < 0 else "\n" + text[at:]


# --- figure ------------------------------------------------------------------------------


COLOURS = {
    "FedAvg": "#1f77b4",
    "FedProx": "#ff7f0e",
    "FedNova": "#2ca02c",
    "SCAFFOLD": "#d62728",
    "FedAdam": "#9467bd",
}
PARTITION_COLOURS = {"alpha 0.1": "#d62728", "alpha 1.0": "#ff7f0e", "IID": "#1f77b4"}


def results_figure(results: dict[str, Any]) -> Figure:
    """One column per task. Rows: hierarchical vs flat FedAvg against edge->cloud bytes, the same
    against device steps, and the algorithms' accuracy per cloud round at the strongest skew."""
    from hierfl.runs.report import format_bytes

    tasks = list(results["tasks"])
    figure = Figure(figsize=(6.5 * len(tasks), 13), layout="constrained")
    grid = figure.subplots(3, len(tasks), squeeze=False)
    for column, task in enumerate(tasks):
        entry = results["tasks"][task]
        threshold = entry["setting"]["threshold"]
        by_bytes, by_steps, by_round = grid[:, column]
        for label, hierarchy in entry["hierarchy"].items():
            colour = PARTITION_COLOURS[label]
            for kind, style, name in (
                ("hierarchical", "-o", f"hierarchical κ2 = {HIERARCHY_EDGE_ROUNDS}"),
                ("flat", "--", "flat FedAvg"),
            ):
                run_entry = hierarchy[kind]
                line = dict(color=colour, label=f"{name}, {label}", linewidth=1.6, markersize=3)
                by_bytes.plot(run_entry["cumulative_bytes"], run_entry["mean_curve"], style, **line)
                by_steps.plot(
                    run_entry["cumulative_device_steps"], run_entry["mean_curve"], style, **line
                )
        by_bytes.set_xscale("log")
        by_bytes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: format_bytes(value)))
        by_bytes.set_xlabel("edge → cloud bytes sent (cumulative)")
        by_bytes.set_title(f"{task}: FedAvg, hierarchical vs flat: cloud traffic")
        by_steps.set_xlabel("device SGD steps, all devices (cumulative)")
        by_steps.set_title(f"{task}: the same runs at equal device steps")
        label = entry["setting"]["partitions"][0]
        for name, per_method in entry["algorithms"][label].items():
            curve = per_method["mean_curve"]
            style = "--" if name == "FedProx" else "-"  # small mu: FedProx can lie on top of FedAvg
            by_round.plot(
                range(1, len(curve) + 1),
                curve,
                style,
                color=COLOURS[name],
                label=name,
                linewidth=1.6,
            )
        by_round.set_xlabel("cloud round")
        by_round.set_title(
            f"{task}: algorithms, {label}, lines at {'/'.join(map(str, LINE_STEPS))} local steps"
        )
        for axes in (by_bytes, by_steps, by_round):
            axes.axhline(threshold, color="grey", linewidth=1, linestyle=":")
            axes.set_ylabel("test accuracy, both plants")
            axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
            axes.grid(True, alpha=0.3)
            axes.legend(loc="lower right", fontsize="small")
    return figure


# --- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits only, one seed, 10 rounds, no tuning (about a minute)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for heterogeneity.{md,json,png} (default: docs/, or nothing with --quick)",
    )
    parser.add_argument("--quiet", action="store_true", help="print the tables only")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="rewrite the markdown and the plot from the heterogeneity.json of an earlier run, without training",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import platform

    import jax

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = args.out if args.out is not None else (None if args.quick else ROOT / "docs")
    log = (lambda _: None) if args.quiet else (lambda line: print(line, flush=True))
    if args.render is not None:
        results = json.loads(args.render.read_text(encoding="utf-8"))
        write_outputs(results, out, write_json=False)
        return results
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()

    if args.quick:
        tuning = {
            "fedprox_mu": {"grid": {}, "chosen": 0.01},
            "fedadam_server_lr": {"grid": {}, "chosen": 0.03},
        }
    else:
        tuning = tune(settings[0], PARTITIONS[0], log)
    method_list = methods(tuning["fedprox_mu"]["chosen"], tuning["fedadam_server_lr"]["chosen"])

    tasks: dict[str, Any] = {}
    for setting in settings:
        task_started = time.perf_counter()
        algorithms = compare_algorithms(setting, method_list, log)
        hierarchy = compare_hierarchy(setting, log)
        tasks[setting.task] = {
            "setting": {
                **dataclasses.asdict(setting),
                "methods": {m.name: m.setting for m in method_list},
            },
            "algorithms": algorithms,
            "hierarchy": hierarchy,
            "seconds": round(time.perf_counter() - task_started, 1),
        }
    cpu = f"{len(jax.devices())} {jax.default_backend().upper()} device(s), {platform.processor() or platform.machine()}"
    results = {
        "command": " ".join([COMMAND, *argv]),
        "machine": cpu,
        "line_steps": LINE_STEPS,
        "edge_rounds": EDGE_ROUNDS,
        "tuning": tuning,
        "tasks": tasks,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_outputs(results, out)
    return results


def write_outputs(results: dict[str, Any], out: Path | None, write_json: bool = True) -> None:
    """Prints the tables; writes heterogeneity.{json,md,png} to `out` unless it is None."""
    markdown = results_markdown(results)
    print(markdown)
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    if write_json:
        (out / "heterogeneity.json").write_text(
            json.dumps(results, indent=1) + "\n", encoding="utf-8"
        )
    document = out / "heterogeneity.md"
    document.write_text(markdown + kept_notes(document), encoding="utf-8")
    results_figure(results).savefig(out / "heterogeneity.png", dpi=110)
    print(
        f"wrote heterogeneity.md{', heterogeneity.json' if write_json else ''}, heterogeneity.png to {out}"
    )


if __name__ == "__main__":
    from hierfl.sim.parallel import request_cpu_devices

    request_cpu_devices()  # before JAX starts: train the devices on every core
    main()
