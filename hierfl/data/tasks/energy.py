"""Energy tasks on real data (`hierfl.data.tasks.energy_data`, from the `aeon` wheel; optional extra).

* `energy-forecast`: ItalyPowerDemand. From the first `HOURS_GIVEN` hours of a day's load
  curve, forecast the last `HOURS_AHEAD` (regression, `y [N, 4]`); an MLP; RMSE and MAE in
  the dataset's per-day standardised units. A plant's `classes` are the seasons its days
  come from (``winter``, ``summer``): plants in different seasons (or regions with
  different climates) see differently shaped days. Splits and Dirichlet skew work on 4
  bins of the mean target.
* `appliance-id`: ACSF1. Tell 10 appliance types from a power signature of 1,460 samples
  (classification); a 1D CNN. A plant's `classes` are the appliance types its sites have.

Both pools are fixed (1,096 days, 200 signatures): each class's series are shared among
the plants that have that class, in proportion to their devices per class, then each
plant holds out `test_fraction` of every class it has as its test set. Deterministic in
the seed; aeon is imported by nothing here (its files are read in place).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from hierfl.data.partition import proportional_sizes
from hierfl.data.tasks import energy_data
from hierfl.data.tasks.base import (
    PlantData,
    PlantRequest,
    Task,
    mae,
    rmse,
    squared_error,
    stratified_test_split,
    target_bins,
)
from hierfl.data.tasks.models import MLP, SeriesCNN
from hierfl.errors import DataError

HOURS_GIVEN = 20
HOURS_AHEAD = 4
_POOL = 13  # purpose of the pool-division stream: default_rng([seed, _POOL])
_SPLIT = 14  # purpose of a plant's test split: default_rng([seed, _SPLIT, plant])


def divide_pool(
    groups: np.ndarray,
    names: Sequence[str],
    requests: Sequence[PlantRequest],
    test_fraction: float,
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each plant's (train, test) indices into a fixed pool whose examples fall in `groups`.

    `groups[i]` indexes `names` (classes, seasons). A plant takes only the groups its
    request's `classes` name (all by default); each group is shared among the plants that
    take it in proportion to `num_devices / len(classes)`. The plant's share is then split
    by group into test (`test_fraction`) and train; a plant asking for `train_samples` gets
    that many (DataError if its share is smaller).
    """
    rng = np.random.default_rng([seed, _POOL])
    kinds = [
        tuple(names.index(c) for c in r.classes) if r.classes else tuple(range(len(names)))
        for r in requests
    ]
    shares: list[list[np.ndarray]] = [[] for _ in requests]
    for g in range(len(names)):
        takers = [p for p, k in enumerate(kinds) if g in k]
        if not takers:
            continue
        members = rng.permutation(np.flatnonzero(groups == g))
        sizes = proportional_sizes(
            len(members), [requests[p].num_devices / len(kinds[p]) for p in takers]
        )
        for p, chunk in zip(takers, np.split(members, np.cumsum(sizes)[:-1])):
            shares[p].append(chunk)
    divided = []
    for p, request in enumerate(requests):
        share = np.sort(np.concatenate(shares[p]))
        split_rng = np.random.default_rng([seed, _SPLIT, request.index])
        train, test = stratified_test_split(groups[share], test_fraction, split_rng)
        train, test = share[train], share[test]
        if request.train_samples is not None:
            if request.train_samples > len(train):
                raise DataError(
                    f"plant {request.name!r} asks for {request.train_samples} training examples; "
                    f"its share of the pool has {len(train)}"
                )
            train = np.sort(split_rng.permutation(train)[: request.train_samples])
        divided.append((train, test))
    return divided


def _fixed_pool_data(load: Callable[[], tuple[np.ndarray, np.ndarray]], names, to_xy) -> Callable:
    def make_plant_data(
        requests: Sequence[PlantRequest], test_fraction: float, seed: int
    ) -> list[PlantData]:
        series, groups = load()
        x, y = to_xy(series, groups)
        return [
            PlantData(x[train], y[train], x[test], y[test])
            for train, test in divide_pool(groups, names, requests, test_fraction, seed)
        ]

    return make_plant_data


def _forecast_xy(load: np.ndarray, season: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return load[:, :HOURS_GIVEN].copy(), load[:, HOURS_GIVEN:].copy()


def _appliance_xy(power: np.ndarray, appliance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return power[..., None], appliance


FORECAST = Task(
    name="energy-forecast",
    description=f"ItalyPowerDemand daily load: forecast hours {HOURS_GIVEN + 1}-24 from hours 1-{HOURS_GIVEN} (real data, aeon)",
    input_shape=(HOURS_GIVEN,),
    class_names=(),
    models={"mlp": lambda rngs: MLP(HOURS_GIVEN, (64, 64), HOURS_AHEAD, rngs=rngs)},
    default_model="mlp",
    make_plant_data=_fixed_pool_data(
        energy_data.italy_power_demand, energy_data.SEASONS, _forecast_xy
    ),
    example_loss=squared_error,
    metrics=(rmse(what="standardised load"), mae(what="standardised load")),
    target_names=tuple(f"hour_{h}" for h in range(HOURS_GIVEN + 1, 25)),
    strata=target_bins(4),
    example_classes=energy_data.SEASONS,
)

APPLIANCES = Task(
    name="appliance-id",
    description="ACSF1 appliance power signatures, 10 appliance types (real data, aeon)",
    input_shape=(1460, 1),
    class_names=energy_data.APPLIANCES,
    models={"cnn1d": lambda rngs: SeriesCNN(len(energy_data.APPLIANCES), rngs=rngs)},
    default_model="cnn1d",
    make_plant_data=_fixed_pool_data(energy_data.acsf1, energy_data.APPLIANCES, _appliance_xy),
)
