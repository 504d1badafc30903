"""Runtime transport: an edge's ingest against raw pyzmq, and `hierfl launch` against `simulate`.

    python benchmarks/transport.py                         # 4 senders, 2 plants x 50 devices for the round timing
    python benchmarks/transport.py --devices-per-plant 8   # a smaller federation
    python benchmarks/transport.py --json out.json

Two tables, each with its baseline measured in the same run:

1. Throughput of 4 MB messages (1M float32 parameters) from `--senders` device processes
   over tcp loopback. Baseline: raw pyzmq PUSH/PULL, zero-copy sends, receiving frames
   without a copy. Against it: the edge's receive path as its `PlainRounds` run it on a ROUTER
   socket fed by DEALERs, every message fully checked (`protocol.parse_message`: header,
   sender, array spec, frame length, finiteness), copied into the edge's `[N, P]` stack
   and, once per N messages (an edge round), aggregated (`hierfl.core.steps.make_edge_step`).
   Senders block at a high-water mark of 4 messages, so both sides are paced by the
   receiver. Timing starts once every sender has started, imported and connected;
   GB/s counts the payload bytes received.
2. The runtime's overhead per round: seconds per cloud round of `hierfl launch` (every
   node an OS process, loopback ipc) against `hierfl simulate` (the baseline) on the same
   topology: digits, mlp (a tiny model), 2 plants x `--devices-per-plant`, one edge round
   of 5 local steps. The median over rounds 2..R (the first round includes compiling);
   the launch's process start-up is reported apart. The launch groups devices as
   `[runtime] devices_per_process` says (`--devices-per-process`, default "auto": for 2 x
   50 devices one device host per plant, 5 processes in all).

The last line of stdout is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

PARAMS = 1 << 20  # 4 MB of float32
HWM = 4


def raw_sender(address: str, messages: int, ready) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, HWM)
    socket.connect(address)
    buffer = np.ones(PARAMS, np.float32)
    ready.wait()
    for _ in range(messages):
        socket.send(buffer, copy=False)
    socket.close(linger=-1)
    context.term()


def device_sender(address: str, identity: str, messages: int, ready) -> None:
    from hierfl.kernels import flat_spec
    from hierfl.runtime import protocol

    spec = flat_spec({"w": np.zeros(PARAMS, np.float32)})
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.ROUTING_ID, identity.encode())
    socket.setsockopt(zmq.SNDHWM, HWM)
    socket.connect(address)
    delta = np.full(PARAMS, 0.001, np.float32)
    ready.wait()
    for r in range(messages):
        frames = protocol.encode(
            protocol.UPDATE,
            identity,
            round=r + 1,
            spec=spec,
            codec="none",
            arrays=[delta],
            weight=10.0,
            loss=0.5,
        )
        socket.send_multipart(frames, copy=False)
    socket.close(linger=-1)
    context.term()


def start_senders(target, argument_lists: list[tuple]) -> tuple[list[mp.Process], float]:
    """Starts one spawned process per argument tuple; returns them once all are ready to send, and the time."""
    context = mp.get_context("spawn")
    ready = context.Barrier(len(argument_lists) + 1)
    processes = [
        context.Process(target=target, args=(*args, ready), daemon=True) for args in argument_lists
    ]
    for process in processes:
        process.start()
    ready.wait()  # every sender has imported, built its message and connected: timing starts now
    return processes, time.perf_counter()


def raw_throughput(senders: int, messages: int) -> float:
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, HWM)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    processes, started = start_senders(
        raw_sender, [(f"tcp://127.0.0.1:{port}", messages)] * senders
    )
    nbytes = 0
    for _ in range(senders * messages):
        frame = socket.recv(copy=False)
        nbytes += len(frame.buffer)
    seconds = time.perf_counter() - started
    for p in processes:
        p.join()
    socket.close()
    context.term()
    return nbytes / seconds / 1e9


def edge_throughput(senders: int, messages: int) -> float:
    import jax

    from hierfl.core.steps import aligned_zeros, make_edge_step
    from hierfl.kernels import flat_spec, make_codec
    from hierfl.runtime import protocol
    from hierfl.runtime.node import recv_router

    spec = flat_spec({"w": np.zeros(PARAMS, np.float32)})
    layouts = {protocol.UPDATE: ("none", protocol.codec_layout(make_codec("none", spec.size)))}
    from hierfl.topology import TierRule

    edge_step = jax.jit(make_edge_step(TierRule()))  # the weighted mean
    ids = [f"plant-a/line-1/dev-{i:03d}" for i in range(senders)]
    rows = {name: i for i, name in enumerate(ids)}
    deltas = aligned_zeros((senders, spec.size))
    weights = np.zeros(senders, np.float32)
    unclipped = np.zeros(senders, np.float32)
    edge_flat = np.zeros(spec.size, np.float32)

    def aggregate(edge_flat):  # one edge round's mean, as an edge without DP runs it
        return np.asarray(
            edge_step(edge_flat, deltas, weights, unclipped, 0, 0, 0, np.float32(1)).edge_flat
        )

    edge_flat = aggregate(edge_flat)  # compile before timing

    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.RCVHWM, HWM)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    processes, started = start_senders(
        device_sender, [(f"tcp://127.0.0.1:{port}", name, messages) for name in ids]
    )
    total, received, nbytes = senders * messages, 0, 0
    while received < total:
        socket.poll()
        try:
            peer, frames = recv_router(socket)
        except zmq.Again:
            continue
        message = protocol.parse_message(
            frames, senders=rows, spec=spec, layouts=layouts, max_bytes=1 << 26, routing_id=peer
        )
        row = rows[message.sender]
        deltas[row] = message.arrays[0]
        weights[row] = message.header["weight"]
        received += 1
        nbytes += message.arrays[0].nbytes
        if received % senders == 0:
            edge_flat = aggregate(edge_flat)
            weights[:] = 0
    seconds = time.perf_counter() - started
    for p in processes:
        p.join()
    socket.close()
    context.term()
    assert np.isfinite(edge_flat).all()
    return nbytes / seconds / 1e9


ROUND_TOPOLOGY = """
[federation]
name = "transport-bench"
task = "digits"
model = "mlp"
cloud_rounds = {rounds}
edge_rounds = 1
local_steps = 5
batch_size = 16
learning_rate = 0.1

