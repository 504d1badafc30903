"""Simulator throughput: `hierfl simulate` against the strongest plain JAX loop and the hardware.

    python benchmarks/simulate_throughput.py            # everything, about 12 minutes on 2 CPU cores
    python benchmarks/simulate_throughput.py --quick    # W1, the conv models and `large`; no 10,400-device run
    python benchmarks/simulate_throughput.py --json out.json

Every measurement runs in a fresh process of its own, so no two share a CPU device, a
thread pool or a heap:

1. Workload W1: task `digits`, MLP 64-128-10, 100 devices in one plant, 20 local SGD steps
   of batch 32 at lr 0.1, FedAvg over all devices every round. hierfl is `hierfl simulate`
   run from the command line exactly as a user runs it (its `round_seconds` include the
   test-set evaluation and the records written each round). The baseline is the strongest
   plain JAX loop a user would write without hierfl: an explicit MLP, each device's batches
   laid out once before timing as `[steps, batch, features]`, one jitted `lax.scan` over
   the steps called per device from Python, and a numpy example-weighted average. The two
   take turns, `--repeats` processes each; the ratio is of the medians of their steady
   rounds (round 1 compiles and is left out). The plain loop runs on one core, so one copy
   per core then runs side by side and their rates are summed: that program's limit on
   this machine, against which hierfl's rate is shown too.
2. The limit, measured in the same run: the float32 matmul peak (a jitted 2048^3 matmul,
   best of 7, all cores) and the memory bandwidth of a large copy (`np.copyto` of 512 MB,
   bytes read + written). W1's and the conv models' FLOP rates are shown as a fraction of
   the matmul peak; FLOPs per update are XLA's own count (`cost_analysis`) of one compiled
   SGD step of the task's model and loss, times the local steps.
3. Conv models: bearing-fault `cnn1d` and steel-defects `cnn` on W1's tree (100 devices,
   10 steps of batch 16), through `hierfl simulate`.
4. Scaling: the `large` preset (bearing-fault, 1,040 devices) and the same shape with 10x
   the devices per line (10,400): plan (data generation) time, compile time, training time
   per cloud round, evaluation time, time per client update and peak RSS.

The last line of stdout is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_model
from rich.console import Console
from rich.table import Table

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

CONV_WORKLOADS = {
    "bearing cnn1d": ('task = "digits"\nmodel = "mlp"', 'task = "bearing-fault"\nmodel = "cnn1d"'),
    "steel cnn": ('task = "digits"\nmodel = "mlp"', 'task = "steel-defects"\nmodel = "cnn"'),
}
"""W1's tree with the conv models: (text replaced, replacement); steps and batch as `large`."""

CONV_SHAPE = ("local_steps = 20\nbatch_size = 32", "local_steps = 10\nbatch_size = 16")

TARGET_RATIO = 2.0
TARGET_PEAK_FRACTION = 0.5
SCALE = 10
"""The scaled run has SCALE times the devices of every line of the `large` preset."""
DEFAULT_CHUNK_SIZE = 512


def conv_toml(name: str) -> str:
    old, new = CONV_WORKLOADS[name]
    return W1_TOML.replace(old, new).replace(*CONV_SHAPE).replace('"w1"', f'"{name}"')


# --- children: each runs alone in a fresh interpreter -------------------------------------


