"""What CKKS summaries cost the distributed runtime: `hierfl launch` with and without `homomorphic`, in one run.

    python benchmarks/privacy_runtime_he.py              # 2 plants x 2 devices, digits MLP (9,610 params), 4 rounds
    python benchmarks/privacy_runtime_he.py --rounds 6 --json out.json

Both runs launch the same topology (every node its own process, ipc:// sockets on this
machine; edge_rounds = 2, 3 local steps) and differ only in `[privacy] homomorphic`.
Reported per cloud round, in the steady state (rounds 2..R: round 1 compiles, and under
HE sends no aggregate down): wall seconds per round (from the cloud's `elapsed_seconds`),
payload bytes edge -> cloud (all edges' summaries: float32, or CKKS ciphertexts) and
cloud -> edge (the global model, or the encrypted aggregate, times the edges it went to).
Headers and heartbeats are not counted. `launch_costs(homomorphic=...)` is the function to
call from other benchmarks (e.g. `benchmarks/privacy.py`); the last stdout line is the JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile
from typing import Any

from rich.console import Console
from rich.table import Table

from hierfl.loading import load_topology
from hierfl.runtime.launch import Launch

TOPOLOGY = """
[federation]
name = "{name}"
task = "digits"
model = "mlp"
cloud_rounds = {rounds}
edge_rounds = 2
local_steps = 3
batch_size = 16
learning_rate = 0.1
seed = 7

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
heartbeat_interval = 0.3
heartbeat_timeout = 30.0
{privacy}

[[plants]]
name = "plant-a"
address = "ipc://{dir}/a.ipc"
[[plants.lines]]
name = "line-1"
devices = 2

[[plants]]
name = "plant-b"
address = "ipc://{dir}/b.ipc"
[[plants.lines]]
name = "line-1"
devices = 2
"""


def launch_costs(*, homomorphic: bool, rounds: int = 4, topology_text: str = TOPOLOGY) -> dict[str, float]:
    """Launches the topology (`topology_text`, formatted with name, rounds, dir, privacy) and measures its rounds.

    Returns `{seconds_per_round, bytes_up, bytes_down}`: means over rounds 2..`rounds` of the
    wall time between round records and of the payload bytes edges -> cloud and cloud -> edges.
    """
    if rounds < 2:
        raise ValueError("need at least 2 rounds: round 1 is the warm-up")
    folder = pathlib.Path(tempfile.mkdtemp(prefix="hfl-bench-", dir="/tmp"))  # ipc:// paths must be short
    try:
        name = "he" if homomorphic else "plain"
        privacy = "\n[privacy]\nhomomorphic = true\n" if homomorphic else ""
        path = folder / f"{name}.toml"
        path.write_text(topology_text.format(name=name, rounds=rounds, dir=folder, privacy=privacy))
        launch = Launch(load_topology(path), str(path), folder / "run")
        launch.start()
        try:
            history = launch.wait()
        finally:
            launch.stop(grace=0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    steady = [r for r in history if r["round"] >= 2]
    if len(steady) != rounds - 1:
        raise RuntimeError(f"the {name} launch wrote {len(history)} of {rounds} round records")
    return {
        "seconds_per_round": (steady[-1]["elapsed_seconds"] - history[0]["elapsed_seconds"]) / len(steady),
        "bytes_up": sum(r["bytes"]["edge_to_cloud"] for r in steady) / len(steady),
        "bytes_down": sum(r["bytes"]["cloud_to_edge"] for r in steady) / len(steady),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "plain": launch_costs(homomorphic=False, rounds=args.rounds),
        "homomorphic": launch_costs(homomorphic=True, rounds=args.rounds),
    }
    plain, he = result["plain"], result["homomorphic"]
    table = Table(title="hierfl launch, 2 plants x 2 devices, digits MLP: per cloud round (rounds 2..R)")
    for column in ("", "plain", "homomorphic", "x plain"):
        table.add_column(column, justify="right")
    for key, unit, scale in (("seconds_per_round", "s", 1.0), ("bytes_up", "KB", 1e-3), ("bytes_down", "KB", 1e-3)):
        table.add_row(f"{key} ({unit})", f"{plain[key] * scale:.3f}", f"{he[key] * scale:.3f}", f"{he[key] / plain[key]:.1f}")
    Console(width=120).print(table)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