[cloud]
address = "ipc://{dir}/cloud.ipc"

[runtime]
devices_per_process = {grouping}
device_deadline = 300.0
edge_deadline = 600.0
heartbeat_interval = 1.0
heartbeat_timeout = 60.0
start_timeout = 1800.0

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


def round_seconds(devices_per_plant: int, rounds: int, grouping: str) -> dict[str, float]:
    from hierfl.data.loading import load_topology
    from hierfl.runtime.launch import Launch
    from hierfl.sim.engine import simulate

    folder = Path(tempfile.mkdtemp(prefix="hfl-bench-", dir="/tmp"))
    try:
        path = folder / "bench.toml"
        value = grouping if grouping.isdigit() else f'"{grouping}"'
        path.write_text(
            ROUND_TOPOLOGY.format(
                rounds=rounds, dir=folder, devices=devices_per_plant, grouping=value
            )
        )
        topology = load_topology(path)
        simulated = simulate(topology)
        sim = statistics.median(r["round_seconds"] for r in simulated.history[1:])
        launch = Launch(topology, str(path), folder / "run")
        started = time.perf_counter()
        launch.start()
        try:
            history = launch.wait()
        finally:
            launch.stop(grace=0)
        total = time.perf_counter() - started
        launched = statistics.median(r["round_seconds"] for r in history[1:])
        startup = total - sum(r["round_seconds"] for r in history)
        return {
            "simulate_s_per_round": sim,
            "launch_s_per_round": launched,
            "launch_vs_simulate": launched / sim,
            "launch_startup_s": startup,
            "devices": 2 * devices_per_plant,
            "launch_processes": len(launch.processes),
            "devices_per_process": grouping,
            "rounds": rounds,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def import_cpu_seconds(module: str, repeat: int = 3) -> float:
    """CPU seconds (user + system) a fresh Python process spends importing `module`: the
    least of `repeat` runs, since CPU time, unlike wall time, barely moves with other load."""
    best = math.inf
    for _ in range(repeat):
        process = subprocess.Popen([sys.executable, "-c", f"import {module}"])
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"importing {module} failed")
        best = min(best, usage.ru_utime + usage.ru_stime)
    return best


