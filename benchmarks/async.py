"""Buffered asynchronous aggregation (FedBuff) against synchronous cloud rounds, one plant 5x slower.

    python benchmarks/async.py                   # writes docs/async.md
    python benchmarks/async.py --rounds 10 --out /tmp/async.md

A digits federation of four plants (four devices each, label skew), every plant's link to
the cloud 50 ms and 1 MB/s; plant-d's devices take 5x as long per local step as the others'.
Simulator runs of the same seed: synchronous HierFAVG for `--rounds` cloud rounds (each waits
for plant-d), then buffered aggregation with buffer sizes 3 and 2 (staleness weight
`(1 + s) ** -0.5`), each given the same simulated time as the synchronous run; then the same
with every plant as fast (where buffering has no straggler to hide). Per run: simulated
seconds (from the declared speeds, `hierfl.core.speeds`), model versions and edge -> cloud
bytes until the global test accuracy first reaches each target, the final accuracy, and the
totals. Real wall-clock through `hierfl launch` is not measured here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from hierfl.core import buffered, links, speeds
from hierfl.data.plan import make_plan
from hierfl.sim.engine import init_global_model, simulate
from hierfl.topology import parse_topology

PLANT = """
[[plants]]
name = "plant-{name}"
address = "tcp://127.0.0.1:{port}"
seconds_per_step = {seconds}
latency = 0.05
bandwidth = 1_000_000
[[plants.lines]]
name = "line-1"
devices = 4
"""

HEAD = """
[federation]
name = "async"
task = "digits"
model = "mlp"
cloud_rounds = {rounds}
edge_rounds = 2
local_steps = 5
batch_size = 16
learning_rate = 0.1
seed = 0

[data]
partition = "dirichlet"
alpha = 0.5

[cloud]
address = "tcp://127.0.0.1:7000"
"""

BUFFERED = """
[buffered_aggregation]
buffer_size = {size}
staleness = "polynomial"
staleness_exponent = 0.5
"""

STEP_SECONDS, SLOW = 0.02, 5.0
LAUNCH_STEP_SECONDS = 0.3
"""Per local step under `--launch`: long enough that the declared pace, not this machine's
CPU, sets each plant's cycle."""

INTRO = """# Buffered asynchronous aggregation against synchronous rounds

Made by `benchmarks/async.py` (simulator, digits, seed 0). Four plants of four devices
(Dirichlet label skew, alpha 0.5), 2 edge rounds of 5 local steps per summary, every link
50 ms and 1 MB/s; plant-d's devices take 5x as long per local step. Simulated seconds per
plant cycle (model down, edge rounds, summary up), plants a-d: {cycles}. `sync` runs
{rounds} cloud rounds, each waiting for plant-d; each buffered run (staleness weight
`(1 + s) ** -0.5`, server SGD at rate 1) gets the same simulated time. "Versions" are cloud
rounds for `sync` and buffer applications for the buffered runs. Each target cell gives
the simulated seconds, the versions and the edge → cloud megabytes until the global test
accuracy first reached it.

"""


def topology_text(
    rounds: int, buffer_size: int | None, slow: float = SLOW, step: float = STEP_SECONDS
) -> str:
    """Four plants, plant-d `slow` times slower per local step of `step` seconds; buffered if
    `buffer_size`."""
    text = HEAD.format(rounds=rounds)
    for i, name in enumerate("abcd"):
        seconds = step * (slow if name == "d" else 1.0)
        text += PLANT.format(name=name, port=7100 + i, seconds=seconds)
    if buffer_size is not None:
        text += BUFFERED.format(size=buffer_size)
    return text


def plant_cycles(topology) -> list[float]:
    """Each plant's simulated seconds per cycle, as the simulator computes them."""
    _, params = init_global_model(make_plan(topology))
    size = sum(leaf.size for leaf in jax.tree.leaves(params))
    codecs = links.build_link_codecs(topology.compression, size)
    return list(speeds.topology_cycle_seconds(topology, codecs, 4 * size, variates=False))


def applications_within(topology, seconds: float) -> int:
    """How many times the buffer is applied by simulated time `seconds` (the schedule alone)."""
    required = buffered.required_plants(
        topology.runtime.min_edge_participation, len(topology.plants)
    )
    held, applied = [], 0
    arrivals = buffered.arrivals(plant_cycles(topology))
    for arrival in itertools.takewhile(lambda a: a.seconds <= seconds, arrivals):
        held.append(arrival.plant)
        if buffered.should_apply(held, topology.buffered.buffer_size, required):
            held, applied = [], applied + 1
    return applied


def first_reaching(history: list[dict], target: float) -> dict | None:
    """The first record whose accuracy reaches `target`, or None."""
    return next((r for r in history if r["accuracy"] >= target), None)