def child_limit() -> dict[str, float]:
    """The machine's float32 matmul peak (all cores) and memory copy bandwidth."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    runs = [timed(lambda: matmul(a, b).block_until_ready()) for _ in range(7)]
    src = np.ones(128 * 2**20, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copy_s = min(timed(lambda: np.copyto(dst, src))[0] for _ in range(5))
    return {
        "matmul_gflops": 2 * n**3 / min(w for w, _ in runs) / 1e9,
        "matmul_cpu_per_wall": sum(c for _, c in runs) / sum(w for w, _ in runs),
        "copy_gbps": 2 * src.nbytes / copy_s / 1e9,
    }


def child_plain(rounds: int) -> dict[str, Any]:
    """W1 as a plain JAX user writes it: batches laid out once, one jitted scan per device,
    numpy averaging; the same data as hierfl's plan (one JAX CPU device, JAX's default)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hierfl.data.plan import make_plan

    plan = make_plan(load_topology_text(W1_TOML, "<w1>"))
    federation, shards = plan.topology.federation, plan.shards
    steps, batch, lr = federation.local_steps, federation.batch_size, federation.learning_rate
    rng = np.random.default_rng(0)

    def laid_out(d: int) -> tuple[jax.Array, jax.Array]:
        count = int(shards.counts[d])
        epochs = -(-steps * batch // count)
        order = np.concatenate([rng.permutation(count) for _ in range(epochs)])[: steps * batch]
        x = shards.x[d].reshape(shards.x.shape[1], -1)[order]
        return jax.device_put(x.reshape(steps, batch, -1)), jax.device_put(
            shards.y[d][order].reshape(steps, batch)
        )

    batches = [laid_out(d) for d in range(shards.num_devices)]

    def forward(p, x):
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss_fn(p, x, y):
        log_probs = jax.nn.log_softmax(forward(p, x))
        return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))

    @jax.jit
    def local_train(p, xs, ys):
        def step(p, xy):
            grads = jax.grad(loss_fn)(p, *xy)
            return jax.tree.map(lambda w, g: w - lr * g, p, grads), None

        return jax.lax.scan(step, p, (xs, ys))[0]

    d_in, d_hidden, d_out = 64, 128, 10
    state = {
        "w1": (rng.standard_normal((d_in, d_hidden)) / np.sqrt(d_in)).astype(np.float32),
        "b1": np.zeros(d_hidden, np.float32),
        "w2": (rng.standard_normal((d_hidden, d_out)) / np.sqrt(d_hidden)).astype(np.float32),
        "b2": np.zeros(d_out, np.float32),
    }
    weights = shards.counts / shards.counts.sum()

    def run_round() -> None:
        start = jax.device_put(state)
        trained = [local_train(start, x, y) for x, y in batches]
        for k in state:
            stack = np.stack([np.asarray(t[k]) for t in trained])
            state[k] = np.tensordot(weights, stack, axes=1).astype(np.float32)

    seconds = [timed(run_round)[0] for _ in range(rounds)]
    x = plan.test.x.reshape(len(plan.test.y), -1)
    logits = forward(state, x)
    return {
        "round_seconds": seconds,
        "accuracy": float(np.mean(np.argmax(np.asarray(logits), -1) == plan.test.y)),
        "jax_devices": len(jax.devices()),
    }


