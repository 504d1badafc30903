"""Simulator throughput: hierfl's compiled cloud round against a per-device jitted loop.

    python benchmarks/simulate_throughput.py            # everything, about 4 minutes on 2 CPU cores
    python benchmarks/simulate_throughput.py --quick    # skips the 10,400-device run
    python benchmarks/simulate_throughput.py --json out.json

Three measurements, each printed as a table:

1. Workload W1: task `digits`, MLP 64-128-10, 100 devices in one plant, 20 local SGD steps
   of batch 32 at lr 0.1, FedAvg over all devices every round. hierfl is timed twice: as
   `simulate()` (its `round_seconds` include the test-set evaluation) and as the jitted
   `cloud_round` alone (training only, compiled ahead of time, `block_until_ready`). The
   baseline, in this file, is what one writes without hierfl: an MLP as explicit matmuls,
   a 20-step SGD loop jitted once and called per device from Python, and a numpy
   example-weighted average. Both train on the same shards (`make_plan(...).shards`) and
   take turns in blocks of rounds, so load from other processes hits both alike. Client
   updates/s = devices x edge_rounds / median round time after compilation; the headline
   ratio is hierfl's training-only round against the baseline's round.
2. Achieved GFLOP/s on W1 (analytic MLP FLOPs) as a fraction of this machine's float32
   matmul peak, measured in the same run (jitted 2048^3 matmul, best of several).
3. Scaling: the `large` preset (bearing-fault, 1,040 devices) and the same shape with 10x
   the devices per line (10,400), each in a fresh subprocess so peak RSS does not mix:
   plan (data generation) time, compile time, training time per cloud round (2 rounds for
   1,040 devices, 1 for 10,400), evaluation time, time per client update, peak RSS.

The last line of stdout is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from hierfl.sim.parallel import request_cpu_devices

request_cpu_devices()  # as the CLI does: before JAX starts, one host device per core

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
from rich.console import Console
from rich.table import Table

from hierfl.core.algorithms import ALGORITHMS
from hierfl.data.evaluation import make_evaluator
from hierfl.data.loading import load_topology
from hierfl.data.plan import Plan, make_plan
from hierfl.data.tasks import TASKS
from hierfl.sim.engine import DEFAULT_CHUNK_SIZE, Simulation, build_simulation, simulate
from hierfl.topology import Topology, parse_topology, preset_path

W1_TOML = """\
[federation]
name = "w1"
task = "digits"
model = "mlp"
algorithm = "fedavg"
cloud_rounds = 21
edge_rounds = 1
local_steps = 20
batch_size = 32
learning_rate = 0.1
seed = 0

[data]
partition = "iid"

[cloud]
address = "tcp://127.0.0.1:5550"

[[plants]]
name = "plant"
address = "tcp://127.0.0.1:5560"

[[plants.lines]]
name = "line"
devices = 100
"""

MLP_WIDTHS = (64, 128, 10)
TARGET_RATIO = 1.5
SCALE = 10
"""The scaled run has SCALE times the devices of every line of the `large` preset."""

# --- topologies ---------------------------------------------------------------------------


def load_topology_text(text: str, source: str) -> Topology:
    """TOML text validated as `hierfl.data.loading` validates a file: names checked against our registries."""
    return parse_topology(
        text, source, choices={"federation.task": TASKS, "federation.algorithm": ALGORITHMS}
    )


def w1_topology() -> Topology:
    return load_topology_text(W1_TOML, "<w1>")


def scaled_large_toml(scale: int) -> str:
    """The `large` preset's text with every line's device count multiplied by `scale`."""
    text = preset_path("large").read_text(encoding="utf-8")
    old, new = "devices = 26\n", f"devices = {26 * scale}\n"
    if text.count(old) != 40:
        raise RuntimeError(
            f"the large preset no longer has 40 lines of {old.strip()!r}; update scaled_large_toml"
        )
    return text.replace(old, new).replace('name = "large"', f'name = "large-x{scale}"')


# --- measurements -------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_before": os.getloadavg()[0],
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_peak(n: int = 2048, repeats: int = 7) -> dict[str, float]:
    """Best-of-`repeats` GFLOP/s of a jitted float32 `[n, n] @ [n, n]` (2 n^3 FLOPs), and its CPU/wall."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    runs = [timed(lambda: matmul(a, b).block_until_ready()) for _ in range(repeats)]
    best = min(wall for wall, _ in runs)
    return {
        "gflops": 2 * n**3 / best / 1e9,
        "cpu_per_wall": sum(c for _, c in runs) / sum(w for w, _ in runs),
    }