def bytes_until(history: list[dict], last_round: int | None) -> int:
    return sum(
        r["bytes"]["edge_to_cloud"]
        for r in history
        if last_round is None or r["round"] <= last_round
    )


def reached_text(history: list[dict], target: float) -> str:
    """`sim. s / versions / edge->cloud MB` until `target` is first reached, or "not reached"."""
    reached = first_reaching(history, target)
    if reached is None:
        return "not reached"
    megabytes = bytes_until(history, reached["round"]) / 1e6
    return f"{reached['sim_seconds']:.1f} s / {reached['round']} / {megabytes:.2f} MB"


def row(name: str, history: list[dict], targets: list[float], seconds: float) -> list[str]:
    last = history[-1]
    return [
        name,
        *(reached_text(history, t) for t in targets),
        f"{last['accuracy']:.3f}",
        f"{last['plant_accuracy']['plant-d']:.3f}",
        f"{last['sim_seconds']:.1f}",
        str(last["round"]),
        f"{bytes_until(history, None) / 1e6:.2f}",
        f"{seconds:.0f}",
    ]


def table(rows: list[list[str]], targets: list[float]) -> str:
    header = [
        "cloud",
        *(f"to accuracy {t:.2f}: sim. s / versions / edge→cloud MB" for t in targets),
        "final accuracy",
        "final plant-d accuracy",
        "sim. s in all",
        "versions in all",
        "edge→cloud MB in all",
        "real s (simulator)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def findings(histories: dict[str, list[dict]], targets: list[float]) -> str:
    """Each buffered run against sync, in sentences: time and bytes to each target."""
    sync, lines = histories["sync"], []
    for name, history in histories.items():
        if name == "sync":
            continue
        for target in targets:
            mine, theirs = first_reaching(history, target), first_reaching(sync, target)
            if mine is None or theirs is None:
                lines.append(f"- {name}, accuracy {target:.2f}: not reached by both.")
                continue
            ratio = theirs["sim_seconds"] / mine["sim_seconds"]
            mine_mb = bytes_until(history, mine["round"]) / 1e6
            theirs_mb = bytes_until(sync, theirs["round"]) / 1e6
            lines.append(
                f"- {name}, accuracy {target:.2f}: {mine['sim_seconds']:.1f} s against sync's "
                f"{theirs['sim_seconds']:.1f} s ({ratio:.2f}x), {mine_mb:.2f} MB edge→cloud "
                f"against {theirs_mb:.2f} MB."
            )
        total, sync_total = bytes_until(history, None), bytes_until(sync, None)
        lines.append(
            f"- {name}, over the whole run: {total / sync_total:.2f}x sync's edge→cloud bytes and "
            f"{history[-1]['round']} versions against {sync[-1]['round']} (in the runtime each "
            "one is checkpointed and scored by every plant)."
        )
    return "\n".join(lines) + "\n"


def scenario(args, slow: float) -> tuple[str, list[float]]:
    """The table of sync and each buffer size on plants where plant-d is `slow` times slower."""
    rows, histories = [], {}
    started = time.perf_counter()
    sync_topology = parse_topology(topology_text(args.rounds, None, slow), "sync.toml")
    sync = histories["sync"] = simulate(sync_topology).history
    rows.append(row("sync", sync, args.targets, time.perf_counter() - started))
    budget = sync[-1]["sim_seconds"]
    for size in args.sizes:
        topology = parse_topology(topology_text(args.rounds, size, slow), "buffered.toml")
        applies = applications_within(topology, budget)
        started = time.perf_counter()
        history = histories[f"buffered K={size}"] = simulate(topology, rounds=applies).history
        rows.append(row(f"buffered K={size}", history, args.targets, time.perf_counter() - started))
    text = table(rows, args.targets) + "\n" + findings(histories, args.targets)
    return text, plant_cycles(sync_topology)


LAUNCH_MARKER = "## Real wall-clock through `hierfl launch --emulate-speeds`"


def launched(text: str, folder: Path, name: str) -> list[dict]:
    """The metrics records of `hierfl launch --emulate-speeds` of topology `text` (ipc:// in `folder`)."""
    text = text.replace("tcp://127.0.0.1:7000", f"ipc://{folder}/cloud.ipc")
    for i in range(4):
        text = text.replace(f"tcp://127.0.0.1:{7100 + i}", f"ipc://{folder}/{i}.ipc")
    text = text.replace("[cloud]", "[runtime]\nheartbeat_timeout = 30.0\n\n[cloud]")
    path, out = folder / f"{name}.toml", folder / name
    path.write_text(text)
    command = [sys.executable, "-m", "hierfl", "launch", str(path), "--out", str(out)]
    subprocess.run([*command, "--quiet", "--emulate-speeds"], check=True, capture_output=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def launch_section(args) -> str:
    """Sync and a buffer of 3 through `hierfl launch`, each edge holding its summary until its
    plant's declared cycle time: real seconds (`elapsed_seconds`) to each target."""
    rows, histories = [], {}
    with tempfile.TemporaryDirectory(prefix="hfl-async-", dir="/tmp") as tmp:
        folder = Path(tmp)
        slow_text = topology_text(args.launch_rounds, None, SLOW, LAUNCH_STEP_SECONDS)
        started = time.perf_counter()
        sync = histories["sync"] = launched(slow_text, folder, "sync")
        rows.append(launch_row("sync", sync, args.targets, time.perf_counter() - started))
        topology = parse_topology(
            topology_text(args.launch_rounds, 3, SLOW, LAUNCH_STEP_SECONDS), "b.toml"
        )
        simulated = applications_within(topology, sync[-1]["round"] * max(plant_cycles(topology)))
        text = topology_text(simulated, 3, SLOW, LAUNCH_STEP_SECONDS)
        started = time.perf_counter()
        mine = histories["buffered K=3"] = launched(text, folder, "buffered")
        rows.append(launch_row("buffered K=3", mine, args.targets, time.perf_counter() - started))
    header = [
        "cloud",
        *(f"real s to accuracy {t:.2f} (versions)" for t in args.targets),
        "final accuracy",
        "versions",
        "real s in all",
        "edge→cloud MB in all",
        "launch s (with start-up)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    load = Path("/proc/loadavg").read_text().split()[0]
    return (
        f"{LAUNCH_MARKER}\n\nThe same federation with seconds_per_step {LAUNCH_STEP_SECONDS} "
        f"(plant-d {LAUNCH_STEP_SECONDS * SLOW}), every node a process on this machine; each edge "
        "holds its summary until its plant's declared cycle has passed since its model came "
        f"(`--emulate-speeds`). Sync: {args.launch_rounds} rounds; buffered: the versions the "
        "schedule makes in the same simulated time. Real seconds from when the cloud sent the "
        "first models (the processes' start-up, minutes on a loaded machine, left out; it is "
        "in the last column).\n\n"
        + "\n".join(lines)
        + f"\n\nMeasured with `python benchmarks/async.py --launch` (load average {load} at the end).\n"
    )


def training_seconds(history: list[dict], record: dict) -> float:
    """Real seconds from when the first models went out (the first record's start: the wait
    for every node to start is left out) to `record`."""
    first = history[0]
    return record["elapsed_seconds"] - (first["elapsed_seconds"] - first["round_seconds"])


def launch_row(name: str, history: list[dict], targets: list[float], seconds: float) -> list[str]:
    def reached(target: float) -> str:
        record = first_reaching(history, target)
        if record is None:
            return "not reached"
        return f"{training_seconds(history, record):.0f} ({record['round']})"

    last = history[-1]
    return [
        name,
        *(reached(t) for t in targets),
        f"{last['accuracy']:.3f}",
        str(last["round"]),
        f"{training_seconds(history, last):.0f}",
        f"{bytes_until(history, None) / 1e6:.2f}",
        f"{seconds:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="synchronous cloud rounds")
    parser.add_argument(
        "--targets", type=float, nargs="*", default=[0.85, 0.9], help="test accuracies to reach"
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[3, 2], help="buffer sizes")
    parser.add_argument("--out", type=Path, default=Path("docs/async.md"))
    parser.add_argument(
        "--launch",
        action="store_true",
        help="measure real wall-clock through `hierfl launch --emulate-speeds` instead, and "
        "put that section into --out",
    )
    parser.add_argument("--launch-rounds", type=int, default=6, help="synchronous rounds launched")
    args = parser.parse_args()
    if args.launch:
        section = launch_section(args)
        print(section)
        kept = args.out.read_text().split(LAUNCH_MARKER)[0] if args.out.exists() else ""
        args.out.write_text(kept.rstrip() + "\n\n" + section)
        return
    slow_table, cycles = scenario(args, SLOW)
    equal_table, equal_cycles = scenario(args, 1.0)
    load = Path("/proc/loadavg").read_text().split()[0]
    text = (
        INTRO.format(rounds=args.rounds, cycles=", ".join(f"{c:.2f}" for c in cycles))
        + "## plant-d 5x slower per local step\n\n"
        + slow_table
        + "\n## Every plant as fast (no straggler)\n\n"
        + f"Cycles of {equal_cycles[0]:.2f} s for every plant.\n\n"
        + equal_table
        + f"\nMeasured with `python benchmarks/async.py` (load average {load} at the end; "
        "the real seconds are the simulator's, on a shared 2-core machine).\n"
    )
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
