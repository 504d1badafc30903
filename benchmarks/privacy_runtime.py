"""What secure aggregation costs in the real runtime: `hierfl launch` with it against without, in one run.

    python benchmarks/privacy_runtime.py                      # 1 plant x 8 devices, digits' default model, 4 cloud rounds
    python benchmarks/privacy_runtime.py --devices 4 --rounds 3 --model cnn --json out.json

`benchmarks/privacy.py` times the SecAgg protocol in one process; this runs every node as
its own process on loopback (ipc://), so the numbers include the extra message round
trips of the four phases, the edge's waiting and each device's crypto. For each of the
two topologies (the same but for `[privacy] secure_aggregation`) it reports:

- seconds per round: the median of the cloud's `round_seconds` (model out -> new model),
- bytes per device per edge round: what crossed each plant's device socket, both ways,
  summed from the edges' logs ("edge round r.e closed: ... X bytes from devices, Y to
  them"; every message counted: model, secagg steps, hellos and heartbeats).

`measure_launch(topology_file, run_dir)` is the building block (`benchmarks/privacy.py`
or another script can call it on any topology). The last stdout line is the whole
result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import statistics
import tempfile
from typing import Any

from rich.console import Console
from rich.table import Table

from hierfl.loading import load_topology
from hierfl.runtime.launch import Launch

TRAFFIC = re.compile(r"edge round \d+\.\d+ closed: .*; (\d+) bytes from devices, (\d+) to them")

TOPOLOGY = """
[federation]
name = "privacy-runtime"
task = "digits"
{model}cloud_rounds = {rounds}
edge_rounds = 2
local_steps = 5
batch_size = 16
learning_rate = 0.1
seed = 0

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
device_deadline = 60.0
heartbeat_interval = 1.0
heartbeat_timeout = 60.0
start_timeout = 300.0

[privacy]
secure_aggregation = {secure}

[[plants]]
name = "plant-a"
address = "ipc://{dir}/a.ipc"
[[plants.lines]]
name = "line-1"
devices = {devices}
"""


def write_topology(folder: pathlib.Path, *, devices: int, rounds: int, secure: bool, model: str | None = None) -> pathlib.Path:
    """One plant of `devices` devices on the digits task (`model`, default the task's), sockets in `folder`."""
    path = folder / ("secure.toml" if secure else "plain.toml")
    line = f'model = "{model}"\n' if model else ""
    path.write_text(TOPOLOGY.format(dir=folder, devices=devices, rounds=rounds, secure=str(secure).lower(), model=line))
    return path


def measure_launch(topology_file: pathlib.Path, run_dir: pathlib.Path) -> dict[str, Any]:
    """Launches `topology_file` to the end: `{seconds_per_round, bytes_per_device_round, from_devices, to_devices, rounds}`.

    Bytes are per device per edge round (mean over every edge round of every plant);
    seconds per round the median of the cloud's `round_seconds`.
    """
    topology = load_topology(topology_file)
    launch = Launch(topology, str(topology_file), run_dir)
    launch.start()
    try:
        history = launch.wait()
    finally:
        launch.stop(grace=0)
    received = sent = edge_rounds = 0
    for plant in topology.plants:
        for match in TRAFFIC.finditer((run_dir / "logs" / f"edge-{plant.name}.log").read_text()):
            received, sent, edge_rounds = received + int(match[1]), sent + int(match[2]), edge_rounds + plant.num_devices
    return {
        "seconds_per_round": statistics.median(r["round_seconds"] for r in history),
        "bytes_per_device_round": (received + sent) / edge_rounds,
        "from_devices": received / edge_rounds,
        "to_devices": sent / edge_rounds,
        "rounds": len(history),
        "accuracy": history[-1]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", help="a model of the digits task (default: its default model, mlp)")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="hfl-bench-", dir="/tmp"))  # short: ipc:// paths are limited
    try:
        result = {
            name: measure_launch(write_topology(folder, devices=args.devices, rounds=args.rounds, secure=secure, model=args.model),
                                 folder / name)
            for name, secure in (("plain", False), ("secure", True))
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    plain, secure = result["plain"], result["secure"]
    model = args.model or "default model"
    table = Table(title=f"hierfl launch, 1 plant x {args.devices} devices, digits ({model}), {args.rounds} cloud rounds x 2 edge rounds")
    for column in ("", "s / round", "bytes / device / edge round", "from device", "to device", "accuracy"):
        table.add_column(column, justify="right")
    for name, row in result.items():
        table.add_row(name, f"{row['seconds_per_round']:.3f}", f"{row['bytes_per_device_round']:.0f}", f"{row['from_devices']:.0f}",
                      f"{row['to_devices']:.0f}", f"{row['accuracy']:.4f}")
    table.add_row("secure / plain", f"{secure['seconds_per_round'] / plain['seconds_per_round']:.2f}",
                  f"{secure['bytes_per_device_round'] / plain['bytes_per_device_round']:.2f}",
                  f"{secure['from_devices'] / plain['from_devices']:.2f}", f"{secure['to_devices'] / plain['to_devices']:.2f}", "")
    Console(width=160).print(table)
    text = json.dumps({"devices": args.devices, "rounds": args.rounds, "model": args.model, **result})
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
