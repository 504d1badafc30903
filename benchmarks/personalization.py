"""Per-plant layers against one global model on the `bearing` preset (issue 17).

    python benchmarks/personalization.py             # the preset's 30 cloud rounds
    python benchmarks/personalization.py --rounds 10 # shorter

Two simulator runs of the same federation, seed and rounds: the preset as it is (one global
model, FedAvg in the hierarchy) and the preset with `[personalization] method = "plant-layers"`,
`layers = ["head"]` (the CNN's last Dense layer stays per plant). Printed per plant: the
global model's test accuracy without personalization, the plant's personalized model's, and
the global model of the personalized run (shared body with the cloud's initial head: not a
model to deploy, shown so nobody mistakes it for one). Test accuracy is on each plant's own
held-out windows, after the last cloud round.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hierfl.sim.engine import simulate
from hierfl.topology import preset_path

PLANT_LAYERS = '\n[personalization]\nmethod = "plant-layers"\nlayers = ["head"]\n'


def run(text: str, rounds: int, folder: Path, name: str) -> tuple[dict, float]:
    """The last record of a simulation of topology `text` for `rounds` rounds, and its seconds."""
    path = folder / f"{name}.toml"
    path.write_text(text)
    started = time.perf_counter()
    result = simulate(path, rounds=rounds)
    return result.history[-1], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    preset = Path(preset_path("bearing")).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shared, shared_s = run(preset, args.rounds, folder, "global")
        personal, personal_s = run(preset + PLANT_LAYERS, args.rounds, folder, "personal")
    print(f"bearing preset, {args.rounds} cloud rounds, seed 0; test accuracy per plant")
    print(
        f"{'plant':<10} {'global (no pers.)':>18} {'personalized':>13} {'global (pers. run)':>19}"
    )
    for plant in shared["plant_accuracy"]:
        print(
            f"{plant:<10} {shared['plant_accuracy'][plant]:>18.3f} "
            f"{personal['plant_personal_accuracy'][plant]:>13.3f} "
            f"{personal['plant_accuracy'][plant]:>19.3f}"
        )
    print(
        f"{'all':<10} {shared['accuracy']:>18.3f} {personal['personal_accuracy']:>13.3f} "
        f"{personal['accuracy']:>19.3f}"
    )
    print(f"wall time: {shared_s:.0f} s without, {personal_s:.0f} s with per-plant layers")


if __name__ == "__main__":
    main()
