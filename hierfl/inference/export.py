"""Exporting a trained model as an `Artifact`: its inference function through `jax.export`.

`export_run(run_dir)` rebuilds the run's model from the task's definition, loads
`model.npz`, takes the last cloud round of `metrics.jsonl` as the model version and its
record as the model's metrics, and lowers `logits = model.apply(params, x)` with a
symbolic batch dimension for CPU and CUDA. `export_model` does the same for a model and
params in memory (a `SimulationResult`, a test).

The CUDA lowering needs no GPU: StableHLO for 'cuda' is produced on any machine, so a
CPU-only training box exports a file that a GPU edge box compiles and runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

from hierfl import __version__
from hierfl.data.census import Census
from hierfl.data.census import from_description as census_from
from hierfl.data.tasks import Task, bearing, bearing_data, digits
from hierfl.data.tasks.imports import TaskImportError, resolve_task
from hierfl.data.tasks.models import Model, Params, build_model
from hierfl.errors import ArtifactError, RunDirError
from hierfl.inference.artifact import Artifact, ArtifactMeta
from hierfl.runs.checkpoint import flatten_params, load_params
from hierfl.runs.metrics import read_census, read_metrics, read_run_info
from hierfl.runs.records import plant_model_file

DEFAULT_PLATFORMS = ("cpu", "cuda")
BATCH_DIM = "batch"
INPUT_DTYPE = "float32"
"""Every task's examples are float32 (`PlantData`)."""

PREPROCESSING: dict[str, dict[str, Any]] = {
    "digits": {
        "description": "8x8 grey images, pixel intensities 0..16 (scikit-learn digits) divided by 16 into [0, 1]",
        "raw_scale": 1.0 / 16.0,
        "layout": "[8, 8, 1] (height, width, channel)",
        "image_hw": list(digits.SHAPE[:2]),
    },
    "bearing-fault": {
        "description": "raw acceleration windows; envelope demodulation and normalisation are inside the exported function",
        "sample_rate_hz": bearing_data.FS_HZ,
        "window": bearing.WINDOW,
        "layout": f"[{bearing.WINDOW}, 1] (time, sensor channel)",
    },
}
"""What a caller must do to raw sensor data before sending it, per task (constants included).

A task missing here is exported with its description only.
"""


def preprocessing(task: Task) -> dict[str, Any]:
    """What a caller does to raw data before sending it: the bundled task's constants, or
    for a user's task its description and, when its loader reads named columns, their
    names (`features`), so `hierfl predict` picks them out of a CSV file by its header."""
    if task.name in PREPROCESSING and not task.reads_files:
        return PREPROCESSING[task.name]
    features = getattr(task.loader, "features", None)
    return {"description": task.description, **({"features": list(features)} if features else {})}


def export_model(
    model: Model,
    params: Params,
    task: Task,
    *,
    version: int,
    metrics: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    census: Census | None = None,
) -> Artifact:
    """Lowers `model.apply(params, x)` for `platforms` and packs it with the params as an `Artifact`.

    `x` is `[batch, *task.input_shape]` float32 with a symbolic `batch`; the function
    returns logits `[batch, task.num_classes]` (a regression task's values `[batch, H]`). Raises `ArtifactError` if the function
    cannot be lowered for one of `platforms`, or if its outputs do not match the task's
    class (or target) names, which would serve every prediction under the wrong label.
    With a `census` that standardizes, the function standardizes `x` first with its mean
    and std (inside the artifact, so the server is sent raw readings), and the artifact's
    preprocessing records them.
    """
    flat = flatten_params(params)
    treedef = jax.tree.structure(params)
    scale = census if census is not None and census.standardizes else None

    def infer(param_leaves, x):
        if scale is not None:
            x = (x - scale.mean) / scale.std
        return model.apply(jax.tree.unflatten(treedef, param_leaves), x)

    (batch,) = jax_export.symbolic_shape(BATCH_DIM)
    leaf_specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in flat.values()]
    x_spec = jax.ShapeDtypeStruct((batch, *task.input_shape), np.dtype(INPUT_DTYPE))
    try:
        exported = jax_export.export(jax.jit(infer), platforms=tuple(platforms))(leaf_specs, x_spec)
        function = bytes(exported.serialize())
    except ImportError as err:  # serialization needs the `flatbuffers` package
        raise ArtifactError(f"cannot serialize the exported model: {err}") from None
    except Exception as err:  # lowering errors come as many types; name the platforms asked for
        raise ArtifactError(
            f"cannot export model {model.name!r} for platforms {list(platforms)}: {type(err).__name__}: {err}"
        ) from err
    (out_aval,) = exported.out_avals
    _check_outputs(model, task, tuple(out_aval.shape[1:]))
    meta = ArtifactMeta(
        task=task.name,
        model=model.name,
        version=int(version),
        class_names=tuple(task.class_names),
        output_names=tuple(task.target_names),
        input_shape=tuple(task.input_shape),
        input_dtype=INPUT_DTYPE,
        output_shape=tuple(int(d) for d in out_aval.shape[1:]),
        platforms=tuple(exported.platforms),
        preprocessing=preprocessing(task)
        | ({"standardize": census.describe()} if scale is not None else {}),
        metrics=dict(metrics or {}),
        run=dict(run or {}),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        hierfl_version=__version__,
        jax_version=jax.__version__,
    )
    return Artifact(meta, function, flat)


