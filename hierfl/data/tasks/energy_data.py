"""Real electricity data, offline: UCR-archive datasets that ship inside the `aeon` wheel.

The `aeon` package (a time-series toolkit, BSD-3) bundles a few UCR/UEA datasets as `.ts`
files under `aeon/datasets/data/<Name>/<Name>_{TRAIN,TEST}.ts`. This module reads two of
them straight from the installed package, with a small parser of its own: it never
imports aeon's loaders (which may fall back to downloading), never touches the network,
and fails with `DataError` naming the extra to install when aeon is missing.

* **ItalyPowerDemand** (Keogh et al.): 1,096 daily load curves of Italy's electricity
  demand, 24 hourly values each, labelled by season: ``winter`` (October to March) and
  ``summer`` (April to September). As everywhere in the UCR archive, every day is
  z-normalised on its own (mean 0, standard deviation 1 over its 24 hours).
* **ACSF1** (Gisler et al. 2013): 200 power-consumption signatures of 1,460 samples, 20 of
  each of 10 appliance types (``APPLIANCES``), also z-normalised per series.

Install with ``pip install "hierfl[examples]"`` (or ``pip install aeon``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from hierfl.errors import DataError

EXTRA = "examples"
INSTALL_HINT = f'pip install "hierfl[{EXTRA}]" (or: pip install aeon)'

SEASONS = ("winter", "summer")
"""ItalyPowerDemand's classes 1 (October-March) and 2 (April-September)."""

APPLIANCES = (
    "mobile-phone",
    "coffee-machine",
    "computer-station",
    "fridge-freezer",
    "hi-fi",
    "lamp",
    "laptop",
    "microwave",
    "printer",
    "television",
)
"""ACSF1's classes 0..9, in the order of its documentation."""


def aeon_data_dir() -> Path:
    """The `datasets/data` folder of the installed aeon package; DataError if aeon is not installed.

    Found with `importlib.util.find_spec`, which locates the package without running it.
    """
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the energy datasets (ItalyPowerDemand, ACSF1) ship inside the aeon package, which is not installed: "
            f"{INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def dataset_paths(name: str) -> tuple[Path, Path]:
    """The installed TRAIN and TEST `.ts` files of the UCR dataset `name`."""
    folder = aeon_data_dir() / name
    paths = (folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts")
    for path in paths:
        if not path.is_file():
            raise DataError(
                f"{path}: not found in the installed aeon package; reinstall it with {INSTALL_HINT}"
            )
    return paths


def read_ts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A univariate, equal-length `.ts` file: `(x float32 [N, L], labels [N] as strings)`.

    Header lines start with `@` or `#`; after `@data` each line is `v1,v2,...,vL:label`.
    """
    rows, labels = [], []
    in_data = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        values, _, label = line.rpartition(":")
        try:
            rows.append(np.array(values.split(","), dtype=np.float32))
        except ValueError:
            raise DataError(f"{path}:{number}: not a univariate series of numbers") from None
        labels.append(label)
    if not rows or len({len(r) for r in rows}) != 1:
        raise DataError(f"{path}: expected equal-length univariate series after @data")
    return np.stack(rows), np.array(labels)


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """All series of a UCR dataset (TRAIN then TEST: the archive's split is not used) and their labels."""
    parts = [read_ts(path) for path in dataset_paths(name)]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def italy_power_demand() -> tuple[np.ndarray, np.ndarray]:
    """ItalyPowerDemand: `(load float32 [1096, 24], season int32 [1096])`, season indexes `SEASONS`."""
    x, labels = load_dataset("ItalyPowerDemand")
    return x, (labels.astype(np.int64) - 1).astype(np.int32)


def acsf1() -> tuple[np.ndarray, np.ndarray]:
    """ACSF1: `(power float32 [200, 1460], appliance int32 [200])`, appliance indexes `APPLIANCES`."""
    x, labels = load_dataset("ACSF1")
    return x, labels.astype(np.int32)