def mlp_flops_per_round(topology: Topology) -> float:
    """Training FLOPs of one cloud round of W1: forward 2 x multiply-adds, backward 2x forward."""
    f = topology.federation
    forward = 2 * sum(a * b for a, b in zip(MLP_WIDTHS[:-1], MLP_WIDTHS[1:]))
    return 3 * forward * f.batch_size * f.local_steps * f.edge_rounds * topology.num_devices


class Trainer(NamedTuple):
    """One way to train W1: `run_round(r)` trains cloud round r and blocks; `accuracy()` scores the model now."""

    compile_s: float
    run_round: Callable[[int], None]
    accuracy: Callable[[], float]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) taken by `fn()`."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


class CompiledRound(NamedTuple):
    """The simulator's parts for a plan, with its cloud round compiled ahead of time (as `simulate()` builds them)."""

    sim: Simulation
    cloud_round: Callable
    compile_s: float


def compile_cloud_round(plan: Plan, chunk_size: int) -> CompiledRound:
    sim = build_simulation(plan, chunk_size)
    start = time.perf_counter()
    compiled = sim.cloud_round.lower(sim.initial, sim.chunks, jnp.int32(1)).compile()
    return CompiledRound(sim, compiled, time.perf_counter() - start)


def hierfl_trainer(plan: Plan) -> Trainer:
    """The simulator's jitted cloud round alone: no evaluation, no metrics, nothing else per round."""
    parts = compile_cloud_round(plan, DEFAULT_CHUNK_SIZE)
    state = {"train": parts.sim.initial}

    def run_round(r: int) -> None:
        state["train"], _ = jax.block_until_ready(
            parts.cloud_round(state["train"], parts.sim.chunks, jnp.int32(r))
        )

    def accuracy() -> float:
        logits = np.asarray(jax.jit(parts.sim.model.apply)(state["train"].params, plan.test.x))
        return float(np.mean(np.argmax(logits, axis=-1) == plan.test.y))

    return Trainer(parts.compile_s, run_round, accuracy)


def baseline_trainer(plan: Plan) -> Trainer:
    """Plain JAX, no hierfl: an explicit MLP, local SGD jitted once and called per device, numpy averaging."""
    federation = plan.topology.federation
    steps, batch, lr = federation.local_steps, federation.batch_size, federation.learning_rate

    def forward(p, x):
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss_fn(p, x, y):
        log_probs = jax.nn.log_softmax(forward(p, x))
        return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))

    def local_train(p, x, y, count, cloud_round, device):
        key = jax.random.fold_in(
            jax.random.fold_in(jax.random.key(federation.seed), cloud_round), device
        )
        batches = jax.random.randint(key, (steps, batch), 0, count)

        def step(p, idx):
            grads = jax.grad(loss_fn)(p, x[idx], y[idx])
            return jax.tree.map(lambda w, g: w - lr * g, p, grads), None

        return jax.lax.scan(step, p, batches)[0]

    shards = plan.shards
    xs = [jax.device_put(x.reshape(x.shape[0], -1)) for x in shards.x]
    ys = [jax.device_put(y) for y in shards.y]
    counts = shards.counts.astype(np.int32)
    weights = counts / counts.sum()
    rng = np.random.default_rng(0)
    d_in, d_hidden, d_out = MLP_WIDTHS
    state = {
        "w1": (rng.standard_normal((d_in, d_hidden)) / np.sqrt(d_in)).astype(np.float32),
        "b1": np.zeros(d_hidden, np.float32),
        "w2": (rng.standard_normal((d_hidden, d_out)) / np.sqrt(d_hidden)).astype(np.float32),
        "b2": np.zeros(d_out, np.float32),
    }
    start = time.perf_counter()
    compiled = jax.jit(local_train).lower(state, xs[0], ys[0], counts[0], 0, 0).compile()
    compile_s = time.perf_counter() - start

    def run_round(r: int) -> None:
        global_params = jax.device_put(state)
        trained = [compiled(global_params, xs[d], ys[d], counts[d], r, d) for d in range(len(xs))]
        for k in state:
            state[k] = np.tensordot(
                weights, np.stack([np.asarray(t[k]) for t in trained]), axes=1
            ).astype(np.float32)

    def accuracy() -> float:
        x = plan.test.x.reshape(len(plan.test.y), -1)
        logits = np.maximum(x @ state["w1"] + state["b1"], 0) @ state["w2"] + state["b2"]
        return float(np.mean(np.argmax(logits, axis=-1) == plan.test.y))

    return Trainer(compile_s, run_round, accuracy)