def _check_outputs(model: Model, task: Task, output_shape: tuple) -> None:
    """ArtifactError unless the model gives one value per class name (or per target name)."""
    names, what = (
        (task.target_names, "target names")
        if task.is_regression
        else (task.class_names, "class names")
    )
    if output_shape != (len(names),):
        outputs = output_shape[0] if len(output_shape) == 1 else f"shape {list(output_shape)} of"
        raise ArtifactError(
            f"cannot export model {model.name!r}: model {model.name!r} outputs {outputs} values per example "
            f"but task {task.name!r} has {len(names)} {what} ({', '.join(names)}); "
            "every prediction would be served under the wrong label: export the task's own model"
        )


def export_run(
    run_dir: str | os.PathLike,
    *,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    plant: str | None = None,
) -> Artifact:
    """The artifact of a finished run directory (run.json, metrics.jsonl, model.npz).

    With `plant`, that plant's own model instead (`model-<plant>.npz`: its personalized model
    under `[personalization]`, written by the simulator or by the plant's edge in a launch;
    the final global model under homomorphic encryption). The model version is the last cloud round in `metrics.jsonl` and the artifact's
    metrics are that round's record. Raises `RunDirError` if the directory is not a
    complete run, or its parameters do not fit the model `run.json` names.
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise RunDirError(
            f"{run_dir / 'metrics.jsonl'}: no finished cloud round, so there is no model to export"
        )
    task_name, model_name = info.get("task"), info.get("model")
    folder = info.get("task_folder")
    try:
        task = resolve_task(str(task_name), Path(folder) if isinstance(folder, str) else None)
    except TaskImportError as error:
        raise RunDirError(f"{run_dir / 'run.json'}: {error}") from None
    if model_name not in task.models:
        raise RunDirError(
            f"{run_dir / 'run.json'}: task {task_name!r} has no model {model_name!r} (known: {', '.join(sorted(task.models))})"
        )
    model_path = run_dir / "model.npz"
    if plant is not None:
        model_path = run_dir / plant_model_file(plant)
        if not model_path.exists():
            plants = sorted(p.name for p in run_dir.glob("model-*.npz"))
            held = f"this run has {', '.join(plants)}" if plants else "this run has no plant model"
            raise RunDirError(
                f"{model_path}: no such file; {held} (plant models are written by runs with "
                "[personalization], or with [privacy] homomorphic)"
            )
    elif not model_path.exists():
        plants = sorted(p.name for p in run_dir.glob("model-*.npz"))
        if plants:  # a run with homomorphic encryption: the plants hold the model, the cloud none
            raise RunDirError(
                f"{model_path}: no such file; this run's plants wrote the final model ({', '.join(plants)}): "
                "copy one of them to model.npz to export it"
            )
        raise RunDirError(
            f"{model_path}: no such file; the run did not finish (model.npz is written after the last cloud round)"
        )
    model, template = build_model(model_name, task.models[model_name], jax.random.key(0))
    params = load_params(model_path)
    _check_params_fit(params, template, model_path, model_name)
    last = records[-1]
    run = {
        key: info[key]
        for key in ("name", "algorithm", "seed", "topology", "num_plants", "num_devices", "started")
        if key in info
    }
    run["run_dir"] = str(run_dir)
    if plant is not None:
        run["plant"] = plant
    described = read_census(run_dir)
    return export_model(
        model,
        params,
        task,
        version=int(last["round"]),
        metrics=last,
        run=run,
        platforms=platforms,
        census=None if described is None else census_from(described),
    )


def _check_params_fit(params: Params, template: Params, path: Path, model_name: str) -> None:
    """RunDirError unless `params` has exactly the template's names, shapes and dtypes."""
    have = {name: (a.shape, a.dtype) for name, a in flatten_params(params).items()}
    want = {name: (a.shape, a.dtype) for name, a in flatten_params(template).items()}
    if have != want:
        problems = [
            f"{n}: expected {want[n][0]} {want[n][1]}, got {have[n][0]} {have[n][1]}"
            for n in want
            if n in have and have[n] != want[n]
        ]
        problems += [f"{n}: missing" for n in want if n not in have]
        problems += [f"{n}: not a parameter of {model_name}" for n in have if n not in want]
        raise RunDirError(
            f"{path}: parameters do not fit model {model_name!r}: " + "; ".join(problems[:5])
        )