def child_flops(toml: str) -> dict[str, float]:
    """XLA's FLOP count of one compiled SGD step (loss, gradient, update) of the topology's
    model on one batch, and per client update (times the local steps)."""
    import jax
    import numpy as np
    import optax

    from hierfl.data.plan import make_plan
    from hierfl.sim.engine import init_global_model

    plan = make_plan(load_topology_text(toml, "<flops>"))
    federation, task = plan.topology.federation, plan.task
    model, params = init_global_model(plan)
    x = np.zeros((federation.batch_size, *plan.shards.x.shape[2:]), np.float32)
    y = np.zeros((federation.batch_size, *plan.shards.y.shape[2:]), plan.shards.y.dtype)
    tx = optax.sgd(federation.learning_rate)

    def sgd_step(p, x, y):
        loss = lambda p: task.example_loss(model.apply(p, x), y).mean()  # noqa: E731
        grads = jax.grad(loss)(p)
        updates, _ = tx.update(grads, tx.init(p), p)
        return optax.apply_updates(p, updates)

    cost = jax.jit(sgd_step).lower(params, x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    per_step = float(cost["flops"])
    return {
        "flops_per_step": per_step,
        "flops_per_update": per_step * federation.local_steps,
        "parameters": int(sum(np.size(leaf) for leaf in jax.tree.leaves(params))),
    }


def child_scaling(name: str, timed_rounds: int, chunk_size: int) -> dict[str, Any]:
    """One scaling point: plan, compile, training rounds, one evaluation, peak RSS."""
    from hierfl.sim.host_memory import release_freed_memory
    from hierfl.sim.parallel import request_cpu_devices

    request_cpu_devices()  # as the CLI does, before JAX starts
    release_freed_memory()  # as `simulate` does

    import jax
    import jax.numpy as jnp

    from hierfl.data.evaluation import make_evaluator
    from hierfl.data.loading import load_topology
    from hierfl.data.plan import make_plan
    from hierfl.sim.engine import build_simulation, rows_held_once

    topology = (
        load_topology("large")
        if name == "large"
        else load_topology_text(scaled_large_toml(SCALE), name)
    )
    federation = topology.federation
    start = time.perf_counter()
    plan = make_plan(topology)
    plan_s = time.perf_counter() - start
    sim = rows_held_once(build_simulation(plan, chunk_size))  # as `simulate` does
    plan = sim.plan
    start = time.perf_counter()
    cloud_round = sim.cloud_round.lower(sim.initial, sim.chunks, jnp.int32(1)).compile()
    compile_s = time.perf_counter() - start
    state, seconds = sim.initial, []
    for r in range(1, timed_rounds + 1):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(cloud_round(state, sim.chunks, jnp.int32(r)))
        seconds.append(time.perf_counter() - start)
    evaluate = make_evaluator(sim.model, plan.task, plan.test, plan.num_edges)
    evaluate(state.params)  # compiles
    eval_s, scores = timed_value(lambda: evaluate(state.params))
    updates = topology.num_devices * federation.edge_rounds
    round_s = statistics.median(seconds)
    return {
        "name": name,
        "devices": topology.num_devices,
        "edge_rounds": federation.edge_rounds,
        "local_steps": federation.local_steps,
        "batch_size": federation.batch_size,
        "updates_per_round": updates,
        "device_slots": int(sim.chunks.count.size),
        "chunk_size": chunk_size,
        "plan_s": plan_s,
        "compile_s": compile_s,
        "round_seconds": seconds,
        "round_s": round_s,
        "eval_s": eval_s,
        "ms_per_update": 1e3 * round_s / updates,
        "updates_per_s": updates / round_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "accuracy": scores.score,
    }


CHILDREN = {
    "limit": lambda args: child_limit(),
    "plain": lambda args: child_plain(args.rounds),
    "flops": lambda args: child_flops(Path(args.topology).read_text(encoding="utf-8")),
    "scaling": lambda args: child_scaling(args.name, args.rounds, args.chunk_size),
}


# --- shared helpers -----------------------------------------------------------------------


def load_topology_text(text: str, source: str):
    """TOML text validated as `hierfl.data.loading` validates a file: names checked against our registries."""
    from hierfl.core.algorithms import ALGORITHMS
    from hierfl.data.tasks import TASKS
    from hierfl.topology import parse_topology

    return parse_topology(
        text, source, choices={"federation.task": TASKS, "federation.algorithm": ALGORITHMS}
    )


def scaled_large_toml(scale: int) -> str:
    """The `large` preset's text with every line's device count multiplied by `scale`."""
    from hierfl.topology import preset_path

    text = preset_path("large").read_text(encoding="utf-8")
    old, new = "devices = 26\n", f"devices = {26 * scale}\n"
    if text.count(old) != 40:
        raise RuntimeError(
            f"the large preset no longer has 40 lines of {old.strip()!r}; update scaled_large_toml"
        )
    return text.replace(old, new).replace('name = "large"', f'name = "large-x{scale}"')


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) taken by `fn()`."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def timed_value(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# --- the parent: starts the children, takes turns, prints ----------------------------------