def time_interleaved(
    trainers: dict[str, Trainer], blocks: int, block_rounds: int
) -> dict[str, dict[str, Any]]:
    """Round times of each trainer, taking turns block by block so background load hits all alike.

    Each block runs one untimed warm-up round and then `block_rounds` timed rounds of one
    trainer (the first round after a switch runs with cold caches); the order alternates.
    """
    names = list(trainers)
    walls: dict[str, list[float]] = {name: [] for name in names}
    round_numbers = itertools.count()
    for block in range(blocks):
        for name in names if block % 2 == 0 else reversed(names):
            trainers[name].run_round(next(round_numbers))
            for _ in range(block_rounds):
                walls[name].append(
                    timed(functools.partial(trainers[name].run_round, next(round_numbers)))[0]
                )
    return {
        name: {
            "compile_s": trainers[name].compile_s,
            "round_s": statistics.median(walls[name]),
            "round_seconds": walls[name],
            "accuracy": trainers[name].accuracy(),
        }
        for name in names
    }


def hierfl_simulate(topology: Topology, rounds: int) -> dict[str, Any]:
    """`simulate()` as a user calls it; its round times include the test-set evaluation.

    Compilation happens in round 1: compile_s is round 1 minus the median of the others.
    """
    result = simulate(topology, rounds=rounds)
    seconds = [h["round_seconds"] for h in result.history]
    steady = statistics.median(seconds[1:])
    return {
        "round_s": steady,
        "compile_s": seconds[0] - steady,
        "round_seconds": seconds,
        "accuracy": result.history[-1]["accuracy"],
    }


def measure_w1(blocks: int, block_rounds: int, progress: Console) -> dict[str, Any]:
    """W1 for hierfl (training only, and `simulate()`) and the baseline, with updates/s, GFLOP/s and the ratio."""
    topology = w1_topology()
    plan = make_plan(topology)
    progress.log("W1: compiling hierfl and the baseline")
    trainers = {"hierfl_training": hierfl_trainer(plan), "baseline": baseline_trainer(plan)}
    rounds = blocks * block_rounds
    progress.log(f"W1: {rounds} timed rounds each, in blocks of {block_rounds}, taking turns")
    w1: dict[str, Any] = {
        "devices": topology.num_devices,
        "rounds": rounds,
        "flops_per_round": mlp_flops_per_round(topology),
    }
    w1.update(time_interleaved(trainers, blocks, block_rounds))
    progress.log("W1: hierfl simulate()")
    w1["hierfl_simulate"] = hierfl_simulate(topology, rounds + 1)
    updates = topology.num_devices * topology.federation.edge_rounds
    for key in ("hierfl_training", "baseline", "hierfl_simulate"):
        w1[key]["updates_per_s"] = updates / w1[key]["round_s"]
        w1[key]["gflops"] = w1["flops_per_round"] / w1[key]["round_s"] / 1e9
    w1["ratio"] = w1["hierfl_training"]["updates_per_s"] / w1["baseline"]["updates_per_s"]
    w1["ratio_simulate"] = w1["hierfl_simulate"]["updates_per_s"] / w1["baseline"]["updates_per_s"]
    w1["target_ratio"] = TARGET_RATIO
    return w1