def startup_floor(processes: int) -> dict[str, float]:
    """The least start-up a launch of `processes` nodes can have on this machine: each node
    imports JAX and the node's modules before it does anything, the cores share that work."""
    node = import_cpu_seconds("hierfl.runtime.device")
    return {
        "jax_import_cpu_s": import_cpu_seconds("jax"),
        "node_import_cpu_s": node,
        "startup_floor_s": processes * node / len(os.sched_getaffinity(0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--senders", type=int, default=4, help="device processes sending 4 MB updates (default 4)"
    )
    parser.add_argument("--messages", type=int, default=40, help="messages per sender (default 40)")
    parser.add_argument(
        "--devices-per-plant",
        type=int,
        default=50,
        help="devices per plant in the round timing (default 50)",
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="cloud rounds in the round timing (default 6)"
    )
    parser.add_argument(
        "--devices-per-process",
        default="auto",
        help='the launch\'s [runtime] devices_per_process: "auto", "plant", "line" or N (default auto)',
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    raw, edge = [], []
    for _ in range(2):  # take turns, so load from other processes hits both alike; keep the best
        raw.append(raw_throughput(args.senders, args.messages))
        edge.append(edge_throughput(args.senders, args.messages))
    result = {
        "machine": (
            f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
            f"python {platform.python_version()}, zmq {zmq.zmq_version()}"
        ),
        "message_mb": PARAMS * 4 / 1e6,
        "senders": args.senders,
        "messages_per_sender": args.messages,
        "raw_push_pull_gb_s": max(raw),
        "edge_ingest_gb_s": max(edge),
        "edge_vs_raw": max(edge) / max(raw),
    }
    print(f"{result['machine']}")
    print(
        f"{'4 MB messages, ' + str(args.senders) + ' sender processes, tcp loopback':<60} {'GB/s':>8} {'x raw':>7}"
    )
    print(
        f"{'raw pyzmq PUSH/PULL, zero-copy':<60} {result['raw_push_pull_gb_s']:>8.2f} {1.0:>7.2f}"
    )
    print(
        f"{'edge: ROUTER recv + validate + stack + aggregate':<60} {result['edge_ingest_gb_s']:>8.2f} {result['edge_vs_raw']:>7.2f}"
    )
    sys.stdout.flush()

    rounds = round_seconds(args.devices_per_plant, args.rounds, args.devices_per_process)
    result.update(rounds)
    floor = startup_floor(rounds["launch_processes"])
    result.update(floor)
    print(
        f"\nseconds per cloud round, digits mlp, 2 plants x {args.devices_per_plant} devices (median of rounds 2..{args.rounds})"
    )
    print(f"{'':<60} {'s/round':>8} {'x simulate':>10}")
    print(
        f"{'hierfl simulate (one process)':<60} {rounds['simulate_s_per_round']:>8.3f} {1.0:>10.1f}"
    )
    launched = f"hierfl launch ({rounds['launch_processes']} processes, devices_per_process {args.devices_per_process})"
    print(
        f"{launched:<60} {rounds['launch_s_per_round']:>8.3f} {rounds['launch_vs_simulate']:>10.1f}"
        f"   (start-up {rounds['launch_startup_s']:.0f} s)"
    )
    print(
        f"start-up floor: {rounds['launch_processes']} processes x {floor['node_import_cpu_s']:.2f} s of "
        f"CPU importing a node (JAX alone {floor['jax_import_cpu_s']:.2f} s) / "
        f"{len(os.sched_getaffinity(0))} cores = {floor['startup_floor_s']:.1f} s; the launch took "
        f"{rounds['launch_startup_s'] / floor['startup_floor_s']:.1f}x that"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