def run_child(kind: str, timeout_s: float, *args: str) -> dict[str, Any]:
    """`--child kind` in a fresh interpreter; its last stdout line is its JSON result."""
    done = run_command([sys.executable, __file__, "--child", kind, *args], timeout_s)
    if isinstance(done, dict):
        return done
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_command(command: list[str], timeout_s: float) -> subprocess.CompletedProcess | dict:
    """`command`'s completed process, or `{"error": why}` if it timed out or failed."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {done.returncode}"}
    return done


def run_children_side_by_side(kind: str, count: int, timeout_s: float, *args: str) -> list[dict]:
    """`count` `--child kind` processes started together; their JSON results."""
    command = [sys.executable, __file__, "--child", kind, *args]
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=timeout_s)
        if child.returncode != 0:
            raise RuntimeError(f"{kind} child failed: {err.strip().splitlines()[-1:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def run_hierfl_simulate(toml: str, rounds: int, folder: Path, timeout_s: float) -> dict[str, Any]:
    """`hierfl simulate FILE --rounds R --out DIR --quiet`, as a user types it; the rounds'
    `round_seconds` and the last accuracy from the run's metrics.jsonl."""
    topology, out = folder / "topology.toml", folder / f"run-{time.time_ns()}"
    topology.write_text(toml, encoding="utf-8")
    command = [sys.executable, "-m", "hierfl", "simulate", str(topology), "--rounds", str(rounds)]
    command += ["--out", str(out), "--quiet"]
    done = run_command(command, timeout_s)
    if isinstance(done, dict):
        return done
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    return {
        "round_seconds": [r["round_seconds"] for r in records],
        "accuracy": records[-1]["accuracy"],
    }


def steady(run: dict[str, Any]) -> float:
    """Median seconds of a process's rounds after the first (which compiles)."""
    return statistics.median(run["round_seconds"][1:])


def measure_w1(repeats: int, rounds: int, folder: Path, progress: Console) -> dict[str, Any]:
    """hierfl and the plain loop, `repeats` processes each, taking turns (order alternating)."""
    runs: dict[str, list[dict[str, Any]]] = {"hierfl": [], "plain": []}
    for repeat in range(repeats):
        order = ("hierfl", "plain") if repeat % 2 == 0 else ("plain", "hierfl")
        for name in order:
            progress.log(f"W1: {name}, process {repeat + 1} of {repeats}")
            if name == "hierfl":
                run = run_hierfl_simulate(W1_TOML, rounds, folder, 600)
            else:
                run = run_child("plain", 600, "--rounds", str(rounds))
            if "error" in run:
                raise RuntimeError(f"W1 {name}: {run['error']}")
            runs[name].append(run)
    w1: dict[str, Any] = {"devices": 100, "rounds": rounds, "repeats": repeats}
    for name, done in runs.items():
        per_process = [steady(run) for run in done]
        round_s = statistics.median(per_process)
        w1[name] = {
            "round_s": round_s,
            "round_s_per_process": per_process,
            "updates_per_s": w1["devices"] / round_s,
            "accuracy": done[-1]["accuracy"],
        }
    w1["ratio"] = w1["hierfl"]["updates_per_s"] / w1["plain"]["updates_per_s"]
    # The plain loop is one core's program; one copy per core, side by side, is what this
    # machine can give it (each trains all the devices: only the summed rate counts).
    cores = len(os.sched_getaffinity(0))
    progress.log(f"W1: {cores} plain loops side by side")
    side = run_children_side_by_side("plain", cores, 600, "--rounds", str(rounds))
    w1["plain_side_by_side"] = {
        "processes": cores,
        "updates_per_s": sum(w1["devices"] / steady(run) for run in side),
        "updates_per_s_each": [w1["devices"] / steady(run) for run in side],
    }
    w1["ratio_to_side_by_side"] = (
        w1["hierfl"]["updates_per_s"] / w1["plain_side_by_side"]["updates_per_s"]
    )
    w1["ratio_per_pair"] = [
        p / h
        for h, p in zip(w1["hierfl"]["round_s_per_process"], w1["plain"]["round_s_per_process"])
    ]
    w1["target_ratio"] = TARGET_RATIO
    return w1