def scaling_run(name: str, timed_rounds: int, chunk_size: int) -> dict[str, Any]:
    """One scaling point, meant to run alone in a fresh process (see `--scaling-child`)."""
    topology = (
        load_topology("large")
        if name == "large"
        else load_topology_text(scaled_large_toml(SCALE), name)
    )
    federation = topology.federation
    start = time.perf_counter()
    plan = make_plan(topology)
    plan_s = time.perf_counter() - start
    parts = compile_cloud_round(plan, chunk_size)
    state, seconds = parts.sim.initial, []
    for r in range(1, timed_rounds + 1):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(parts.cloud_round(state, parts.sim.chunks, jnp.int32(r)))
        seconds.append(time.perf_counter() - start)
    evaluate = make_evaluator(parts.sim.model, plan.task, plan.test, plan.num_edges)
    evaluate(state.params)  # compiles
    start = time.perf_counter()
    scores = evaluate(state.params)
    eval_s = time.perf_counter() - start
    updates = topology.num_devices * federation.edge_rounds
    round_s = statistics.median(seconds)
    return {
        "name": name,
        "devices": topology.num_devices,
        "edge_rounds": federation.edge_rounds,
        "local_steps": federation.local_steps,
        "batch_size": federation.batch_size,
        "updates_per_round": updates,
        "device_slots": int(parts.sim.chunks.count.size),
        "chunk_size": chunk_size,
        "plan_s": plan_s,
        "compile_s": parts.compile_s,
        "round_seconds": seconds,
        "round_s": round_s,
        "eval_s": eval_s,
        "ms_per_update": 1e3 * round_s / updates,
        "updates_per_s": updates / round_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "accuracy": scores.score,
    }


