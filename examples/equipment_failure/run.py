"""Equipment failure prediction across three plants: hierarchical FL against its references.

    python examples/equipment_failure/run.py

runs two problems on the vibration sensors of spindle bearings, each on its own federation:

* **fault**: classify a vibration window as healthy, outer-race, inner-race or ball fault
  (task `bearing-fault`, `topology.toml`), accuracy;
* **rul**: estimate the remaining useful life of a faulty bearing in hours, from
  run-to-failure trajectories (task `bearing-rul`, `rul.toml`), RMSE and MAE in hours.

In both, each plant's machines develop only some fault types, so no plant alone sees them
all. Each problem trains hierarchical FL, flat FedAvg, local-only and centralized with the
same model and budget (`hierfl.comparison`), and the hierarchy again with each of `--algorithms` (default:
FedProx, FedNova, SCAFFOLD, FedAdam), and writes into the output folder (default:
this one) `results_<problem>.md` (the tables), `results_<problem>.json` (every number and
curve) and `results_<problem>.png` (the score against examples processed and against
edge->cloud bytes). The hierarchical run of each is kept in `--run-dir`/<federation name>
(default `runs/`) with `predict.npy`, four of its test windows, for `hierfl export`,
`hierfl serve` and `hierfl predict` (see README.md). `--rounds`, `--topology`,
`--rul-topology` and `--only` make quick runs (the tests use them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

HERE = Path(__file__).resolve().parent
COMMAND = "python examples/equipment_failure/run.py"
PROBLEMS = ("fault", "rul")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", type=Path, default=HERE / "topology.toml", help="fault-classification federation")
    parser.add_argument("--rul-topology", type=Path, default=HERE / "rul.toml", help="remaining-useful-life federation")
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
    paths = {"fault": args.topology, "rul": args.rul_topology}
    return run_problems(
        {p: paths[p] for p in ((args.only,) if args.only else PROBLEMS)},
        command=" ".join([COMMAND, *argv]),
        out=args.out,
        words=Words("sensor", "sensors", "plant", "plants", "window", "windows"),
        rounds=args.rounds,
        run_root=args.run_dir,
        progress=not args.quiet,
        console=Console(quiet=args.quiet),
        relative_to=HERE,
        alternatives=args.algorithms,
    )


if __name__ == "__main__":
    from hierfl.parallel import request_cpu_devices

    request_cpu_devices()  # before JAX starts: train the devices on every core
    main()
