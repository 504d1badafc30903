"""Hierarchical FL against its references, as the examples report it: one call, one table, one plot.

`compare(topology)` trains, on the same model, initialisation, data plan and budget (see
`hierfl.studies.baselines` for what "same budget" means):

1. hierarchical federated learning (HierFAVG, the topology as written);
2. flat FedAvg: every device reports to the cloud after each of its local training rounds;
3. local-only: each plant trains on its own devices' data, tested on every plant's test set;
4. centralized: all data pooled in one place (not allowed in practice: the upper bound);

and compares the edge->cloud bytes of 1 and 2 at equal score. `collect_results` turns the
runs into plain JSON (every number and curve), `results_markdown` into the tables an
example's README quotes, and `results_figure` into the plot (score against examples
processed, and against edge->cloud bytes). Scores are the task's metrics
(`hierfl.data.scoring`): accuracy for classification, e.g. RMSE (lower is better) for
regression; every label follows the metric. `Words` name the example's devices, plants
and examples ("cameras", "mills", "images") so the text reads as the use case.
`write_results` writes the three files; `run_problems` is a whole example (one comparison
per topology file, its hierarchical run kept for `hierfl export`), and `run_example` its
command line (`examples/*/run.py` only name their problems).

Given `alternatives` (`ALTERNATIVES`: the algorithms suite's FedProx, FedNova, SCAFFOLD and
FedAdam, with the settings `benchmarks/heterogeneity.py` tuned), `compare` also trains the
same hierarchy with each; the tables then show the best of them if it beats FedAvg, and
every one's final score.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

from hierfl.data.plan import Plan, make_plan
from hierfl.data.scoring import Metric, from_description
from hierfl.runs.report import format_bytes, markdown_table
from hierfl.sim.engine import simulate
from hierfl.studies.baselines import (
    Baselines,
    UplinkAtAccuracy,
    flat_fedavg,
    flat_uplink_bytes,
    mean_final_accuracy,
    model_bytes,
    train_baselines,
    uplink_at_equal_accuracy,
)
from hierfl.topology import Topology

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Words:
    """What an example calls its devices, plants and examples, singular and plural."""

    device: str = "device"
    devices: str = "devices"
    plant: str = "plant"
    plants: str = "plants"
    example: str = "example"
    examples: str = "examples"


@dataclasses.dataclass(frozen=True)
class Alternative:
    """Another algorithm on the same hierarchy: the `[federation]` and cloud-optimizer changes."""

    label: str
    algorithm: str
    mu: float | None = None
    optimizer: str = "sgd"
    server_learning_rate: float = 1.0

    def apply(self, topology: Topology) -> Topology:
        from hierfl.core.algorithms import ALGORITHMS
        from hierfl.topology import ServerOptimizer

        overrides: dict[str, Any] = {
            "algorithm": self.algorithm,
            "server_learning_rate": self.server_learning_rate,
        }
        if self.mu is not None:
            overrides["mu"] = self.mu
        topology = topology.with_federation(
            choices={"federation.algorithm": ALGORITHMS}, **overrides
        )
        return topology.with_aggregation(optimizer=ServerOptimizer(self.optimizer))


ALTERNATIVES = (
    Alternative("FedProx (mu = 0.001)", "fedprox", mu=0.001),
    Alternative("FedNova", "fednova"),
    Alternative("SCAFFOLD", "scaffold"),
    Alternative("FedAdam (server lr 0.1)", "fedavg", optimizer="adam", server_learning_rate=0.1),
)
"""The algorithms suite with the settings docs/heterogeneity.md tuned on digits (FedProx's mu,
FedAdam's server learning rate), used as they are: not tuned again per example."""

ALTERNATIVE_NAMES = dict(zip(("fedprox", "fednova", "scaffold", "fedadam"), ALTERNATIVES))


def parse_alternatives(text: str) -> tuple[Alternative, ...]:
    """`"fedprox,fedadam"` -> those `ALTERNATIVES`; `"none"` -> none (an example's `--algorithms`)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return ()
    unknown = [name for name in names if name not in ALTERNATIVE_NAMES]
    if unknown or not names:
        raise ValueError(
            f"unknown algorithm {unknown[0] if unknown else text!r} (known: {', '.join(ALTERNATIVE_NAMES)}, or none)"
        )
    return tuple(ALTERNATIVE_NAMES[name] for name in names)


def alternatives_argument(text: str) -> tuple[Alternative, ...]:
    """`parse_alternatives` as an argparse `type=`: an unknown name is a usage error, not a traceback."""
    import argparse

    try:
        return parse_alternatives(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The four trainings of one topology and the bytes comparison."""

    plan: Plan
    hierarchical: list[Record]
    flat: list[Record]
    baselines: Baselines
    uplink: UplinkAtAccuracy
    message_bytes: int
    params: Any
    seconds: dict[str, float]
    alternatives: dict[str, list[Record]] = dataclasses.field(default_factory=dict)


def compare(
    topology: Topology,
    *,
    plan: Plan | None = None,
    progress: bool = False,
    announce=lambda title: None,
    run_dir: str | Path | None = None,
    alternatives: Sequence[Alternative] = (),
) -> Comparison:
    """Trains hierarchical FL, flat FedAvg, centralized and local-only on ``topology``.

    ``plan`` is ``make_plan(topology)`` if the caller already has it; ``announce(title)`` is
    called before each training (a console rule); ``run_dir``, if given, receives the
    hierarchical run (run.json, metrics.jsonl, model.npz: what ``hierfl export`` reads);
    each of ``alternatives`` trains the same hierarchy with another algorithm.
    """
    seconds: dict[str, float] = {}
    if plan is None:
        started = time.perf_counter()
        plan = make_plan(topology)
        seconds["data"] = time.perf_counter() - started

    announce("1/4 hierarchical federated learning")
    started = time.perf_counter()
    hierarchical = simulate(topology, progress=progress, out=run_dir)
    seconds["hierarchical"] = time.perf_counter() - started

    announce("2/4 flat FedAvg")
    started = time.perf_counter()
    flat = simulate(flat_fedavg(topology), progress=progress)
    seconds["flat_fedavg"] = time.perf_counter() - started

    announce("3/4 and 4/4 centralized and local-only")
    started = time.perf_counter()
    baselines = train_baselines(plan, progress=progress)
    seconds["baselines"] = time.perf_counter() - started

    others: dict[str, list[Record]] = {}
    for alternative in alternatives:
        announce(f"hierarchical FL with {alternative.label}")
        started = time.perf_counter()
        others[alternative.label] = simulate(alternative.apply(topology), progress=progress).history
        seconds[alternative.label] = time.perf_counter() - started

    message_bytes = model_bytes(hierarchical.params)
    uplink = uplink_at_equal_accuracy(
        hierarchical.history, flat.history, message_bytes, metric=plan.task.metric
    )
    return Comparison(
        plan,
        hierarchical.history,
        flat.history,
        baselines,
        uplink,
        message_bytes,
        hierarchical.params,
        seconds,
        others,
    )


# --- numbers -----------------------------------------------------------------------------


def collect_results(
    command: str, topology_label: str, comparison: Comparison, words: Words = Words()
) -> dict[str, Any]:
    """Everything the tables and the plot show, as plain JSON values.

    Each method's entry holds its final score under the metric's name (``accuracy``,
    ``rmse``) and per plant under ``plant_<name>``, with every other metric of the task
    beside it; curves hold the deciding metric.
    """
    plan, baselines, uplink = comparison.plan, comparison.baselines, comparison.uplink
    hierarchical, flat, message_bytes = (
        comparison.hierarchical,
        comparison.flat,
        comparison.message_bytes,
    )
    task = plan.task
    metric = task.metric
    topology, federation = plan.topology, plan.topology.federation
    plants = list(topology.plant_names)
    train_examples = int(plan.shards.counts.sum())
    per_round = (
        topology.num_devices
        * federation.edge_rounds
        * federation.local_steps
        * federation.batch_size
    )
    local = baselines.local_only

    def final(record: Record) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        for m in task.metrics:
            entry[m.name] = float(record[m.name])
            entry[m.plant_key] = {k: float(v) for k, v in record[m.plant_key].items()}
        return entry

    def curve(history: Sequence[Record], examples: Sequence[int]) -> dict[str, list]:
        return {
            "examples": [int(e) for e in examples],
            metric.name: [float(r[metric.name]) for r in history],
        }

    rounds = range(len(local[0].history))
    local_entry: dict[str, Any] = {}
    for m in task.metrics:
        local_entry[m.name] = mean_final_accuracy(local, m.name)
        local_entry[m.plant_key] = {
            p: float(np.mean([r.final[m.plant_key][p] for r in local])) for p in plants
        }
    results = {
        "command": command,
        "topology": topology_label,
        "metric": metric.describe(),
        "federation": {
            "task": federation.task,
            "model": federation.model or task.default_model,
            "plants": {
                p.name: {
                    "shift": p.shift,
                    "lines": len(p.lines),
                    "devices": p.num_devices,
                    **({"classes": list(p.classes)} if p.classes else {}),
                }
                for p in topology.plants
            },
            "devices": topology.num_devices,
            "cloud_rounds": federation.cloud_rounds,
            "edge_rounds": federation.edge_rounds,
            "local_steps": federation.local_steps,
            "batch_size": federation.batch_size,
            "learning_rate": federation.learning_rate,
            "seed": federation.seed,
            "train_examples": train_examples,
            "test_examples": {
                name: int(np.sum(plan.test.plant == i)) for i, name in enumerate(plants)
            },
            "model_bytes": message_bytes,
        },
        "budget": {
            "examples_per_round": per_round,
            "examples": per_round * federation.cloud_rounds,
            "epochs": per_round * federation.cloud_rounds / train_examples,
        },
        "hierarchical": {
            **final(hierarchical[-1]),
            "edge_to_cloud_bytes": sum(int(r["bytes"]["edge_to_cloud"]) for r in hierarchical),
            "curve": curve(hierarchical, [per_round * r["round"] for r in hierarchical]),
        },
        "flat_fedavg": {
            **final(flat[-1]),
            "edge_to_cloud_bytes": sum(flat_uplink_bytes(r, message_bytes) for r in flat),
            "curve": curve(flat, [per_round // federation.edge_rounds * r["round"] for r in flat]),
        },
        "centralized": {
            **final(baselines.centralized.final),
            "steps": baselines.centralized.budget.steps,
            f"raw_{words.example}_bytes": int(plan.shards.x[0, 0].nbytes) * train_examples,
            "curve": curve(
                baselines.centralized.history,
                [r["examples_seen"] for r in baselines.centralized.history],
            ),
        },
        "local_only": {
            **local_entry,
            "models": {
                m.plants[0]: {
                    **final(m.final),
                    "steps": m.budget.steps,
                    "train_examples": m.train_examples,
                }
                for m in local
            },
            "curve": {
                "examples": [sum(m.history[i]["examples_seen"] for m in local) for i in rounds],
                metric.name: [
                    float(np.mean([m.history[i][metric.name] for m in local])) for i in rounds
                ],
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
            "hierarchical": np.cumsum(
                [int(r["bytes"]["edge_to_cloud"]) for r in hierarchical]
            ).tolist(),
            "flat_fedavg": np.cumsum([flat_uplink_bytes(r, message_bytes) for r in flat]).tolist(),
        },
        "seconds": {k: round(v, 1) for k, v in comparison.seconds.items()},
    }
    if comparison.alternatives:
        others = {
            label: {
                **final(history[-1]),
                "edge_to_cloud_bytes": sum(int(r["bytes"]["edge_to_cloud"]) for r in history),
                "curve": curve(history, [per_round * r["round"] for r in history]),
            }
            for label, history in comparison.alternatives.items()
        }
        best = min(
            others,
            key=lambda label: others[label][metric.name] * (-1 if metric.higher_is_better else 1),
        )
        # Better, and by enough to show in the table's precision (not a tie in the last digit).
        ours, theirs = others[best][metric.name], results["hierarchical"][metric.name]
        beats = metric.better(ours, theirs) and metric.format(ours) != metric.format(theirs)
        results["algorithms"] = {"runs": others, "best": best if beats else None}
    return results


def results_metric(results: dict[str, Any]) -> Metric:
    """The deciding metric of a results dict (accuracy for results written before it was stored)."""
    return from_description(results.get("metric"))


# --- markdown ----------------------------------------------------------------------------


def results_markdown(results: dict[str, Any], words: Words = Words()) -> str:
    """The results tables (what an example's README quotes)."""
    metric = results_metric(results)
    fed = results["federation"]
    plants = list(fed["plants"])
    # The task's other metrics (MAE beside RMSE), each stored with its per-plant values.
    extra = [
        key.removeprefix("plant_")
        for key in results["hierarchical"]
        if key.startswith("plant_") and key != metric.plant_key
    ]

    def show(value: float) -> str:
        return metric.format(value)

    def row(label, entry, sent):
        cells = [label, f"**{show(entry[metric.name])}**"]
        cells += [f"{entry[e]:.3g}" for e in extra]
        return [*cells, *(show(entry[metric.plant_key][p]) for p in plants), sent]

    hier, flat, central, local = (
        results[k] for k in ("hierarchical", "flat_fedavg", "centralized", "local_only")
    )
    raw = central[f"raw_{words.example}_bytes"]
    algorithms = results.get("algorithms")
    best_rows = []
    if algorithms and algorithms["best"]:
        best = algorithms["runs"][algorithms["best"]]
        best_rows = [
            row(
                f"hierarchical FL with {algorithms['best']}, the best other algorithm",
                best,
                format_bytes(best["edge_to_cloud_bytes"]),
            )
        ]
    rows = [
        row(
            f"hierarchical FL (HierFAVG, {len(plants)} edges, κ2 = {fed['edge_rounds']})",
            hier,
            format_bytes(hier["edge_to_cloud_bytes"]),
        ),
        *best_rows,
        row(
            f"flat FedAvg ({fed['devices']} devices → cloud)",
            flat,
            format_bytes(flat["edge_to_cloud_bytes"]),
        ),
        row(f"local-only, mean of {len(plants)} {words.plants}", local, "0 B"),
        *(row(f"  local-only: {p}'s model", local["models"][p], "0 B") for p in plants),
        row("centralized (upper bound)", central, f"{format_bytes(raw)} of raw {words.examples}"),
    ]
    all_plants = f"all {words.plants}"
    show_shift = any(fed["plants"][p]["shift"] for p in plants)
    header = [
        "method",
        f"{metric.title}, {all_plants}",
        *(f"{e.upper()}, {all_plants}" for e in extra),
        *(_plant_header(p, fed["plants"][p], show_shift) for p in plants),
        "edge → cloud",
    ]
    uplink = results["uplink_at_equal_accuracy"]
    budget = results["budget"]
    equal_rows = [
        [
            "hierarchical FL",
            str(uplink["hierarchical_round"]),
            format_bytes(uplink["hierarchical_bytes"]),
        ],
        ["flat FedAvg", str(uplink["flat_round"]), format_bytes(uplink["flat_bytes"])],
    ]
    saving = "n/a" if uplink["saving"] is None else f"{uplink['saving']:.1f}x"
    score = metric.name if metric.name == "accuracy" else metric.name.upper()
    test_word = f"test {words.examples}"
    return (
        "\n\n".join(
            [
                "## Results",
                (
                    f"`{results['command']}` (seed {fed['seed']}): {fed['devices']} {words.devices} in {len(plants)} {words.plants}, "
                    f"task `{fed['task']}`, model `{fed['model']}` ({fed['model_bytes']:,} bytes), "
                    f"{fed['train_examples']:,} training {words.examples}, {test_word} per {words.plant}: "
                    + ", ".join(f"{p} {n}" for p, n in fed["test_examples"].items())
                    + "."
                ),
                (
                    f"Every method processes the same {budget['examples']:,} training examples ({budget['epochs']:.0f} epochs) "
                    f"in SGD steps of {fed['batch_size']} at learning rate {fed['learning_rate']:g}: the federation's "
                    f"{fed['cloud_rounds']} cloud rounds x {fed['edge_rounds']} edge rounds x {fed['local_steps']} local steps on "
                    f"every {words.device}. {score[:1].upper()}{score[1:]} is on the {test_word} of {all_plants}, then of each "
                    f"{words.plant}, after the last round."
                ),
                markdown_table(header, rows),
                *([_algorithms_line(algorithms, hier, metric)] if algorithms else []),
                f"### Edge → cloud bytes at equal {score} ({show(uplink['target'])}, the best {score} both reach)",
                markdown_table(
                    ["run", "first round at target", "edge → cloud bytes until then"], equal_rows
                ),
                f"Flat FedAvg sends **{saving}** the bytes of the hierarchy to the cloud for the same {score}.",
                f"![{metric.title} against examples processed and against edge-to-cloud bytes](results.png)",
            ]
        )
        + "\n"
    )


def _algorithms_line(algorithms: dict[str, Any], fedavg: dict[str, Any], metric: Metric) -> str:
    """Every other algorithm's final score on the hierarchy, against HierFAVG's."""
    finals = ", ".join(
        f"{label} {metric.format(run[metric.name])}" for label, run in algorithms["runs"].items()
    )
    verdict = (
        f"the best, {algorithms['best']}, is the row under HierFAVG's"
        if algorithms["best"]
        else "none beats FedAvg here, so no row for them"
    )
    return (
        f"Other algorithms on the same hierarchy, same budget (`hierfl.studies.comparison.ALTERNATIVES`), final "
        f"{metric.name if metric.percent else metric.name.upper()} on all: {finals}, against HierFAVG's "
        f"{metric.format(fedavg[metric.name])}; {verdict}."
    )


def _plant_header(name: str, plant: dict[str, Any], show_shift: bool) -> str:
    """A plant's column: its name, then its shift (where plants differ by one) and its
    classes (three at most by name); the name alone when the topology says neither (a
    task that reads files: the plant is what its files hold)."""
    notes = [f"shift {plant['shift']:g}"] if show_shift else []
    classes = plant.get("classes") or []
    if classes:
        notes.append(", ".join(classes) if len(classes) <= 3 else f"{len(classes)} classes")
    return f"{name} ({'; '.join(notes)})" if notes else name


# --- figure ------------------------------------------------------------------------------


STYLES = {
    "hierarchical": ("hierarchical FL", "#d62728", "-"),
    "flat_fedavg": ("flat FedAvg", "#1f77b4", "-"),
    "centralized": ("centralized (upper bound)", "black", "--"),
    "local_only": ("local-only (mean of {plants})", "#2ca02c", "-."),
}


def results_figure(results: dict[str, Any], words: Words = Words()) -> Figure:
    """Left: the score on all plants against epochs processed; right: against edge->cloud bytes."""
    metric = results_metric(results)
    key = metric.name
    legend_at = "lower right" if metric.higher_is_better else "upper right"
    train = results["federation"]["train_examples"]
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    for name, (label, colour, style) in STYLES.items():
        curve = results[name]["curve"]
        left.plot(
            np.asarray(curve["examples"]) / train,
            curve[key],
            style,
            color=colour,
            label=label.format(plants=words.plants),
            linewidth=1.8,
        )
    left.set_xlabel("epochs (training examples processed / training examples)")
    left.set_ylabel(f"test {metric.title}, all {words.plants}")
    left.set_title(
        f"Same budget: {metric.name if metric.percent else metric.title} as training proceeds"
    )
    best = (results.get("algorithms") or {}).get("best")
    if best:
        curve = results["algorithms"]["runs"][best]["curve"]
        left.plot(
            np.asarray(curve["examples"]) / train,
            curve[key],
            ":",
            color="#9467bd",
            label=f"hierarchical FL, {best}",
            linewidth=1.8,
        )
    for name in ("hierarchical", "flat_fedavg"):
        label, colour, style = STYLES[name]
        right.plot(
            results["bytes_curves"][name],
            results[name]["curve"][key],
            style,
            color=colour,
            label=label,
            linewidth=1.8,
            marker="o",
            markersize=3,
        )
    uplink = results["uplink_at_equal_accuracy"]
    right.axhline(
        uplink["target"],
        color="grey",
        linewidth=1,
        linestyle=":",
        label=f"target {metric.format(uplink['target'])}",
    )
    for name, at in (
        ("hierarchical", uplink["hierarchical_bytes"]),
        ("flat_fedavg", uplink["flat_bytes"]),
    ):
        if at is not None:
            right.plot([at], [uplink["target"]], "D", color=STYLES[name][1], markersize=8)
    right.set_xscale("log")
    right.xaxis.set_major_formatter(FuncFormatter(lambda value, _: format_bytes(value)))
    right.set_xlabel("edge → cloud bytes sent (cumulative)")
    right.set_title(
        f"Communication: {metric.name if metric.percent else metric.title} against cloud uplink"
    )
    # The four methods set the scale; another algorithm's early excursions are cut off.
    top = 1.1 * max(max(results[name]["curve"][key]) for name in STYLES)
    for axes in (left, right):
        if metric.percent:
            axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        else:
            axes.set_ylim(0, top)
        axes.grid(True, alpha=0.3)
        axes.legend(loc=legend_at, fontsize="small")
    return figure


def write_results(out: Path, stem: str, results: dict[str, Any], words: Words = Words()) -> str:
    """Writes `<stem>.json` (the results), `<stem>.md` (the tables) and `<stem>.png` (the
    plot, linked from the tables) into `out`; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(
        json.dumps(finite_or_null(results), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    markdown = results_markdown(results, words).replace("](results.png)", f"]({stem}.png)")
    (out / f"{stem}.md").write_text(markdown, encoding="utf-8")
    results_figure(results, words).savefig(out / f"{stem}.png", dpi=120)
    return markdown


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinite float (a diverged run's scores) made None: strict JSON has no Infinity."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def predict_rows(plan: Plan, count: int) -> np.ndarray:
    """`count` test examples to show a served model, all different: the first test example
    of each stratum (each class, or each bin of a regression target), in test-set order."""
    strata = plan.task.strata(plan.test.y)
    firsts = sorted(int(np.flatnonzero(strata == s)[0]) for s in np.unique(strata))
    return np.array(firsts[:count], dtype=np.int64)


def run_problems(
    problems: dict[str, Path],
    *,
    command: str,
    out: Path,
    words: Words = Words(),
    rounds: int | None = None,
    run_root: Path | None = None,
    progress: bool = False,
    console=None,
    relative_to: Path | None = None,
    predict_examples: int = 4,
    alternatives: Sequence[Alternative] = (),
) -> dict[str, dict[str, Any]]:
    """An example's whole run: for each problem (name -> topology file) `compare`, then
    `write_results(out, "results_<name>", ...)`.

    With `run_root`, problem p's hierarchical run is kept in `run_root/<federation name>`
    with `predict.npy`: `predict_examples` test examples (`predict_rows`), what an example's
    README sends to `hierfl predict`, and `predict_truth.npy`, their labels or targets.
    Returns {name: results}.
    """
    from hierfl.data.loading import load_topology

    every: dict[str, dict[str, Any]] = {}
    for name, path in problems.items():
        topology = load_topology(path)
        if rounds is not None:
            topology = topology.with_federation(cloud_rounds=rounds)
        run_dir = None if run_root is None else Path(run_root) / topology.federation.name
        if console is not None:
            console.rule(f"[bold]{name}: task {topology.federation.task}")
        announce = (
            (lambda title: console.rule(title)) if console is not None else (lambda title: None)
        )
        comparison = compare(
            topology,
            progress=progress,
            announce=announce,
            run_dir=run_dir,
            alternatives=alternatives,
        )
        if run_dir is not None:
            rows = predict_rows(comparison.plan, predict_examples)
            np.save(run_dir / "predict.npy", comparison.plan.test.x[rows].astype(np.float32))
            np.save(run_dir / "predict_truth.npy", comparison.plan.test.y[rows])
        label = (
            path.relative_to(relative_to)
            if relative_to is not None and path.is_relative_to(relative_to)
            else path
        )
        results = collect_results(command, str(label), comparison, words)
        markdown = write_results(out, f"results_{name}", results, words)
        if console is not None:
            console.print(markdown)
            console.print(
                f"wrote results_{name}.md, .json, .png to {out}"
                + (f"; hierarchical run in {run_dir}" if run_dir else "")
            )
        every[name] = results
    return every


class Problem(NamedTuple):
    """One problem of an example: its topology file (in the example's folder), what it is,
    its words, and `prepare(topology_path)`, if any, called before it trains (e.g. to
    write the devices' data files the topology names)."""

    topology: str
    description: str
    words: Words = Words()
    prepare: Callable[[Path], None] | None = None


def run_example(
    argv: Sequence[str], *, description: str, here: Path, command: str, problems: dict[str, Problem]
) -> dict[str, dict[str, Any]]:
    """An example's command line and run: `run_problems` for the chosen problems.

    The first problem's topology is `--topology`, each other's `--<name>-topology`;
    `--only NAME` runs one; `--rounds`, `--out`, `--run-dir`, `--algorithms` and
    `--quiet` as in every example. Returns {problem: what results_<problem>.json holds}.
    """
    import argparse

    from rich.console import Console

    argv = list(argv)
    names = list(problems)
    parser = argparse.ArgumentParser(description=description)
    options = {
        name: "--topology" if i == 0 else f"--{name}-topology" for i, name in enumerate(names)
    }
    for name, option in options.items():
        parser.add_argument(
            option,
            type=Path,
            default=here / problems[name].topology,
            dest=f"topology_{name}",
            metavar="FILE",
            help=f"{problems[name].description} federation (default: {problems[name].topology})",
        )
    parser.add_argument("--only", choices=names, help="run one problem (default: all)")
    parser.add_argument("--rounds", type=int, help="cloud rounds (default: the topologies')")
    parser.add_argument(
        "--out", type=Path, default=here, help="folder for the results (default: this example's)"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs"),
        help="where the hierarchical runs are kept (default: runs/)",
    )
    parser.add_argument(
        "--algorithms",
        default="fedprox,fednova,scaffold,fedadam",
        type=alternatives_argument,
        help="other algorithms to train the hierarchy with (comma-separated, or none)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for name in (args.only,) if args.only else names:
        path = getattr(args, f"topology_{name}")
        if problems[name].prepare is not None:
            problems[name].prepare(path)
        results |= run_problems(
            {name: path},
            command=" ".join([command, *argv]),
            out=args.out,
            words=problems[name].words,
            rounds=args.rounds,
            run_root=args.run_dir,
            progress=not args.quiet,
            console=Console(quiet=args.quiet),
            relative_to=here,
            alternatives=args.algorithms,
        )
    return results
