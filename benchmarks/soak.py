"""Memory over a long run: `hierfl launch` of many short rounds, every node's resident memory sampled.

    python benchmarks/soak.py                 # 1,000 cloud rounds, 2 plants x 2 devices (about 2.5 minutes on 2 cores)
    python benchmarks/soak.py --quick         # 100 rounds (about 45 s, mostly start-up)
    python benchmarks/soak.py --rounds 5000 --json soak.json

One tiny federation (digits MLP, one edge round of one local step per cloud round, each
plant's devices in one process) trains `--rounds` cloud rounds; every `--interval`
seconds (0.25) the resident memory of every node process (cloud, edges, device hosts) is read from
`/proc/<pid>/status` with the round the run is at. Per process the table gives the
memory after warm-up (the median over the `--window` rounds after the first
`--warmup`), at the end (the median over the last `--window` rounds), the growth
between them, the trend (a least-squares line through every sample after warm-up,
in MB per 1,000 rounds), the peak (VmHWM), and whether the growth meets issue 16's
target: under 5% after warm-up. The baseline is each process's own memory after
warm-up, measured in the same run. `--json PATH` writes the result; the last stdout
line is the same JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from hierfl.data.loading import load_topology
from hierfl.runtime.launch import Launch

TARGET = 0.05
"""Issue 16: a node's resident memory grows by less than 5% after warm-up."""

TOPOLOGY = """
[federation]
name = "soak"
task = "digits"
model = "mlp"
cloud_rounds = {rounds}
edge_rounds = 1
local_steps = 1
batch_size = 16
learning_rate = 0.1
seed = 0

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
devices_per_process = "plant"
device_deadline = 60.0
edge_deadline = 120.0
heartbeat_interval = 1.0
heartbeat_timeout = 60.0
start_timeout = 300.0
"""

PLANT = """
[[plants]]
name = "plant-{index}"
address = "ipc://{dir}/p{index}.ipc"
[[plants.lines]]
name = "line-1"
devices = {devices}
"""


def memory_kb(pid: int) -> dict[str, int] | None:
    """A process's `VmRSS`, `RssAnon` and `VmHWM` (peak RSS) in kB, from `/proc/<pid>/status`;
    None once it has exited."""
    try:
        text = pathlib.Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "VmHWM")}
    except KeyError:  # a zombie has no memory lines
        return None


def load_average() -> tuple[float, float, float]:
    return tuple(float(x) for x in pathlib.Path("/proc/loadavg").read_text().split()[:3])


def growth(
    samples: list[tuple[int, int]], warmup: int, window: int, rounds: int
) -> dict[str, float]:
    """Figures of one process's `(round, kB)` samples: medians after warm-up (rounds
    `[warmup, warmup + window)`) and at the end (`[rounds - window, rounds]`), their relative
    growth, and the least-squares trend of every sample from `warmup` on in kB per round."""
    after = [kb for r, kb in samples if r >= warmup]
    start = [kb for r, kb in samples if warmup <= r < warmup + window]
    end = [kb for r, kb in samples if r >= rounds - window]
    if not start or not end or len(after) < 2:
        raise ValueError(f"too few samples ({len(samples)}) for warm-up {warmup}, window {window}")
    first, last = statistics.median(start), statistics.median(end)
    points = np.array([(r, kb) for r, kb in samples if r >= warmup], float)
    slope = float(np.polyfit(points[:, 0], points[:, 1], 1)[0]) if np.ptp(points[:, 0]) else 0.0
    return {"start_kb": first, "end_kb": last, "growth": last / first - 1, "kb_per_round": slope}


