"""Equipment failure prediction across three plants: hierarchical FL against its references.

    python examples/equipment_failure/run.py

runs two problems on the vibration sensors of spindle bearings, each on its own federation:

* **fault**: classify a vibration window as healthy, outer-race, inner-race or ball fault
  (`topology.toml`), accuracy. The task is the example's own (`bearing_tasks.py`, written
  with `hierfl.task`) and every machine's windows are in its own file, which
  `write_data.py` writes first if any is missing;
* **rul**: estimate the remaining useful life of a faulty bearing in hours, from
  run-to-failure trajectories (bundled task `bearing-rul`, `rul.toml`), RMSE and MAE in hours.

In both, each plant's machines develop only some fault types, so no plant alone sees them
all. Each problem trains hierarchical FL, flat FedAvg, local-only and centralized with the
same model and budget (`hierfl.studies.comparison`), and the hierarchy again with each of
`--algorithms` (default: FedProx, FedNova, SCAFFOLD, FedAdam), and writes into the output
folder (default: this one) `results_<problem>.md` (the tables), `results_<problem>.json`
(every number and curve) and `results_<problem>.png` (the score against examples
processed and against edge->cloud bytes). The hierarchical run of each is kept in
`--run-dir`/<federation name> (default `runs/`) with `predict.npy`, four of its test
windows, for `hierfl export`, `hierfl serve` and `hierfl predict` (see README.md).
`--rounds`, `--topology`, `--rul-topology` and `--only` make quick runs (the tests use them).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def write_missing_files(topology: Path) -> None:
    """`write_data.py`'s machines and plants, written where `topology` says if any file is missing."""
    spec = importlib.util.spec_from_file_location("equipment_write_data", HERE / "write_data.py")
    write_data = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = write_data  # its dataclasses look their module up
    spec.loader.exec_module(write_data)
    written = write_data.write_missing_files(topology)
    if written:
        print(f"wrote {len(written)} machine and test files for {topology.name}", flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the comparisons and writes the results; returns {problem: what results_<problem>.json holds}."""
    from hierfl.studies.comparison import (
        Problem,
        Words,
        run_example,
    )  # after request_cpu_devices: this starts JAX

    words = Words("sensor", "sensors", "plant", "plants", "window", "windows")
    return run_example(
        sys.argv[1:] if argv is None else argv,
        description=__doc__.split("\n\n")[0],
        here=HERE,
        command="python examples/equipment_failure/run.py",
        problems={
            "fault": Problem("topology.toml", "fault-classification", words, write_missing_files),
            "rul": Problem("rul.toml", "remaining-useful-life", words),
        },
    )


if __name__ == "__main__":
    from hierfl.sim.parallel import request_cpu_devices

    request_cpu_devices()  # before JAX starts: train the devices on every core
    main()
