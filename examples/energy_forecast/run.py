"""Energy forecasting and appliance identification on real data: hierarchical FL against its references.

    pip install "hierfl[examples]"        # aeon: the datasets ship inside its wheel
    python examples/energy_forecast/run.py

runs two problems on UCR-archive electricity data read offline from the installed aeon
package (`hierfl.data.tasks.energy_data`), each on its own federation:

* **forecast**: forecast the last 4 hours of a day's load from its first 20
  (ItalyPowerDemand; task `energy-forecast`, `topology.toml`), RMSE and MAE; the sites
  see different seasons;
* **appliances**: tell 10 appliance types from a power signature (ACSF1; task
  `appliance-id`, `appliances.toml`), accuracy; the sites have different appliances.

Each trains hierarchical FL, flat FedAvg, local-only and centralized with the same model and
budget (`hierfl.studies.comparison`), and the hierarchy again with each of `--algorithms` (default:
FedProx, FedNova, SCAFFOLD, FedAdam), and writes into the output folder (default: this one)
`results_<problem>.md`, `.json` and `.png`. The hierarchical runs are kept in
`--run-dir`/<federation name> (default `runs/`) with `predict.npy` for `hierfl export`,
`hierfl serve` and `hierfl predict` (see README.md). `--rounds`, `--topology`,
`--appliances-topology` and `--only` make quick runs (the tests use them).
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
        command="python examples/energy_forecast/run.py",
        problems={
            "forecast": Problem(
                "topology.toml",
                "load-forecasting",
                Words("meter", "meters", "site", "sites", "day", "days"),
            ),
            "appliances": Problem(
                "appliances.toml",
                "appliance-identification",
                Words("plug", "plugs", "site", "sites", "signature", "signatures"),
            ),
        },
    )


if __name__ == "__main__":
    from hierfl.sim.parallel import request_cpu_devices

    request_cpu_devices()  # before JAX starts: train the devices on every core
    main()
