"""Loading a topology and checking it against the task it names.

`hierfl.topology` knows the file format but not our tasks; this resolves the topology's
`task` (a bundled name or the user's `module:attribute`, `hierfl.data.tasks.imports`)
and checks what only the task can say: that its model exists and fits the task's outputs,
and that the topology says where data is exactly when the task reads files. Problems are
reported as TopologyErrors of the file, like any other problem in it. `check_names`
applies the same checks to a topology built or changed in code, for `make_plan`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from hierfl.core import personal
from hierfl.core.algorithms import ALGORITHMS
from hierfl.data.tasks.base import Task
from hierfl.data.tasks.imports import TaskImportError, resolve_task, topology_folder
from hierfl.kernels import flat_spec
from hierfl.topology import Topology, TopologyError
from hierfl.topology import load_topology as load_topology_file

CHOICES = {"federation.algorithm": ALGORITHMS}
"""The registries a topology's `[federation]` names are checked against (`load_topology`'s `choices`)."""


def load_topology(source: str | os.PathLike) -> Topology:
    """Loads a topology file or preset, checked against its task and the known algorithms."""
    topology = load_topology_file(source, choices=CHOICES)
    check_names(topology)
    return topology


def topology_task(topology: Topology) -> Task:
    """The task `topology` names (imported from beside the topology file if it is user code)."""
    return resolve_task(topology.federation.task, topology_folder(topology.source))


def check_names(topology: Topology) -> None:
    """TopologyError, as `load_topology` gives, unless the federation's task resolves, its
    model is the task's and fits it, its algorithm is known, and the data declarations
    suit the task: for topologies changed in code after loading."""
    federation = topology.federation
    topology.with_federation(algorithm=federation.algorithm, choices=CHOICES)
    try:
        task = topology_task(topology)
    except TaskImportError as error:
        raise TopologyError([f"federation.task: {error}"], topology.source) from None
    problems = _model_problems(task, federation.model) + _data_problems(topology, task)
    if not problems:
        problems = _personalization_problems(topology, task)
    if problems:
        raise TopologyError(problems, topology.source)


def _model_problems(task: Task, model: str | None) -> list[str]:
    if model is not None and model not in task.models:
        known = ", ".join(sorted(task.models))
        return [
            f"federation.model: unknown model {model!r} for task {task.name!r} (choose from: {known})"
        ]
    if not task.reads_files:
        return []  # the bundled tasks' models are tested to fit
    name = model or task.default_model
    try:
        outputs = model_output_shape(task, name)
    except Exception as error:  # the user's model code: report it as a problem of the topology
        return [
            f"federation.model: model {name!r} of task {task.name!r} fails on an input of shape "
            f"{task.input_shape}: {type(error).__name__}: {error}"
        ]
    want = (task.num_outputs,)
    if tuple(outputs) != want:
        what = (
            f"{task.num_outputs} targets ({', '.join(task.target_names)})"
            if task.is_regression
            else f"{task.num_classes} classes ({', '.join(task.class_names)})"
        )
        return [
            f"federation.model: model {name!r} of task {task.name!r} outputs shape {tuple(outputs)} "
            f"per example; the task has {what}, so it must output {want}"
        ]
    return []


def parameter_names(task: Task, name: str) -> tuple[str, ...]:
    """The parameter paths of model `name` (`head/kernel`, ...), traced without computing."""
    from hierfl.data.tasks.models import build_model  # the models import the task API

    shapes = jax.eval_shape(lambda: build_model(name, task.models[name], jax.random.key(0))[1])
    return flat_spec(shapes).names


def _personalization_problems(topology: Topology, task: Task) -> list[str]:
    """The layers the topology names, against the parameters its model has: each must name
    one, and with per-plant layers some parameter must stay shared (else nothing is
    federated; fine-tuning every layer is what `layers` absent means)."""
    layers = topology.personalization.layers
    if not topology.personalization.enabled or not layers:
        return []
    name = topology.federation.model or task.default_model
    names = parameter_names(task, name)
    unknown = personal.unknown_layers(names, layers)
    problems = [
        f"personalization.layers: model {name!r} has no parameter {layer!r} (its parameters: "
        f"{', '.join(names)}; name a layer such as {names[-1].rsplit('/', 1)[0]!r}, or a parameter)"
        for layer in unknown
    ]
    keeps_all = topology.personalization.keeps_layers and not unknown
    if keeps_all and all(any(personal.matches(n, layer) for layer in layers) for n in names):
        problems.append(
            f"personalization.layers: {list(layers)} covers every parameter of model {name!r}, "
            "so nothing would be shared between plants; keep some layers global"
        )
    return problems


def model_output_shape(task: Task, name: str) -> tuple[int, ...]:
    """The shape of one example's output of model `name`, traced without computing."""

    def forward():
        module = task.models[name](nnx.Rngs(0))
        return module(jnp.zeros((1, *task.input_shape), jnp.float32))

    return tuple(jax.eval_shape(forward).shape[1:])


def _line_path(line) -> str | None:
    """The line's path template, or, when each of its devices gives its own, the first of those."""
    if line.data.path is not None or not all(device.data for device in line.devices):
        return line.data.path
    return line.devices[0].data


def _data_problems(topology: Topology, task: Task) -> list[str]:
    """Where the topology says data is, against where the task gets it (one problem per
    table that says it wrongly: `[data]` itself, or the line or plant that overrides it)."""
    lines = [
        (f"plants[{p}].lines[{i}].data.path", _line_path(line))
        for p, plant in enumerate(topology.plants)
        for i, line in enumerate(plant.lines)
    ]
    tests = [(f"plants[{p}].test_data", plant.test_data) for p, plant in enumerate(topology.plants)]
    if task.reads_files:
        wrong, why = (
            (lambda value: value is None),
            {
                "path": f"task {task.name!r} reads each device's files: say where, e.g. "
                '[data] path = "data/{plant}/{line}/{device}.csv"',
                "test_data": f"task {task.name!r} evaluates on each plant's held-out files: say "
                'where, e.g. [data] test_data = "data/{plant}/test.csv"',
            },
        )
    else:
        wrong, why = (
            (lambda value: value is not None),
            {
                "path": f"task {task.name!r} generates its data; a path is for a task that reads "
                "each device's files",
                "test_data": f"task {task.name!r} generates its data, test data included",
            },
        )
    problems = []
    for key, entries in (("path", lines), ("test_data", tests)):
        bad = [path for path, value in entries if wrong(value)]
        federation_wide = len(bad) == len(entries)  # most likely `[data]` says it for all
        problems += (
            [f"data.{key}: {why[key]}"]
            if federation_wide
            else [f"{path}: {why[key]}" for path in bad]
        )
    return problems
