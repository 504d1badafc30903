"""Chaos: `hierfl launch` while random nodes are killed with SIGKILL and come back with `--resume`.

    python benchmarks/chaos.py                # 1,000 cloud rounds, a kill every 8 s
    python benchmarks/chaos.py --quick        # 300 rounds
    python benchmarks/chaos.py --rounds 200 --every 5 --seed 3 --json chaos.json

A small federation (digits MLP, 2 plants x 2 lines x 2 devices on ipc:// sockets;
`devices_per_process = 3`, so each plant has a device host of 3 devices and a
single-device process) trains `--rounds` cloud rounds with short deadlines and
participation floors of 0.5, so rounds go on while nodes are down. Every `--every`
seconds after the first round a node drawn by `random.Random(--seed)` (first its kind:
device process, device host, edge or the cloud; then one of that kind) is killed with
SIGKILL (the first half a period after the first round) and, `--pause`
seconds later, started again with its own command plus
`--resume` (the cloud with the same `--out`, an edge or device with its `--state`).
The run ends when the cloud exits after its last round (or at `--timeout`).

Printed: kills by kind, rounds completed, rounds recorded twice (must be 0) and rounds
missing in the cloud's `metrics.jsonl`, the accuracy of the last evaluated round (a round
whose edges were all down when the model came is recorded without one) against a clean
`hierfl.simulate` run of the same topology and seed measured in the same run, wall time
and the machine's load. `--json PATH` writes the result; the last stdout line is the
same JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random
import shutil
import signal
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from hierfl.data.loading import load_topology
from hierfl.runtime.launch import GRACE_SECONDS, Launch, read_new_records
from hierfl.sim.engine import simulate

KINDS = ("device", "devices", "edge", "cloud")
"""The kinds of node process a kill picks from: `hierfl device|devices|edge|cloud`."""

TOPOLOGY = """
[federation]
name = "chaos"
task = "digits"
model = "mlp"
cloud_rounds = {rounds}
edge_rounds = 2
local_steps = 3
batch_size = 16
learning_rate = 0.1
seed = {seed}

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
devices_per_process = 3
device_deadline = 3.0
edge_deadline = 8.0
min_device_participation = 0.5
min_edge_participation = 0.5
heartbeat_interval = 0.5
heartbeat_timeout = 3.0
start_timeout = 300.0
"""

PLANT = """
[[plants]]
name = "plant-{index}"
address = "ipc://{dir}/p{index}.ipc"
[[plants.lines]]
name = "line-1"
devices = 2
[[plants.lines]]
name = "line-2"
devices = 2
"""


def load_average() -> tuple[float, float, float]:
    return tuple(float(x) for x in pathlib.Path("/proc/loadavg").read_text().split()[:3])


def round_counts(records: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """How `records` (the cloud's `metrics.jsonl`) cover cloud rounds 1..`rounds`: the
    distinct rounds completed, the rounds recorded more than once, and the rounds missing."""
    counts = collections.Counter(record["round"] for record in records)
    return {
        "completed": len(counts),
        "duplicated": sorted(r for r, n in counts.items() if n > 1),
        "missing": [r for r in range(1, rounds + 1) if r not in counts],
    }


def node_kind(command: list[str]) -> str:
    """A node's kind from its command line (`python -m hierfl KIND ...`)."""
    return command[3]


def chaos(
    rounds: int,
    seed: int,
    every: float,
    pause: float,
    timeout: float,
    keep: bool,
    max_kills: int | None = None,
) -> dict[str, Any]:
    """Runs the clean reference, then the launch under kills; see the module docstring."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="hfl-chaos-", dir="/tmp"))  # short ipc:// paths
    try:
        path = folder / "chaos.toml"
        text = TOPOLOGY.format(rounds=rounds, seed=seed, dir=folder)
        path.write_text(text + "".join(PLANT.format(index=i, dir=folder) for i in range(2)))
        topology = load_topology(path)
        started = time.perf_counter()
        clean = simulate(topology).history[-1]["accuracy"]
        clean_seconds = time.perf_counter() - started

        run = folder / "run"
        launch = Launch(topology, str(path), run)
        commands = launch.node_commands()
        by_kind = {kind: [n for n, c in commands.items() if node_kind(c) == kind] for kind in KINDS}
        draw = random.Random(seed)
        kills: list[dict[str, Any]] = []
        failure = None
        load_before, started = load_average(), time.perf_counter()
        launch.start()
        try:
            failure, timed_out = drive(
                launch, commands, by_kind, draw, kills, every, pause, timeout, max_kills
            )
        finally:
            launch.stop(grace=0 if failure else GRACE_SECONDS)
        seconds, load_after = time.perf_counter() - started, load_average()
        records = read_new_records(run / "metrics.jsonl", 0)
        counts = round_counts(records, rounds)
        evaluated = [r for r in records if r["accuracy"] == r["accuracy"]]  # not NaN
        final = evaluated[-1]["accuracy"] if evaluated else None
        return {
            "rounds": rounds,
            "seed": seed,
            "every_seconds": every,
            "pause_seconds": pause,
            "kills": kills,
            "kills_by_kind": dict(collections.Counter(k["kind"] for k in kills)),
            "rounds_completed": counts["completed"],
            "rounds_recorded_twice": counts["duplicated"],
            "rounds_missing": counts["missing"],
            "accuracy": final,
            "accuracy_round": evaluated[-1]["round"] if evaluated else None,
            "clean_accuracy": clean,
            "accuracy_difference": None if final is None else final - clean,
            "clean_seconds": clean_seconds,
            "seconds": seconds,
            "timed_out": timed_out,
            "failure": failure,
            "load_before": load_before,
            "load_after": load_after,
            "cpus": os.cpu_count(),
            "kept": str(folder) if keep else None,
        }
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def drive(
    launch: Launch,
    commands: dict[str, list[str]],
    by_kind: dict[str, list[str]],
    draw: random.Random,
    kills: list[dict[str, Any]],
    every: float,
    pause: float,
    timeout: float,
    max_kills: int | None = None,
) -> tuple[str | None, bool]:
    """Kills and restarts nodes until the cloud exits on its own or `timeout` s pass.

    Returns the failure (a node, not just killed, that exited with an error: its name, status
    and log tail) or None, and whether the run timed out. `Launch.wait` is not used: it would
    take a killed node's status for a failure.
    """
    run = launch.run_dir
    deadline = time.monotonic() + timeout
    next_kill = None
    down: tuple[str, float] | None = None  # the killed node and when it restarts
    while time.monotonic() < deadline:
        now = time.monotonic()
        cloud = launch.processes["cloud"]
        if down is not None and now >= down[1]:
            name = down[0]
            if name == "cloud" or cloud.poll() != 0:  # no restart once the run is over
                launch.start_node(name, commands[name] + ["--resume"])
            down = None
        if down is None and cloud.poll() == 0:
            return None, False
        for name, process in launch.processes.items():
            status = process.poll()
            if status not in (None, 0) and (down is None or name != down[0]):
                return str(launch.failure(name)), False
        records = read_new_records(run / "metrics.jsonl", 0)
        if next_kill is None and records:
            next_kill = now + every / 2  # the first kill half a period into training
        more = max_kills is None or len(kills) < max_kills
        if (
            next_kill is not None
            and down is None
            and now >= next_kill
            and cloud.poll() is None
            and more
        ):
            kind = draw.choice([k for k in KINDS if by_kind[k]])
            name = draw.choice(by_kind[kind])
            process = launch.processes[name]
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                round_at = records[-1]["round"] if records else 0
                kills.append({"node": name, "kind": kind, "after_round": round_at})
                down = (name, now + pause)
            next_kill = now + every
        time.sleep(0.2)
    return None, True


def chaos_table(result: dict[str, Any]) -> Table:
    title = (
        f"hierfl launch under kill -9, 2 plants x 2 lines x 2 devices, {result['rounds']} cloud "
        f"rounds, a kill every {result['every_seconds']:.0f} s, seed {result['seed']}: "
        f"{result['seconds']:.0f} s (load {result['load_before'][0]:.1f} -> "
        f"{result['load_after'][0]:.1f} on {result['cpus']} CPUs)"
    )
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    kinds = result["kills_by_kind"]
    table.add_row("kills", str(len(result["kills"])))
    for kind in KINDS:
        table.add_row(f"  {kind}", str(kinds.get(kind, 0)))
    table.add_row("rounds completed", f"{result['rounds_completed']} / {result['rounds']}")
    twice = result["rounds_recorded_twice"]
    table.add_row("rounds recorded twice (must be 0)", f"{len(twice)} {twice or ''}")
    table.add_row("rounds missing", f"{len(result['rounds_missing'])}")
    if result["accuracy"] is not None:
        table.add_row(
            f"accuracy (last evaluated round, {result['accuracy_round']})",
            f"{result['accuracy']:.4f}",
        )
    table.add_row(
        "clean simulate accuracy (baseline)",
        f"{result['clean_accuracy']:.4f} ({result['clean_seconds']:.0f} s)",
    )
    if result["accuracy_difference"] is not None:
        table.add_row("difference", f"{result['accuracy_difference']:+.4f}")
    table.add_row("timed out", "yes" if result["timed_out"] else "no")
    table.add_row("node failure", "yes" if result["failure"] else "no")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000, help="cloud rounds (default 1,000)")
    parser.add_argument("--quick", action="store_true", help="300 rounds")
    parser.add_argument("--seed", type=int, default=0, help="the federation's and the kills' seed")
    parser.add_argument("--every", type=float, default=8.0, help="seconds between kills")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds a killed node stays down")
    parser.add_argument("--timeout", type=float, default=900.0, help="wall-clock cap in seconds")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs)")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    rounds = 300 if args.quick else args.rounds
    result = chaos(rounds, args.seed, args.every, args.pause, args.timeout, args.keep)
    Console(width=200).print(chaos_table(result))
    if result["failure"]:
        Console(width=200, stderr=True).print(result["failure"], markup=False)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
