"""Equipment failure prediction across three plants: hierarchical FL against its references.

    python examples/equipment_failure/run.py

runs two problems on the vibration sensors of spindle bearings, each on its own federation:

* **fault**: classify a vibration window as healthy, outer-race, inner-race or ball fault
  (task `bearing-fault`, `topology.toml`), accuracy;
* **rul**: estimate the remaining useful life of a faulty bearing in hours, from
  run-to-failure trajectories (task `bearing-rul`, `rul.toml`), RMSE and MAE in hours.

In both, each plant's machines develop only some fault types, so no plant alone sees them
all. Each problem trains hierarchical FL, flat FedAvg, local-only and centralized with the
same model and budget (`hierfl.studies.comparison`), and the hierarchy again with each of `--algorithms` (default:
FedProx, FedNova, SCAFFOLD, FedAdam), and writes into the output folder (default:
this one) `results_<problem>.md` (the tables), `results_<problem>.json` (every number and
curve) and `results_<problem>.png` (the score against examples processed and against
edge->cloud bytes). The hierarchical run of each is kept in `--run-dir`/<federation name>
(default `runs/`) with `predict.npy`, four of its test windows, for `hierfl export`,
`hierfl serve` and `hierfl predict` (see README.md). `--rounds`, `--topology`,
`--rul-topology` and `--only` make quick runs (the tests use them).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the comparisons and writes the results; returns {problem: what results_<problem>.json holds}."""
    from hierfl.studies.comparison import (
        Problem,
        Words,
        run_example,
    )  # after request_cpu_devices: this starts JAX

    return run_example(
        sys.argv[1:] if argv is None else argv,
        description=__doc__.split("\n\n")[0],
        here=HERE,
        command="python examples/equipment_failure/run.py",
        problems={
            name: Problem(
                topology,
                description,
                Words("sensor", "sensors", "plant", "plants", "window", "windows"),
            )
            for name, topology, description in (
                ("fault", "topology.toml", "fault-classification"),
                ("rul", "rul.toml", "remaining-useful-life"),
            )
        },
    )


if __name__ == "__main__":
    from hierfl.sim.parallel import request_cpu_devices

    request_cpu_devices()  # before JAX starts: train the devices on every core
    main()
