"""A run's records, built once for both engines: `run.json`'s contents and each round's record.

`hierfl.sim.engine.simulate` and the runtime's cloud (`hierfl.runtime.cloud`) both call
`run_info` and `round_record`; the cloud adds only its runtime fields (edges answered,
refused messages, late updates, stale summaries). Scores are the task's metrics under their
own names (`accuracy`, or `rmse` and `mae` for a regression task; see `hierfl.data.scoring`),
and `run.json` names the deciding one, so a report labels and compares the right number. A
classifier's records add its per-class figures, macro F1, AUROC, confusion matrix and
chance level, overall and per plant (`hierfl.data.evaluation.metric_fields`).
The file format (writing, reading, checking) is `hierfl.runs.metrics`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hierfl import __version__
from hierfl.data.evaluation import Scores, combine_plant_sums, metric_fields
from hierfl.data.scoring import Metric
from hierfl.data.tasks import Task
from hierfl.data.tasks.imports import topology_folder
from hierfl.privacy import privacy_record
from hierfl.runs.metrics import encode_record, read_run_info, write_run_info
from hierfl.topology import Personalization, Topology


def _task_folder(topology: Topology) -> str | None:
    """Where a user's task module is found besides sys.path (the topology file's folder),
    so `hierfl export` finds it from anywhere; None for a preset or a topology in code."""
    folder = topology_folder(topology.source)
    return None if folder is None else str(folder)


def run_info(
    topology: Topology, model_name: str, metric: Metric, rounds: int, *, runtime: bool = False
) -> dict[str, Any]:
    """`run.json`'s contents: what is run, scored by `metric`, for `rounds` cloud rounds.

    `rounds` is what was asked for after the privacy budget's cap (`rounds_to_run`), not
    the file's `cloud_rounds`; `tree` names every plant, line and device. With `runtime`, the runtime settings too (without keys).
    """
    federation = topology.federation
    info = {
        "name": federation.name,
        "task": federation.task,
        "model": model_name,
        "algorithm": federation.algorithm,
        "topology": topology.source,
        "task_folder": _task_folder(topology),
        "seed": federation.seed,
        "num_plants": len(topology.plants),
        "num_devices": topology.num_devices,
        "tree": federation_tree(topology),
        "cloud_rounds": rounds,
        "edge_rounds": federation.edge_rounds,
        "local_steps": federation.local_steps,
        "batch_size": federation.batch_size,
        "learning_rate": federation.learning_rate,
        "compression": dataclasses.asdict(topology.compression),
        "metric": metric.describe(),
        "aggregation": dataclasses.asdict(topology.aggregation),
        "attack": dataclasses.asdict(topology.attack),
        "privacy": dataclasses.asdict(topology.privacy),
        "mu": federation.mu,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hierfl_version": __version__,
    }
    if topology.personalization.enabled:
        info["personalization"] = personalization_info(topology.personalization)
    if topology.buffered is not None:
        info["buffered_aggregation"] = dataclasses.asdict(topology.buffered)
    if runtime:
        settings = dataclasses.asdict(topology.runtime)
        info["runtime"] = {
            k: v for k, v in settings.items() if not k.endswith("keys") and k != "cloud_key"
        }
    return info


def personalization_info(personalization: Personalization) -> dict[str, Any]:
    """`run.json`'s `personalization`: the method and its layers, and fine-tuning's rounds."""
    info: dict[str, Any] = {
        "method": personalization.method,
        "layers": list(personalization.layers),
    }
    if personalization.fine_tunes:
        info["rounds"] = personalization.rounds
    return info


def federation_tree(topology: Topology) -> dict[str, dict[str, list[str]]]:
    """The federation's nodes for a live view: plant -> line -> its devices' names."""
    return {
        plant.name: {line.name: [device.name for device in line.devices] for line in plant.lines}
        for plant in topology.plants
    }


def plan_rounds(run_dir: Path, rounds: int) -> None:
    """Sets `run.json`'s `cloud_rounds` to `rounds` (a resumed run asked for another count)."""
    info = read_run_info(run_dir)
    if info.get("cloud_rounds") != rounds:
        write_run_info(run_dir, {**info, "cloud_rounds": rounds})


