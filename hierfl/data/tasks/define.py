"""`hierfl.task(...)`: how a user defines a task in their own module.

A task is the user's model, loss, metrics and how one device's data is read:

    import hierfl
    from flax import nnx

    class PressNet(nnx.Module):
        def __init__(self, spec: hierfl.InputSpec, classes: int, *, rngs: nnx.Rngs):
            self.hidden = nnx.Linear(spec.shape[0], 32, rngs=rngs)
            self.head = nnx.Linear(32, classes, rngs=rngs)
        def __call__(self, x):
            return self.head(nnx.relu(self.hidden(x)))

    press_failure = hierfl.task(
        "press-failure",
        classes=("ok", "failure"),
        model=lambda rngs, spec: PressNet(spec, 2, rngs=rngs),
        data=hierfl.csv(label="failure"),
        input_shape=(6,),
    )

and the topology names it by import string: `task = "my_plants.tasks:press_failure"`.
The result is a `Task`, the same type as the bundled tasks; only where the data comes
from differs (each device's files, read by `data`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flax import nnx

from hierfl.data.scoring import Metric
from hierfl.data.tasks.base import (
    ACCURACY,
    Task,
    class_strata,
    cross_entropy,
    mae,
    rmse,
    squared_error,
    target_bins,
)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What one example looks like: `shape` (without the batch axis) and its dtype."""

    shape: tuple[int, ...]
    dtype: str = "float32"


ModelFactory = Callable[[nnx.Rngs, InputSpec], nnx.Module]
"""`factory(rngs, spec) -> nnx.Module`: builds the model for examples of `spec`."""

DEFAULT_MODEL = "model"
"""The model's name when a task has a single one (`model=` rather than `models=`)."""


def task(
    name: str,
    *,
    data: Any,
    model: ModelFactory | None = None,
    models: Mapping[str, ModelFactory] | None = None,
    classes: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    loss: Callable[[Any, Any], Any] | None = None,
    metrics: Sequence[Metric] | None = None,
    description: str = "",
    default_model: str | None = None,
    standardize: bool = False,
) -> Task:
    """A task whose devices read their own files.

    `data` reads one device's data: a built-in loader (`hierfl.csv`, `hierfl.parquet`,
    `hierfl.npz`, `hierfl.npy`, `hierfl.image_folder`) or a function `path -> (x, y)`.
    `model` is one model factory `(rngs, spec) -> nnx.Module` (or `models`, several by
    name, with `default_model` the one used unless the topology's `model` names another).
    Exactly one of `classes` (class names: a classifier whose model outputs one logit per
    class, trained with softmax cross-entropy, scored by accuracy) and `targets` (names of
    regression outputs: the model outputs `[B, len(targets)]`, trained with squared
    error, scored by RMSE and MAE). `input_shape` is one example's shape; it may be left
    out when the loader knows it (a CSV loader with its `features` listed, an image
    folder with its `size`). `loss(outputs, y) -> [B]` and `metrics` replace the defaults.
    With `standardize`, every example is standardized per input channel (the last axis: a
    table's features) with the federation's mean and std, which a census finds before round
    1 from each device's counts, sums and sums of squares (never its rows); the exported
    model applies the same scaling, so it is served raw readings.

    Raises ValueError or TypeError naming what is wrong (the topology's loader reports
    it as a problem of `federation.task`).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task's name must be a non-empty string, got {name!r}")
    factories = _model_factories(name, model, models)
    spec = InputSpec(_input_shape(name, input_shape, data))
    class_names, target_names = _outputs(name, classes, targets)
    regression = bool(target_names)
    bound = {key: _bind(factory, spec) for key, factory in factories.items()}
    return Task(
        name=name,
        description=description or f"{name}: the user's task",
        input_shape=spec.shape,
        class_names=class_names,
        models=bound,
        default_model=default_model or next(iter(bound)),
        example_loss=loss or (squared_error if regression else cross_entropy),
        metrics=tuple(metrics) if metrics else ((rmse(), mae()) if regression else (ACCURACY,)),
        target_names=target_names,
        strata=target_bins(4) if regression else class_strata,
        loader=_checked_loader(name, data),
        standardize=bool(standardize),
    )


def _model_factories(
    name: str, model: ModelFactory | None, models: Mapping[str, ModelFactory] | None
) -> dict[str, ModelFactory]:
    if (model is None) == (models is None):
        raise ValueError(f"task {name!r}: give exactly one of model= and models=")
    factories = {DEFAULT_MODEL: model} if model is not None else dict(models or {})
    if not factories:
        raise ValueError(f"task {name!r}: models= names no model")
    for key, factory in factories.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"task {name!r}: a model's name must be a non-empty string")
        if not callable(factory):
            raise TypeError(
                f"task {name!r}: model {key!r} must be a function (rngs, spec) -> nnx.Module, "
                f"got {type(factory).__name__}"
            )
    return factories


def _input_shape(name: str, input_shape: Sequence[int] | None, data: Any) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else getattr(data, "input_shape", None)
    if shape is None:
        raise ValueError(
            f"task {name!r}: input_shape is unknown: give input_shape=(...), or list the "
            "loader's features"
        )
    shape = tuple(shape)
    if not shape or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
    ):
        raise ValueError(f"task {name!r}: input_shape must be positive integers, got {shape}")
    return shape


def _outputs(
    name: str, classes: Sequence[str] | None, targets: Sequence[str] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, target names): one of them empty."""
    if (classes is None) == (targets is None):
        raise ValueError(
            f"task {name!r}: give exactly one of classes= (a classifier) and targets= (regression)"
        )
    what, names = ("classes", classes) if classes is not None else ("targets", targets)
    if isinstance(names, str):
        raise TypeError(
            f"task {name!r}: {what}= must be a sequence of names, not the string {names!r}"
        )
    names = tuple(names)
    least = 2 if what == "classes" else 1
    if len(names) < least or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"task {name!r}: {what}= must be at least {least} non-empty names, got {names}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"task {name!r}: {what}= names a class twice: {names}")
    return (names, ()) if what == "classes" else ((), names)


def _bind(factory: ModelFactory, spec: InputSpec) -> Callable[[nnx.Rngs], nnx.Module]:
    """The factory with the task's input spec applied: what the engines call with `rngs`."""
    return lambda rngs: factory(rngs, spec)


def _checked_loader(name: str, data: Any) -> Any:
    if not (callable(data) or callable(getattr(data, "read", None))):
        raise TypeError(
            f"task {name!r}: data= must be a loader (e.g. hierfl.csv(label=...)) or a function "
            f"path -> (x, y), got {type(data).__name__}"
        )
    return data
