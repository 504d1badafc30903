"""Edge inference server: latency and throughput against the in-process jitted model, in one run.

    python benchmarks/inference.py                  # about 1.5 minutes on 2 CPU cores
    python benchmarks/inference.py --duration 10    # longer measurement windows
    python benchmarks/inference.py --json out.json

Model: the industrial task's model, bearing-fault `cnn1d` (EnvelopeCNN on 2,048-sample
vibration windows), with weights from initialisation (latency does not depend on their
values), exported to a `.hfl` file as `hierfl export` does. Inputs: 256 real windows from
the bearing physics model, sent one per request (batch 1), cycling.

1. Floor: the in-process jitted `model.apply` on one window at a time (with the copy of the
   logits back to numpy, as the server does), and the exported function loaded in-process
   (`compile_artifact(...).predict`) on the same inputs: what the export itself costs.
2. Server: `hierfl serve` in its own process on tcp loopback, with max batch 1 (no
   batching), max batch 32 with max wait 0 (the default: batch what arrived while the last
   batch ran) and max batch 32 with max wait 1 ms, each measured with 1 and 8 concurrent
   client processes. Each client sends batch-1 requests back to back (one in flight) for
   `--duration` seconds and times each request end to end with `hierfl.inference.Client`.

Reported: latency p50/p99, throughput (requests/s over all clients), server overhead per
request (server p50 with 1 client and max batch 1, minus the floor's p50), and the
throughput gain from dynamic batching (max batch 32 over max batch 1, 8 clients, for each
max wait). The
clients, the server and XLA share the machine's cores: on a small machine the client
processes' own CPU time is part of what is measured. The last stdout line is the whole
result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WINDOWS = 256
CLIENT_COUNTS = (1, 8)
BATCH_CONFIGS = ((1, 0.0), (32, 0.0), (32, 1.0))  # (max batch, max wait ms)
HIERFL = Path(sys.executable).parent / "hierfl"


def run_client(address: str, inputs: str, out: str, start_at: float, duration: float) -> None:
    """One client process: warm up, wait for `start_at` (epoch seconds), send batch-1 requests until the window ends."""
    from hierfl.inference.client import Client

    x = np.load(inputs)
    latencies = []
    with Client(address, timeout=60) as client:
        for i in range(20):
            client.predict(x[i : i + 1])
        time.sleep(max(0.0, start_at - time.time()))
        end = start_at + duration
        i = 0
        while time.time() < end:
            row = i % len(x)
            t0 = time.perf_counter()
            client.predict(x[row : row + 1])
            latencies.append(time.perf_counter() - t0)
            i += 1
    np.save(out, np.array(latencies))


def config_key(max_batch: int, max_wait_ms: float, clients: int) -> str:
    return f"max_batch={max_batch},max_wait_ms={max_wait_ms:g},clients={clients}"


def summarize(latencies: np.ndarray, seconds: float) -> dict[str, float]:
    """p50/p99 in ms, mean in ms, and requests per second over `seconds`."""
    return {
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "mean_ms": float(latencies.mean() * 1e3),
        "requests": int(len(latencies)),
        "throughput_rps": float(len(latencies) / seconds),
    }


def measure_in_process(fn, x: np.ndarray, duration: float) -> dict[str, float]:
    """Latency of `fn(one window)` called back to back for `duration` seconds, after a warm-up."""
    for i in range(50):
        fn(x[i % len(x) : i % len(x) + 1])
    latencies = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < duration:
        row = i % len(x)
        t0 = time.perf_counter()
        fn(x[row : row + 1])
        latencies.append(time.perf_counter() - t0)
        i += 1
    return summarize(np.array(latencies), time.perf_counter() - started)


def start_server(
    model_file: Path, max_batch: int, max_wait_ms: float, log: Path
) -> tuple[subprocess.Popen, str]:
    """`hierfl serve` on a free loopback port; returns the process and its address once it listens."""
    out = open(log, "w")
    process = subprocess.Popen(
        [
            str(HIERFL),
            "serve",
            str(model_file),
            "--bind",
            "tcp://127.0.0.1:*",
            "--max-batch",
            str(max_batch),
            "--max-wait-ms",
            str(max_wait_ms),
        ],
        stdout=subprocess.PIPE,
        stderr=out,
        text=True,
    )
    line = process.stdout.readline()
    match = re.search(r" on (tcp://\S+) ", line)
    if not match:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}\n{log.read_text()}")
    return process, match.group(1)


def measure_server(
    address: str, inputs: Path, clients: int, duration: float, folder: Path
) -> dict[str, float]:
    """`clients` client processes against the server at `address`; latencies pooled over all of them."""
    start_at = time.time() + 3.0 + 0.5 * clients  # time for every client to start and warm up
    outs = [folder / f"lat-{clients}-{i}.npy" for i in range(clients)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                address,
                str(inputs),
                str(out),
                repr(start_at),
                repr(duration),
            ]
        )
        for out in outs
    ]
    for process in processes:
        if process.wait(timeout=duration + 120) != 0:
            raise SystemExit(f"a client process failed with status {process.returncode}")
    return summarize(np.concatenate([np.load(out) for out in outs]), duration)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=4.0, help="seconds per measurement (default 4)"
    )
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument(
        "--client",
        nargs=5,
        metavar=("ADDR", "INPUTS", "OUT", "START_AT", "DURATION"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.client:
        address, inputs, out, start_at, duration = args.client
        run_client(address, inputs, out, float(start_at), float(duration))
        return

    folder = Path(tempfile.mkdtemp(prefix="hfl-bench-"))
    try:
        benchmark(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def benchmark(args: argparse.Namespace, folder: Path) -> None:
    """Runs every measurement (files under `folder`), prints the table, the summary and the JSON line."""
    import jax
    from rich.console import Console
    from rich.table import Table

    from hierfl.data.tasks import TASKS
    from hierfl.data.tasks.bearing_data import generate_plant
    from hierfl.data.tasks.models import build_model
    from hierfl.inference.artifact import read_artifact, write_artifact
    from hierfl.inference.compiled import compile_artifact, describe_platform
    from hierfl.inference.export import export_model

    console = Console(width=120)
    load_before = os.getloadavg()
    task = TASKS["bearing-fault"]
    model, params = build_model("cnn1d", task.models["cnn1d"], jax.random.key(0))
    model_file = write_artifact(folder / "cnn1d.hfl", export_model(model, params, task, version=1))
    x, _, _ = generate_plant(
        0,
        0,
        num_machines=4,
        windows_per_machine=WINDOWS // 4,
        shift=0.0,
        window=task.input_shape[0],
    )
    x = x[..., None].astype(np.float32)
    inputs = folder / "windows.npy"
    np.save(inputs, x)
    console.print(
        f"bearing-fault cnn1d, {sum(a.size for a in jax.tree.leaves(params)):,} parameters, "
        f"{model_file.stat().st_size:,}-byte .hfl; {len(x)} windows [{x.shape[1]}, 1]; {describe_platform()}, "
        f"{os.cpu_count()} cores; {args.duration:g} s per measurement"
    )

    apply = jax.jit(model.apply)
    floor = measure_in_process(lambda w: np.asarray(apply(params, w)), x, args.duration)
    exported = compile_artifact(read_artifact(model_file), max_batch=32)
    exported_floor = measure_in_process(exported.predict, x, args.duration)
    batch32 = np.stack([x[i % len(x)] for i in range(32)])
    batch32_floor = measure_in_process(
        lambda _: np.asarray(apply(params, batch32)), x, args.duration
    )
    batch32_floor["rows_per_s"] = 32 * batch32_floor["throughput_rps"]

    served: dict[str, dict[str, float]] = {}
    for max_batch, max_wait in BATCH_CONFIGS:
        process, address = start_server(
            model_file, max_batch, max_wait, folder / f"server-{max_batch}.log"
        )
        try:
            for clients in CLIENT_COUNTS:
                served[config_key(max_batch, max_wait, clients)] = measure_server(
                    address, inputs, clients, args.duration, folder
                )
        finally:
            process.terminate()
            process.wait(timeout=30)

    table = Table(title="batch-1 requests: latency and throughput")
    for column in ("path", "clients", "p50 ms", "p99 ms", "requests/s"):
        table.add_column(column, justify="right" if column != "path" else "left")
    table.add_row(
        "in-process jitted apply (floor)",
        "1",
        f"{floor['p50_ms']:.3f}",
        f"{floor['p99_ms']:.3f}",
        f"{floor['throughput_rps']:,.0f}",
    )
    table.add_row(
        "in-process exported .hfl",
        "1",
        f"{exported_floor['p50_ms']:.3f}",
        f"{exported_floor['p99_ms']:.3f}",
        f"{exported_floor['throughput_rps']:,.0f}",
    )
    table.add_row(
        "in-process jitted apply, batch 32 (rows/s)",
        "1",
        f"{batch32_floor['p50_ms']:.3f}",
        f"{batch32_floor['p99_ms']:.3f}",
        f"{batch32_floor['rows_per_s']:,.0f}",
    )
    for (max_batch, max_wait), clients in ((c, n) for c in BATCH_CONFIGS for n in CLIENT_COUNTS):
        r = served[config_key(max_batch, max_wait, clients)]
        label = f"server, max batch {max_batch}" + (
            f", max wait {max_wait:g} ms" if max_batch > 1 else ""
        )
        table.add_row(
            label,
            str(clients),
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['throughput_rps']:,.0f}",
        )
    console.print(table)

    overhead_ms = served[config_key(1, 0.0, 1)]["p50_ms"] - floor["p50_ms"]
    unbatched = served[config_key(1, 0.0, 8)]["throughput_rps"]
    gains = {
        f"max_wait_ms={w:g}": served[config_key(b, w, 8)]["throughput_rps"] / unbatched
        for b, w in BATCH_CONFIGS
        if b > 1
    }
    load_after = os.getloadavg()
    console.print(
        f"server overhead per request (p50, 1 client, max batch 1, minus floor p50): {overhead_ms:.3f} ms "
        f"(server p50 = {served[config_key(1, 0.0, 1)]['p50_ms'] / floor['p50_ms']:.2f}x the floor's)"
    )
    console.print(
        f"load average (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in load_before)} before, "
        f"{', '.join(f'{v:.2f}' for v in load_after)} after"
    )
    for name, gain in gains.items():
        console.print(
            f"dynamic batching throughput gain, 8 clients, max batch 32 / max batch 1 ({name}): {gain:.2f}x"
        )
    result: dict[str, Any] = {
        "machine": {
            "platform": describe_platform(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
        "duration_s": args.duration,
        "load_before": load_before,
        "load_after": load_after,
        "floor": floor,
        "exported_in_process": exported_floor,
        "floor_batch32": batch32_floor,
        "server": served,
        "server_overhead_p50_ms": overhead_ms,
        "batching_gain_8_clients": gains,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
