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

from hierfl.data.tasks import energy_data
from hierfl.data.tasks.base import (
    PlantData,
    PlantRequest,
    Task,
    divide_pool,
    mae,
    rmse,
    squared_error,
    target_bins,
)
from hierfl.data.tasks.models import MLP, SeriesCNN

HOURS_GIVEN = 20
HOURS_AHEAD = 4


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