def soak(
    rounds: int, plants: int, devices: int, warmup: int, window: int, interval: float
) -> dict[str, Any]:
    """Launches the federation for `rounds` rounds and samples its nodes' memory; see the module docstring."""
    folder = pathlib.Path(
        tempfile.mkdtemp(prefix="hfl-soak-", dir="/tmp")
    )  # ipc:// paths are short
    try:
        path = folder / "soak.toml"
        text = TOPOLOGY.format(rounds=rounds, dir=folder)
        text += "".join(PLANT.format(index=i, dir=folder, devices=devices) for i in range(plants))
        path.write_text(text)
        launch = Launch(load_topology(path), str(path), folder / "run")
        samples: dict[str, list[tuple[int, dict[str, int]]]] = {}
        peaks: dict[str, int] = {}
        at = {"round": 0, "sampled": 0.0}

        def sample(record: dict[str, Any]) -> None:
            at["round"] = record["round"]
            if time.monotonic() - at["sampled"] < interval:
                return
            at["sampled"] = time.monotonic()
            for name, process in launch.processes.items():
                memory = memory_kb(process.pid)
                if memory is not None:
                    samples.setdefault(name, []).append((record["round"], memory))
                    peaks[name] = max(peaks.get(name, 0), memory["VmHWM"])

        load_before, started = load_average(), time.perf_counter()
        launch.start()
        try:
            history = launch.wait(on_record=sample, poll=interval)
        finally:
            launch.stop(grace=0)
        seconds, load_after = time.perf_counter() - started, load_average()
        if [r["round"] for r in history] != list(range(1, rounds + 1)):
            raise RuntimeError(f"the launch wrote {len(history)} of {rounds} rounds")
        nodes = {}
        for name, points in samples.items():
            rss = growth([(r, m["VmRSS"]) for r, m in points], warmup, window, rounds)
            anon = growth([(r, m["RssAnon"]) for r, m in points], warmup, window, rounds)
            nodes[name] = {
                **rss,
                "anon_start_kb": anon["start_kb"],
                "anon_end_kb": anon["end_kb"],
                "anon_growth": anon["growth"],
                "peak_kb": peaks[name],
                "samples": len(points),
                "meets_target": rss["growth"] < TARGET,
            }
        return {
            "rounds": rounds,
            "plants": plants,
            "devices_per_plant": devices,
            "warmup_rounds": warmup,
            "window_rounds": window,
            "seconds": seconds,
            "rounds_per_second": rounds / seconds,
            "load_before": load_before,
            "load_after": load_after,
            "cpus": os.cpu_count(),
            "accuracy": history[-1]["accuracy"],
            "nodes": nodes,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def memory_table(result: dict[str, Any]) -> Table:
    """Each node's resident memory after warm-up and at the end, its growth and trend."""
    title = (
        f"hierfl launch, {result['plants']} plants x {result['devices_per_plant']} devices, "
        f"{result['rounds']} cloud rounds in {result['seconds']:.0f} s "
        f"(load {result['load_before'][0]:.1f} -> {result['load_after'][0]:.1f} "
        f"on {result['cpus']} CPUs): resident memory after round {result['warmup_rounds']} "
        f"and at the end (medians over {result['window_rounds']} rounds)"
    )
    table = Table(title=title)
    columns = ("node", "samples", "RSS after warm-up MB", "RSS at end MB", "growth")
    columns += ("MB / 1,000 rounds", "anon MB start -> end", "anon growth", "peak MB")
    for column in (*columns, f"< {TARGET:.0%}"):
        table.add_column(column, justify="right")
    for name, node in result["nodes"].items():
        table.add_row(
            name,
            str(node["samples"]),
            f"{node['start_kb'] / 1024:.1f}",
            f"{node['end_kb'] / 1024:.1f}",
            f"{node['growth']:+.2%}",
            f"{node['kb_per_round']:+.2f}",  # kB per round = MB per 1,000 rounds (1,024)
            f"{node['anon_start_kb'] / 1024:.1f} -> {node['anon_end_kb'] / 1024:.1f}",
            f"{node['anon_growth']:+.2%}",
            f"{node['peak_kb'] / 1024:.1f}",
            "yes" if node["meets_target"] else "NO",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000, help="cloud rounds (default 1,000)")
    parser.add_argument("--quick", action="store_true", help="100 rounds")
    parser.add_argument("--plants", type=int, default=2)
    parser.add_argument("--devices", type=int, default=2, help="devices per plant")
    parser.add_argument(
        "--warmup", type=int, help="rounds before the baseline (default: a tenth, at least 10)"
    )
    parser.add_argument(
        "--window", type=int, help="rounds each median covers (default: a tenth, at least 10)"
    )
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    rounds = 100 if args.quick else args.rounds
    warmup = args.warmup if args.warmup is not None else max(10, rounds // 10)
    window = args.window if args.window is not None else max(10, rounds // 10)
    if warmup + window > rounds - window:
        parser.error(
            f"{rounds} rounds leave no room for warm-up {warmup} and two windows of {window}"
        )
    result = soak(rounds, args.plants, args.devices, warmup, window, args.interval)
    Console(width=200).print(memory_table(result))
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
