"""Writes each machine's vibration windows to its own file, and each plant's held-out windows.

    python examples/equipment_failure/write_data.py [topology.toml] [--windows 64] [--seed 0]

stands in for the plants' data collection: every machine (device) of the topology gets its
own `.npz` file where the topology's `[data] path` says (`data/PLANT/LINE/MACHINE.npz`,
relative to the topology file), holding `x` [N, 2048] float32 (acceleration in g at
12 kHz) and `y` (class names); each plant's held-out windows go to its `test_data`
(`data/PLANT/test.npz`). That is all hierfl reads: the task (`bearing_tasks.py`) names the
loader, `hierfl.npz`.

The windows come from the physical bearing model of `hierfl.data.tasks.bearing_data`
(every formula is in its docstring): each machine draws its own speed, load, sensor noise
and housing resonance from its plant's distribution (`PLANTS`: the plant's `shift`), and
a plant's machines develop only the plant's faults, so no plant sees all four classes.
Each machine records `--windows` windows, classes balanced within the machine;
`--test-fraction` of each machine's windows of each class go to the plant's test file.
Deterministic in `--seed`: plant i's machines are `generate_plant(seed, i, ...)`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class PlantMachines:
    """How a plant's machines run: `shift` in [0, 1] (faster shafts, noisier sensors, a
    moved resonance) and the faults its bearings develop."""

    shift: float
    faults: tuple[str, ...]


PLANTS = {
    "plant-north": PlantMachines(0.0, ("healthy", "outer", "inner")),
    "plant-south": PlantMachines(0.25, ("healthy", "inner", "ball")),
    "plant-east": PlantMachines(0.5, ("healthy", "inner")),
}
"""The example's plants, by the topology's plant names."""

WINDOW = 2048
"""Samples per window, as `bearing_tasks.WINDOW`."""
WINDOWS_PER_MACHINE = 64
TEST_FRACTION = 0.25


def write_machine_files(
    topology_path: str | Path,
    *,
    windows: int = WINDOWS_PER_MACHINE,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
) -> list[Path]:
    """Writes every machine's file and every plant's test file; returns the paths written,
    machines in the topology's device order, then the plants' test files."""
    import hierfl
    from hierfl.data.tasks.bearing_data import CLASSES, generate_plant

    topology_path = Path(topology_path).resolve()
    topology = hierfl.load_topology(topology_path)
    root = topology_path.parent
    written: list[Path] = []
    tests: list[Path] = []
    for index, plant in enumerate(topology.plants):
        if plant.name not in PLANTS:
            raise ValueError(
                f"{topology_path}: plant {plant.name!r} is not one of the example's "
                f"({', '.join(PLANTS)}): add how its machines run to PLANTS"
            )
        machines = PLANTS[plant.name]
        x, y, machine = generate_plant(
            seed,
            index,
            plant.num_devices,
            windows,
            machines.shift,
            window=WINDOW,
            classes=tuple(CLASSES.index(fault) for fault in machines.faults),
        )
        names = np.asarray(CLASSES)[y]
        held_out = _held_out(y, machine, test_fraction)
        for number, device in enumerate(plant.devices):
            mine = (machine == number) & ~held_out
            written.append(_save(root / topology.data_path(device), x[mine], names[mine]))
        tests.append(_save(root / plant.test_data, x[held_out], names[held_out]))
    return written + tests


def write_missing_files(topology_path: str | Path, **options) -> list[Path]:
    """`write_machine_files` if any machine's or plant's file is missing (what `run.py`
    does first); returns the paths written, none if all were there."""
    import hierfl

    topology_path = Path(topology_path).resolve()
    topology = hierfl.load_topology(topology_path)
    wanted = [topology.data_path(device) for device in topology.devices]
    wanted += [plant.test_data for plant in topology.plants]
    if all((topology_path.parent / path).is_file() for path in wanted):
        return []
    return write_machine_files(topology_path, **options)


def _held_out(y: np.ndarray, machine: np.ndarray, fraction: float) -> np.ndarray:
    """The first `fraction` (rounded) of each machine's windows of each class: a window's
    class is already shuffled within its machine, so the first are as good as any."""
    held_out = np.zeros(len(y), bool)
    for m in np.unique(machine):
        for c in np.unique(y[machine == m]):
            rows = np.flatnonzero((machine == m) & (y == c))
            held_out[rows[: round(fraction * len(rows))]] = True
    return held_out


def _save(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "topology",
        nargs="?",
        type=Path,
        default=HERE / "topology.toml",
        help="the federation whose machines to write (default: topology.toml)",
    )
    parser.add_argument("--windows", type=int, default=WINDOWS_PER_MACHINE, help="per machine")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=TEST_FRACTION,
        help="of each machine's windows, held out in its plant's test file",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_machine_files(
        args.topology, windows=args.windows, test_fraction=args.test_fraction, seed=args.seed
    )
    print(f"wrote {len(paths)} files under {Path(args.topology).resolve().parent / 'data'}")
    return paths


if __name__ == "__main__":
    main()
