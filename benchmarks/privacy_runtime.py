"""What the cryptographic protections cost the real runtime: `hierfl launch` with each, against plain, in one run.

    python benchmarks/privacy_runtime.py                 # 2 plants x 4 devices, digits MLP, 4 cloud rounds each
    python benchmarks/privacy_runtime.py --rounds 6 --model cnn --json out.json

`benchmarks/privacy.py` times SecAgg and CKKS in one process; this launches one topology
(every node its own process on loopback ipc:// sockets, devices in their own processes)
four times, differing only in `[privacy]`: plain, `secure_aggregation` (the edge sees only
its devices' sum), `homomorphic` (the cloud sees only CKKS ciphertexts), and both. Per
cloud round, in the steady state (rounds 2..R: round 1 compiles, and under CKKS carries no
aggregate down):

- seconds per round, from the cloud's `elapsed_seconds` between records;
- bytes per device per edge round, both ways over each plant's device socket (every
  message counted: model, secure-aggregation steps, hellos, heartbeats), from the edges'
  logs ("edge round r.e closed: ... X bytes from devices, Y to them");
- payload bytes edges -> cloud and cloud -> edges (float32 summaries and models, or
  ciphertexts), from the cloud's records.

`measure_launch(topology_file, run_dir)` measures any topology; `compare_protections` is
what `benchmarks/privacy.py` calls. The last stdout line is the whole result as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import tempfile
from typing import Any

from rich.console import Console
from rich.table import Table

from hierfl.data.loading import load_topology
from hierfl.runtime.launch import Launch

TRAFFIC = re.compile(r"edge round (\d+)\.\d+ closed: .*; (\d+) bytes from devices, (\d+) to them")

TOPOLOGY = """
[federation]
name = "privacy-runtime-{name}"
task = "digits"
model = "{model}"
cloud_rounds = {rounds}
edge_rounds = 2
local_steps = 5
batch_size = 16
learning_rate = 0.1
seed = 0

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
devices_per_process = 1
device_deadline = 120.0
edge_deadline = 300.0
heartbeat_interval = 1.0
heartbeat_timeout = 60.0
start_timeout = 300.0

[privacy]
secure_aggregation = {secure}
homomorphic = {homomorphic}

[[plants]]
name = "plant-a"
address = "ipc://{dir}/a.ipc"
[[plants.lines]]
name = "line-1"
devices = {devices}

[[plants]]
name = "plant-b"
address = "ipc://{dir}/b.ipc"
[[plants.lines]]
name = "line-1"
devices = {devices}
"""

PROTECTIONS = {
    "plain": (False, False),
    "secure_aggregation": (True, False),
    "homomorphic": (False, True),
    "both": (True, True),
}
"""Name -> (secure_aggregation, homomorphic)."""


def measure_launch(topology_file: pathlib.Path, run_dir: pathlib.Path) -> dict[str, Any]:
    """Launches `topology_file` to the end and measures its steady rounds (2..R); see the module docstring."""
    topology = load_topology(topology_file)
    launch = Launch(topology, str(topology_file), run_dir)
    launch.start()
    try:
        history = launch.wait()
    finally:
        launch.stop(grace=0)
    steady = [r for r in history if r["round"] >= 2]
    if len(history) < 2 or len(steady) != len(history) - 1:
        raise RuntimeError(
            f"{topology_file.name}: the launch wrote rounds {[r['round'] for r in history]}; need 1..R with R >= 2"
        )
    received = sent = updates = 0
    for plant in topology.plants:
        for match in TRAFFIC.finditer((run_dir / "logs" / f"edge-{plant.name}.log").read_text()):
            if int(match[1]) >= 2:
                received, sent, updates = (
                    received + int(match[2]),
                    sent + int(match[3]),
                    updates + plant.num_devices,
                )
    return {
        "seconds_per_round": (steady[-1]["elapsed_seconds"] - history[0]["elapsed_seconds"])
        / len(steady),
        "device_bytes": (received + sent) / max(updates, 1),
        "edge_to_cloud_bytes": sum(r["bytes"]["edge_to_cloud"] for r in steady) / len(steady),
        "cloud_to_edge_bytes": sum(r["bytes"]["cloud_to_edge"] for r in steady) / len(steady),
        "accuracy": history[-1]["accuracy"],
        "rounds": len(history),
    }


def compare_protections(
    *, devices: int = 4, rounds: int = 4, model: str = "mlp"
) -> dict[str, dict[str, Any]]:
    """`measure_launch` of the same federation under each of `PROTECTIONS`, in this run."""
    folder = pathlib.Path(
        tempfile.mkdtemp(prefix="hfl-bench-", dir="/tmp")
    )  # short: ipc:// paths are limited
    try:
        results = {}
        for name, (secure, homomorphic) in PROTECTIONS.items():
            path = folder / f"{name}.toml"
            path.write_text(
                TOPOLOGY.format(
                    name=name.replace("_", "-"),
                    dir=folder,
                    devices=devices,
                    rounds=rounds,
                    model=model,
                    secure=str(secure).lower(),
                    homomorphic=str(homomorphic).lower(),
                )
            )
            results[name] = measure_launch(path, folder / name)
        return results
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def protections_table(results: dict[str, dict[str, Any]], title: str) -> Table:
    """Each protection's figures and their ratio to plain's."""
    plain = results["plain"]
    table = Table(title=title)
    for column in (
        "",
        "s / round",
        "x plain",
        "device KB / edge round",
        "x plain",
        "up KB / round",
        "x plain",
        "down KB / round",
        "x plain",
        "accuracy",
    ):
        table.add_column(column, justify="right")
    for name, row in results.items():
        cells = [name]
        for key, scale in (
            ("seconds_per_round", 1.0),
            ("device_bytes", 1e-3),
            ("edge_to_cloud_bytes", 1e-3),
            ("cloud_to_edge_bytes", 1e-3),
        ):
            cells += [
                f"{row[key] * scale:.3f}"
                if key == "seconds_per_round"
                else f"{row[key] * scale:.1f}",
                f"{row[key] / plain[key]:.2f}",
            ]
        table.add_row(*cells, f"{row['accuracy']:.4f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=4, help="devices per plant (2 plants)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="cloud rounds per launch (round 1 is not measured)"
    )
    parser.add_argument("--model", default="mlp", help="a model of the digits task")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    results = compare_protections(devices=args.devices, rounds=args.rounds, model=args.model)
    title = (
        f"hierfl launch, 2 plants x {args.devices} devices, digits {args.model}, "
        f"per cloud round of 2 edge rounds (rounds 2..{args.rounds})"
    )
    Console(width=180).print(protections_table(results, title))
    text = json.dumps(
        {"devices": args.devices, "rounds": args.rounds, "model": args.model, **results}
    )
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
