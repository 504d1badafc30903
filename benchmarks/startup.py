"""`hierfl launch` start-up: seconds until the federation is ready to train, and its memory.

    python benchmarks/startup.py                   # `large`: 1 cloud, 10 edges, 10 device hosts (about 4 minutes)
    python benchmarks/startup.py --preset demo     # 2 plants (about 40 s)
    python benchmarks/startup.py --json out.json

Runs `hierfl launch PRESET --rounds 1 --quiet` as a user types it, once per start method,
taking turns: `fork` (nodes forked from one process that has imported their modules, the
default on Linux) and `exec` (every node a fresh `python -m hierfl ...` importing JAX and its
modules itself: what starting each node by hand gives, the baseline). Each launch gets an
empty JAX compilation cache of its own (`HIERFL_COMPILATION_CACHE`), so both pay the same
compiles, as a first launch on a machine does; with `--warm` one unmeasured launch fills a
cache they all share, as for a second launch. From the launch's start: the cloud serving,
every device joined (ready to train: data loaded, training step compiled, connected; the
last device's `joined` line), the first round's record and the end; every 0.25 s the
proportional set size (PSS, shared pages counted once) and RSS summed over the launch's
process tree (`/proc/<pid>/smaps_rollup`), and that tree's CPU seconds when the devices
have joined. The limit beside them: the CPU seconds one fresh process spends importing a
node's modules, measured in the same run, and what `exec`'s processes pay for them on this
machine's cores. `--json PATH` writes the result; the last stdout line is the same JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transport import import_cpu_seconds  # noqa: E402

HIERFL = Path(sys.executable).with_name("hierfl")
TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it, from `/proc/<pid>/stat`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of `pid` in kB, (0, 0) once it has gone."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used (0 once it has gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def log_times(logs: Path, pattern: str, text: str) -> list[float]:
    """The wall-clock times of the lines containing `text` in the logs matching `pattern`."""
    times = []
    for path in logs.glob(pattern):
        for line in path.read_text(errors="replace").splitlines():
            if text in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                times.append(stamp.timestamp())
    return times


def measure(preset: str, method: str, folder: Path, devices: int, cache: Path) -> dict:
    """One `hierfl launch PRESET --rounds 1` with `method` and compilation cache `cache`,
    sampled until it ends."""
    run = folder / f"run-{method}-{time.time_ns()}"
    env = {**os.environ, "HIERFL_COMPILATION_CACHE": str(cache)}
    command = [str(HIERFL), "launch", preset, "--rounds", "1", "--out", str(run), "--quiet"]
    started = time.time()
    launch = subprocess.Popen(
        [*command, "--start-method", method],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=folder,
    )
    peak_pss = peak_rss = 0
    cpu_when_joined = None
    while launch.poll() is None:
        tree = process_tree(launch.pid)
        sizes = [memory_kb(pid) for pid in tree]
        peak_pss = max(peak_pss, sum(p for p, _ in sizes))
        peak_rss = max(peak_rss, sum(r for _, r in sizes))
        if (
            cpu_when_joined is None
            and len(log_times(run / "logs", "device*.log", "joined")) >= devices
        ):
            cpu_when_joined = sum(cpu_seconds(pid) for pid in tree)
        time.sleep(0.25)
    ended = time.time()
    if launch.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {launch.stderr.read()[-2000:]}")
    joined = log_times(run / "logs", "device*.log", "joined")
    return {
        "method": method,
        "processes": len(list((run / "logs").glob("*.log"))),
        "cloud_serving_s": round(min(log_times(run / "logs", "cloud.log", "serving")) - started, 2),
        "devices_joined_s": round(max(joined) - started, 2),
        "devices": len(joined),
        "first_record_s": round(
            min(log_times(run / "logs", "cloud.log", "cloud round 1:")) - started, 2
        ),
        "end_s": round(ended - started, 2),
        "cpu_s_when_joined": None if cpu_when_joined is None else round(cpu_when_joined, 1),
        "peak_pss_mb": round(peak_pss / 1024),
        "peak_rss_mb": round(peak_rss / 1024),
    }


def table(results: list[dict], limit: dict) -> str:
    rows = [
        ("processes (log files)", "processes", "{}"),
        ("cloud serving, s", "cloud_serving_s", "{:.1f}"),
        ("**every device joined (ready to train), s**", "devices_joined_s", "{:.1f}"),
        ("first round's record, s", "first_record_s", "{:.1f}"),
        ("launch ended, s", "end_s", "{:.1f}"),
        ("CPU s of all processes when joined", "cpu_s_when_joined", "{}"),
        ("**peak PSS summed, MB**", "peak_pss_mb", "{:,}"),
        ("peak RSS summed, MB", "peak_rss_mb", "{:,}"),
    ]
    methods = [r["method"] for r in results]
    lines = ["| | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for label, key, form in rows:
        cells = [form.format(r[key]) if r[key] is not None else "-" for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nlimit: one node's imports take {limit['node_import_cpu_s']:.2f} CPU s in a fresh process; "
        f"exec's {limit['processes']} processes pay {limit['imports_exec_s']:.1f} s of wall time for them on "
        f"{limit['cores']} cores, fork's one server {limit['node_import_cpu_s']:.1f} s"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="large", help="the preset or topology file (default large)"
    )
    parser.add_argument("--methods", nargs="+", default=["fork", "exec"], choices=["fork", "exec"])
    parser.add_argument(
        "--warm",
        action="store_true",
        help="one launch first (not measured) fills a compilation cache every measured launch "
        "then shares: a second launch on the machine (default: each an empty cache of its own)",
    )
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    from hierfl.data.loading import load_topology

    topology = load_topology(args.preset)
    print(
        f"{args.preset}: {topology.num_devices} devices, {len(topology.plants)} plants; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="hierfl-startup-") as folder:
        folder = Path(folder)
        if args.warm:
            measure(args.preset, "fork", folder, topology.num_devices, folder / "cache")
        for method in args.methods:
            cache = folder / "cache" if args.warm else folder / f"cache-{method}"
            results.append(measure(args.preset, method, folder, topology.num_devices, cache))
            print(json.dumps(results[-1]), flush=True)
    node_import = import_cpu_seconds("hierfl.runtime.host")
    cores = len(os.sched_getaffinity(0))
    processes = results[0]["processes"] - (1 if results[0]["method"] == "fork" else 0)
    limit = {
        "node_import_cpu_s": round(node_import, 2),
        "processes": processes,
        "cores": cores,
        "imports_exec_s": round(processes * node_import / cores, 1),
    }
    print(table(results, limit))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    result = {"preset": args.preset, "warm": args.warm, "results": results, "limit": limit}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
