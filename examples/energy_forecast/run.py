"""Energy forecasting and appliance identification on real data: hierarchical FL against its references.

    pip install "hierfl[examples]"        # aeon: the datasets ship inside its wheel
    python examples/energy_forecast/run.py

runs two problems on UCR-archive electricity data read offline from the installed aeon
package (`hierfl.tasks.energy_data`), each on its own federation:

* **forecast**: forecast the last 4 hours of a day's load from its first 20
  (ItalyPowerDemand; task `energy-forecast`, `topology.toml`), RMSE and MAE; the sites
  see different seasons;
* **appliances**: tell 10 appliance types from a power signature (ACSF1; task
  `appliance-id`, `appliances.toml`), accuracy; the sites have different appliances.

Each trains hierarchical FL, flat FedAvg, local-only and centralized with the same model and
budget (`hierfl.comparison`), and the hierarchy again with each of `--algorithms` (default:
FedProx, FedNova, SCAFFOLD, FedAdam), and writes into the output folder (default: this one)
`results_<problem>.md`, `.json` and `.png`. The hierarchical runs are kept in
`--run-dir`/<federation name> (default `runs/`) with `predict.npy` for `hierfl export`,
`hierfl serve` and `hierfl predict` (see README.md). `--rounds`, `--topology`,
`--appliances-topology` and `--only` make quick runs (the tests use them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

HERE = Path(__file__).resolve().parent
COMMAND = "python examples/energy_forecast/run.py"
PROBLEMS = ("forecast", "appliances")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", type=Path, default=HERE / "topology.toml", help="load-forecasting federation")
    parser.add_argument("--appliances-topology", type=Path, default=HERE / "appliances.toml", help="appliance-identification federation")
    parser.add_argument("--only", choices=PROBLEMS, help="run one problem (default: both)")
    parser.add_argument("--rounds", type=int, help="cloud rounds (default: the topologies')")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the results (default: this example's)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs"), help="where the hierarchical runs are kept (default: runs/)")
    parser.add_argument("--algorithms", default="fedprox,fednova,scaffold,fedadam", type=algorithms,
                        help="other algorithms to train the hierarchy with (comma-separated, or none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def algorithms(text: str):
    """`--algorithms` (imports hierfl lazily: JAX must not start before `request_cpu_devices`)."""
    from hierfl.comparison import alternatives_argument

    return alternatives_argument(text)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the comparisons and writes the results; returns {problem: what results_<problem>.json holds}."""
    from hierfl.comparison import Words, run_problems

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    paths = {"forecast": args.topology, "appliances": args.appliances_topology}
    words = {
        "forecast": Words("meter", "meters", "site", "sites", "day", "days"),
        "appliances": Words("plug", "plugs", "site", "sites", "signature", "signatures"),
    }
    results: dict[str, Any] = {}
    for problem in (args.only,) if args.only else PROBLEMS:
        results |= run_problems(
            {problem: paths[problem]},
            command=" ".join([COMMAND, *argv]),
            out=args.out,
            words=words[problem],
            rounds=args.rounds,
            run_root=args.run_dir,
            progress=not args.quiet,
            console=Console(quiet=args.quiet),
            relative_to=HERE,
        alternatives=args.algorithms,
        )
    return results


if __name__ == "__main__":
    from hierfl.parallel import request_cpu_devices

    request_cpu_devices()  # before JAX starts: train the devices on every core
    main()