def score_fields(task: Task, scores: Scores, plant_names: Sequence[str]) -> dict[str, Any]:
    """A record's test scores: `test_loss`, then each metric of `task` overall and per plant."""
    return {"test_loss": scores.loss, **metric_fields(task, scores, plant_names)}


def personal_fields(task: Task, scores: Scores, plant_names: Sequence[str]) -> dict[str, Any]:
    """With per-plant layers, each plant's test examples scored by its own personalized model:
    `personal_<metric>` over all plants' examples, `plant_personal_<metric>` per plant."""
    fields: dict[str, Any] = {}
    for metric in task.metrics:
        fields[f"personal_{metric.name}"] = scores.metrics[metric.name]
        fields[f"plant_personal_{metric.name}"] = dict(
            zip(plant_names, scores.plant_metrics[metric.name])
        )
    return fields


def plant_model_file(plant: str) -> str:
    """The file of plant `plant`'s own final model in a run directory (per-plant layers, or
    homomorphic encryption where the plants alone hold the model)."""
    return f"model-{plant}.npz"


def unscored(task: Task, num_plants: int) -> Scores:
    """Scores not known yet (NaN everywhere): a record waiting for the plants' evaluations."""
    return combine_plant_sums(task, [None] * num_plants)


def round_record(
    topology: Topology,
    task: Task,
    *,
    round: int,
    loss: float,
    scores: Scores,
    bytes: Mapping[str, int],
    round_seconds: float,
    elapsed_seconds: float,
    devices: int,
    clip_norm: float,
    personal: Scores | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Round `round`'s record: the fields both engines write, an engine's `extra` fields, then
    the privacy fields (`privacy_record`: epsilon, delta and the clip norm, under DP).

    `loss` is the mean training loss, `bytes` each tier's traffic during the round, `devices`
    how many devices trained, `clip_norm` the clip norm in force after the round, `personal`
    the plants' personalized models' scores (`personal_fields`; per-plant layers only).
    """
    mine = {} if personal is None else personal_fields(task, personal, topology.plant_names)
    return {
        "round": round,
        "loss": loss,
        **score_fields(task, scores, topology.plant_names),
        **mine,
        "bytes": dict(bytes),
        "round_seconds": round_seconds,
        "elapsed_seconds": elapsed_seconds,
        "devices": devices,
        **extra,
        **privacy_record(topology, round, clip_norm),
    }


def buffered_fields(
    topology: Topology, summaries: Sequence[tuple[int, int, int]]
) -> dict[str, Any]:
    """A buffered application's record fields, written alike by both engines: the summaries it
    took, in the order it took them, as `{"plant", "cycle", "staleness"}` (`summaries`:
    (plant index, the plant's cycle from 1, staleness in global versions))."""
    names = topology.plant_names
    return {
        "summaries": [
            {"plant": names[p], "cycle": int(cycle), "staleness": int(staleness)}
            for p, cycle, staleness in summaries
        ]
    }


def reconcile_metrics(path: Path, last_round: int, last_record: dict[str, Any] | None) -> bool:
    """Rewrites `metrics.jsonl` to hold rounds 1..last_round exactly once (the checkpoint's record for the last).

    With `last_record` None (homomorphic encryption: the checkpoint's record has no scores
    yet) the file's own record of `last_round` is kept if it has one. Returns whether the
    file now holds `last_round`.
    """
    records: dict[int, str] = {}
    if path.exists():
        # A crash can leave a line cut short, or bytes that are not text: those are skipped.
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
            if (
                isinstance(record, dict)
                and isinstance(record.get("round"), int)
                and (
                    record["round"] < last_round
                    or (record["round"] == last_round and last_record is None)
                )
            ):
                records[record["round"]] = line + "\n"
    if last_record is not None:
        records[last_round] = encode_record(last_record)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(records[r] for r in sorted(records)), encoding="utf-8")
    tmp.replace(path)
    return last_round in records