def scaling_in_subprocess(
    name: str, timed_rounds: int, chunk_size: int, timeout_s: float
) -> dict[str, Any]:
    """Runs `scaling_run` in a fresh interpreter (so its peak RSS is its own) and returns its JSON."""
    command = [
        sys.executable,
        __file__,
        "--scaling-child",
        name,
        "--timed-rounds",
        str(timed_rounds),
        "--chunk-size",
        str(chunk_size),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        return {
            "name": name,
            "error": done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}",
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- output -------------------------------------------------------------------------------


def print_report(console: Console, result: dict[str, Any]) -> None:
    env, peak = result["environment"], result["peak"]
    table = Table(title="environment", show_header=False)
    for key in ("jax", "backend", "cpu_count", "cpus_usable", "cpu_model", "python", "xla_flags"):
        table.add_row(key, str(env[key]) or "-")
    table.add_row(
        "load average (1 min)",
        f"{env['load_before']:.2f} before the run, {result['load_after']:.2f} after (this run included)",
    )
    table.add_row(
        "matmul peak",
        f"{peak['gflops']:.1f} GFLOP/s (float32 2048^3, best of 7; cores busy {peak['cpu_per_wall']:.2f})",
    )
    console.print(table)
    if env["load_before"] > 0.5:
        console.print(
            "[yellow]other processes were using the CPU: absolute numbers are noisy; hierfl and the "
            "baseline take turns in blocks of rounds, so their ratio is fairer[/]"
        )

    w1 = result["w1"]
    table = Table(
        title=f"W1: digits MLP 64-128-10, {w1['devices']} devices, 20 steps x batch 32, FedAvg every round, {w1['rounds']} rounds"
    )
    for column in ("run", "compile s", "round ms", "updates/s", "GFLOP/s", "% peak", "test acc"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for key, label in (
        ("hierfl_training", "hierfl cloud_round, training only"),
        ("baseline", "plain JAX: jit per device, numpy avg"),
        ("hierfl_simulate", "hierfl simulate(), incl. evaluation"),
    ):
        row = w1[key]
        table.add_row(
            label,
            f"{row['compile_s']:.2f}",
            f"{1e3 * row['round_s']:.1f}",
            f"{row['updates_per_s']:,.0f}",
            f"{row['gflops']:.1f}",
            f"{100 * row['gflops'] / peak['gflops']:.0f}%",
            f"{row['accuracy']:.3f}",
        )
    console.print(table)
    console.print(
        "round ms: median of the timed rounds (each block of rounds starts with an untimed one); "
        "GFLOP/s from analytic FLOPs, 3 x 2 x (64*128 + 128*10) "
        f"per example-step = {w1['flops_per_round'] / 1e9:.2f} GFLOP per round; % peak of the matmul peak above"
    )
    ratio, ratio_sim = w1["ratio"], w1["ratio_simulate"]
    verdict = "[green]met[/]" if ratio >= TARGET_RATIO else "[red]missed[/]"
    console.print(
        f"[bold]hierfl / baseline (training only): {ratio:.2f}x[/]   target >= {TARGET_RATIO}x on a 2-core CPU: {verdict}"
        f"   (simulate() incl. evaluation / baseline: {ratio_sim:.2f}x)"
    )

    scaling = result["scaling"]
    if not scaling:
        return
    first = scaling[0]
    table = Table(
        title=f"scaling: bearing-fault, cnn1d, edge_rounds {first.get('edge_rounds', '?')}, "
        f"{first.get('local_steps', '?')} steps x batch {first.get('batch_size', '?')}; one fresh process per size"
    )
    for column in (
        "run",
        "devices",
        "slots",
        "updates/round",
        "plan s",
        "compile s",
        "round s",
        "eval s",
        "ms/update",
        "updates/s",
        "peak RSS MB",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")
    for point in scaling:
        if "error" in point:
            table.add_row(point["name"], f"[red]{point['error']}[/]", *[""] * 9)
            continue
        table.add_row(
            point["name"],
            f"{point['devices']:,}",
            f"{point['device_slots']:,}",
            f"{point['updates_per_round']:,}",
            f"{point['plan_s']:.1f}",
            f"{point['compile_s']:.1f}",
            f"{point['round_s']:.1f}",
            f"{point['eval_s']:.2f}",
            f"{point['ms_per_update']:.2f}",
            f"{point['updates_per_s']:.0f}",
            f"{point['peak_rss_mb']:,.0f}",
        )
    console.print(table)
    ok = [p for p in scaling if "error" not in p]
    console.print(
        "plan s: data generation and partitioning (make_plan); round s: training only (jitted cloud round, median of "
        + " and ".join(f"{len(p['round_seconds'])}" for p in ok)
        + f" timed rounds); eval s: one test-set evaluation; slots: devices padded to equal chunks of at most chunk_size "
        f"{ok[0]['chunk_size'] if ok else '-'} (padding slots train too, on zero-weight data)"
    )
    if len(ok) == 2:
        console.print(
            f"[bold]time per client update, {ok[1]['devices']:,} vs {ok[0]['devices']:,} devices: "
            f"{ok[1]['ms_per_update'] / ok[0]['ms_per_update']:.2f}x[/] (1.0 = linear scaling); "
            f"per trained slot: {_ms_per_slot(ok[1]) / _ms_per_slot(ok[0]):.2f}x; "
            f"peak RSS {ok[1]['peak_rss_mb'] / ok[0]['peak_rss_mb']:.1f}x"
        )


def _ms_per_slot(point: dict[str, Any]) -> float:
    return 1e3 * point["round_s"] / (point["device_slots"] * point["edge_rounds"])


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the 10,400-device run")
    parser.add_argument(
        "--blocks", type=int, default=4, help="W1: blocks per method, taken in turns (default 4)"
    )
    parser.add_argument(
        "--block-rounds", type=int, default=5, help="W1: timed cloud rounds per block (default 5)"
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help="simulator chunk_size for the scaling runs",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the result JSON to PATH")
    parser.add_argument("--scaling-child", help=argparse.SUPPRESS)
    parser.add_argument("--timed-rounds", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.scaling_child:
        print(json.dumps(scaling_run(args.scaling_child, args.timed_rounds, args.chunk_size)))
        return 0

    progress = Console(stderr=True)
    result: dict[str, Any] = {"environment": environment()}
    progress.log("matmul peak")
    result["peak"] = matmul_peak()
    result["w1"] = measure_w1(args.blocks, args.block_rounds, progress)

    points = [("large", 2, 600)] + ([] if args.quick else [(f"large-x{SCALE}", 1, 900)])
    result["scaling"] = []
    for name, timed_rounds, timeout_s in points:
        progress.log(f"scaling: {name} in a fresh process")
        result["scaling"].append(
            scaling_in_subprocess(name, timed_rounds, args.chunk_size, timeout_s)
        )
    result["load_after"] = os.getloadavg()[0]

    print_report(Console(width=None if sys.stdout.isatty() else 150), result)
    line = json.dumps(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