def measure_conv(rounds: int, folder: Path, progress: Console) -> list[dict[str, Any]]:
    """The conv models through `hierfl simulate`, with their FLOPs per update."""
    results = []
    for name in CONV_WORKLOADS:
        toml = conv_toml(name)
        (folder / "conv.toml").write_text(toml, encoding="utf-8")
        progress.log(f"conv: {name}")
        flops = run_child("flops", 600, "--topology", str(folder / "conv.toml"))
        run = run_hierfl_simulate(toml, rounds, folder, 900)
        if "error" in flops or "error" in run:
            results.append({"name": name, "error": flops.get("error") or run.get("error")})
            continue
        round_s = steady(run)
        results.append(
            {"name": name, "devices": 100, "round_s": round_s, **flops}
            | {
                "updates_per_s": 100 / round_s,
                "gflops": 100 * flops["flops_per_update"] / round_s / 1e9,
                "accuracy": run["accuracy"],
            }
        )
    return results


def environment() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_before": os.getloadavg(),
    }


# --- output -------------------------------------------------------------------------------


def print_report(console: Console, result: dict[str, Any]) -> None:
    env, limit = result["environment"], result["limit"]
    table = Table(title="environment and limit", show_header=False)
    for key in ("cpu_count", "cpus_usable", "cpu_model", "python", "xla_flags"):
        table.add_row(key, str(env[key]) or "-")
    table.add_row(
        "load average (1, 5, 15 min)",
        f"{_load(env['load_before'])} before the run, {_load(result['load_after'])} after",
    )
    table.add_row(
        "matmul peak",
        f"{limit['matmul_gflops']:.1f} GFLOP/s (float32 2048^3, best of 7; cores busy "
        f"{limit['matmul_cpu_per_wall']:.2f})",
    )
    table.add_row("memory copy", f"{limit['copy_gbps']:.1f} GB/s (512 MB, read + written)")
    console.print(table)
    peak = limit["matmul_gflops"]

    w1, flops = result["w1"], result["w1_flops"]
    table = Table(
        title=f"W1: digits MLP 64-128-10, {w1['devices']} devices, 20 steps x batch 32, FedAvg "
        f"every round; {w1['repeats']} processes each x {w1['rounds']} rounds"
    )
    for column in ("run", "round ms", "updates/s", "GFLOP/s", "% peak", "test acc"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for key, label in (
        ("hierfl", "hierfl simulate (CLI), incl. evaluation and records"),
        ("plain", "plain JAX: batches laid out, jitted scan per device, numpy avg"),
    ):
        row = w1[key]
        gflops = row["updates_per_s"] * flops["flops_per_update"] / 1e9
        table.add_row(
            label,
            f"{1e3 * row['round_s']:.1f}",
            f"{row['updates_per_s']:,.0f}",
            f"{gflops:.1f}",
            f"{100 * gflops / peak:.0f}%",
            f"{row['accuracy']:.3f}",
        )
    side = w1["plain_side_by_side"]
    gflops = side["updates_per_s"] * flops["flops_per_update"] / 1e9
    table.add_row(
        f"the plain loop x {side['processes']} processes side by side (one per core), summed",
        "",
        f"{side['updates_per_s']:,.0f}",
        f"{gflops:.1f}",
        f"{100 * gflops / peak:.0f}%",
        "",
    )
    console.print(table)
    console.print(
        f"hierfl / the plain loop on every core: {w1['ratio_to_side_by_side']:.2f} "
        f"(each copy: {', '.join(f'{u:,.0f}' for u in side['updates_per_s_each'])} updates/s)"
    )
    verdict = "[green]met[/]" if w1["ratio"] >= TARGET_RATIO else "[red]missed[/]"
    pairs = ", ".join(f"{r:.2f}" for r in w1["ratio_per_pair"])
    console.print(
        f"[bold]hierfl / plain loop: {w1['ratio']:.2f}x[/] (per pair of processes: {pairs}); "
        f"target >= {TARGET_RATIO}x: {verdict}. FLOPs per update (XLA's count): "
        f"{flops['flops_per_update'] / 1e6:.1f} M"
    )

    table = Table(title="conv models through hierfl simulate: 100 devices, 10 steps x batch 16")
    for column in ("model", "params", "MFLOP/update", "round ms", "updates/s", "GFLOP/s", "% peak"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in result["conv"]:
        if "error" in row:
            table.add_row(row["name"], f"[red]{row['error']}[/]", *[""] * 5)
            continue
        table.add_row(
            row["name"],
            f"{row['parameters']:,}",
            f"{row['flops_per_update'] / 1e6:.2f}",
            f"{1e3 * row['round_s']:.1f}",
            f"{row['updates_per_s']:,.0f}",
            f"{row['gflops']:.1f}",
            f"{100 * row['gflops'] / peak:.0f}%",
        )
    console.print(table)

    scaling = [p for p in result["scaling"] if "error" not in p]
    for point in result["scaling"]:
        if "error" in point:
            console.print(f"[red]scaling {point['name']}: {point['error']}[/]")
    if not scaling:
        return
    table = Table(title="scaling: bearing-fault cnn1d, edge_rounds 2, 10 steps x batch 16")
    columns = ("run", "devices", "slots", "plan s", "compile s", "round s", "eval s")
    for column in (*columns, "ms/update", "updates/s", "peak RSS MB"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for p in scaling:
        table.add_row(
            p["name"],
            f"{p['devices']:,}",
            f"{p['device_slots']:,}",
            f"{p['plan_s']:.1f}",
            f"{p['compile_s']:.1f}",
            f"{p['round_s']:.1f}",
            f"{p['eval_s']:.2f}",
            f"{p['ms_per_update']:.2f}",
            f"{p['updates_per_s']:.0f}",
            f"{p['peak_rss_mb']:,.0f}",
        )
    console.print(table)
    if len(scaling) == 2:
        small, big = scaling
        console.print(
            f"[bold]{big['devices']:,} vs {small['devices']:,} devices: time per update "
            f"{big['ms_per_update'] / small['ms_per_update']:.2f}x, peak RSS "
            f"{big['peak_rss_mb'] / small['peak_rss_mb']:.1f}x[/] (1.0 = linear)"
        )


def _load(load: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the 10,400-device run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="W1: processes of each, taking turns (default 3)"
    )
    parser.add_argument(
        "--rounds", type=int, default=11, help="W1: cloud rounds per process (default 11)"
    )
    parser.add_argument("--conv-rounds", type=int, default=4, help="conv models: cloud rounds")
    parser.add_argument("--no-scaling", action="store_true", help="skip the `large` runs")
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="scaling runs' chunk_size"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the result JSON to PATH")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--topology", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    progress = Console(stderr=True)
    result: dict[str, Any] = {"environment": environment()}
    with tempfile.TemporaryDirectory(prefix="simulate-throughput-") as tmp:
        folder = Path(tmp)
        progress.log("limit: matmul peak and memory copy")
        result["limit"] = run_child("limit", 300)
        (folder / "w1.toml").write_text(W1_TOML, encoding="utf-8")
        result["w1_flops"] = run_child("flops", 300, "--topology", str(folder / "w1.toml"))
        result["w1"] = measure_w1(args.repeats, args.rounds, folder, progress)
        result["conv"] = measure_conv(args.conv_rounds, folder, progress)
    points = [] if args.no_scaling else [("large", 2, 900)]
    if not (args.quick or args.no_scaling):
        points.append((f"large-x{SCALE}", 1, 1800))
    result["scaling"] = []
    for name, rounds, timeout_s in points:
        progress.log(f"scaling: {name} in a fresh process")
        point = run_child(
            "scaling", timeout_s, "--name", name, "--rounds", str(rounds),
            "--chunk-size", str(args.chunk_size),
        )  # fmt: skip
        result["scaling"].append({"name": name, **point})
    result["load_after"] = os.getloadavg()

    print_report(Console(width=None if sys.stdout.isatty() else 150), result)
    line = json.dumps(result)
    if args.json:
        Path(args.json).write_text(line + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
