"""What following a live launch costs: `hierfl dashboard`'s page load, state latency, CPU and memory.

    python benchmarks/dashboard.py                        # the demo preset, 60 s of following
    python benchmarks/dashboard.py --preset large --seconds 120 --rounds 20
    python benchmarks/dashboard.py --json dashboard.json

A `hierfl launch` of `--preset` runs in a temporary folder; a `hierfl dashboard` process
follows its run directory from before the first round, as an operator would, and a headless
Chromium (Debian's `/usr/bin/chromium`, driven by Playwright) keeps the page open, polling
once a second. Every second the dashboard process's CPU time and resident memory are read
from `/proc/<pid>`. Printed, from the same run:

- the page's load time (navigation start to `loadEventEnd`) and the time until the tree
  shows every device, median of `--loads` fresh page loads once training runs;
- `/api/state`: the dashboard's answer time and size, median of 20 requests, against the
  baseline any hand-written monitor pays: reading and JSON-parsing the same files
  (`metrics.jsonl`, `run.json`, the status files) in one Python process, with the ratio;
- the dashboard process's mean CPU (% of one core) and its median and peak resident memory
  while following, beside the machine's load.

`--json PATH` writes the figures; the last stdout line is the same JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

from hierfl.data.loading import load_topology
from hierfl.errors import HierflError
from hierfl.runtime.launch import Launch
from hierfl.topology import preset_path

CHROMIUM = "/usr/bin/chromium"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def resident_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_until(condition, what: str, timeout: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def rounds_recorded(run_dir: pathlib.Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def read_like_a_script(run_dir: pathlib.Path) -> int:
    """The plain baseline: every file the page is built from, read and parsed once."""
    parsed = [json.loads(line) for line in (run_dir / "metrics.jsonl").open() if line.strip()]
    parsed.append(json.loads((run_dir / "run.json").read_text()))
    for status in sorted((run_dir / "status").glob("*.json")):
        parsed.append(json.loads(status.read_text()))
    return len(parsed)


def state_timings(url: str, run_dir: pathlib.Path, repeats: int = 20) -> dict[str, float]:
    served, plain, size = [], [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        with urllib.request.urlopen(url + "api/state", timeout=10) as reply:
            size = len(reply.read())
        served.append(time.perf_counter() - started)
        started = time.perf_counter()
        read_like_a_script(run_dir)
        plain.append(time.perf_counter() - started)
    served_ms, plain_ms = statistics.median(served) * 1e3, statistics.median(plain) * 1e3
    return {
        "state_ms": served_ms,
        "state_kb": size / 1024,
        "plain_read_ms": plain_ms,
        "state_over_plain": served_ms / plain_ms,
    }


def page_loads(url: str, devices: int, loads: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    load_ms, tree_ms = [], []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            for _ in range(loads):
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                started = time.perf_counter()
                page.goto(url, wait_until="load")
                load_ms.append(
                    page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
                )
                shown = "document.querySelectorAll('[data-device]').length"
                wait_until(lambda: page.evaluate(shown) >= devices, "the whole tree", 60, 0.02)
                tree_ms.append((time.perf_counter() - started) * 1e3)
                page.close()
        finally:
            browser.close()
    return {"page_load_ms": statistics.median(load_ms), "tree_ms": statistics.median(tree_ms)}


def follow(url: str, pid: int, seconds: float) -> dict[str, float]:
    """The dashboard's CPU and memory while a browser keeps the page open for `seconds`."""
    from playwright.sync_api import sync_playwright

    memory: list[float] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url, wait_until="load")
            cpu_before, started = cpu_seconds(pid), time.perf_counter()
            while time.perf_counter() - started < seconds:
                memory.append(resident_mb(pid))
                page.wait_for_timeout(1000)
            cpu = (cpu_seconds(pid) - cpu_before) / (time.perf_counter() - started)
        finally:
            browser.close()
    return {
        "cpu_percent": 100 * cpu,
        "rss_median_mb": statistics.median(memory),
        "rss_peak_mb": max(memory),
    }


def quietly(wait) -> None:
    """Follows the launch in the background; a stop at the end is no failure to report."""
    try:
        wait(poll=0.5)
    except HierflError:
        pass


def run(preset: str, rounds: int | None, seconds: float, loads: int) -> dict[str, Any]:
    source = preset_path(preset) if not pathlib.Path(preset).exists() else pathlib.Path(preset)
    topology = load_topology(source)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="hfl-dash-", dir="/tmp"))
    run_dir = folder / "run"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [
        sys.executable,
        "-m",
        "hierfl",
        "dashboard",
        str(run_dir),
        "--bind",
        f"127.0.0.1:{port}",
    ]
    dashboard = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    launch = Launch(topology, str(source), run_dir, rounds=rounds)
    waiter = threading.Thread(target=lambda: quietly(launch.wait), daemon=True)
    try:
        wait_until(lambda: answers(url), "the dashboard", 60)
        started = time.perf_counter()
        launch.start()
        waiter.start()
        wait_until(lambda: rounds_recorded(run_dir) >= 1, "the first round", 1800)
        ready_s = time.perf_counter() - started
        figures = {
            "preset": preset,
            "devices": topology.num_devices,
            "first_round_s": ready_s,
            **page_loads(url, topology.num_devices, loads),
            **state_timings(url, run_dir),
            **follow(url, dashboard.pid, seconds),
            "rounds_followed": rounds_recorded(run_dir),
            "load_average": os.getloadavg()[0],
            "cpus": os.cpu_count(),
        }
    finally:
        launch.stop(grace=0)
        dashboard.terminate()
        dashboard.wait(timeout=20)
        shutil.rmtree(folder, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo", help="a preset name or topology file (demo)")
    parser.add_argument("--rounds", type=int, default=None, help="cloud rounds of the launch")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to follow (60)")
    parser.add_argument("--loads", type=int, default=3, help="fresh page loads to time (3)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here too")
    args = parser.parse_args()
    figures = run(args.preset, args.rounds, args.seconds, args.loads)
    print(
        f"{figures['preset']}: {figures['devices']} devices, first round after "
        f"{figures['first_round_s']:.1f} s; followed {figures['rounds_followed']} rounds\n"
        f"page load {figures['page_load_ms']:.0f} ms, every device in the tree after "
        f"{figures['tree_ms']:.0f} ms\n"
        f"/api/state {figures['state_ms']:.1f} ms ({figures['state_kb']:.0f} kB) vs reading and "
        f"parsing the same files in a script {figures['plain_read_ms']:.1f} ms: "
        f"{figures['state_over_plain']:.2f}x\n"
        f"dashboard process while following: {figures['cpu_percent']:.1f}% of one core, "
        f"{figures['rss_median_mb']:.0f} MB resident (peak {figures['rss_peak_mb']:.0f} MB); "
        f"load average {figures['load_average']:.1f} on {figures['cpus']} cores"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
