"""`hierfl dashboard` in a real headless browser (the system's Chromium, driven by Playwright)
following a real `hierfl launch`: the tree, the round counter and a plant's curve, a killed
device, a refused message, and `/metrics` from the same process. The screenshot is kept in
`tests/artifacts/dashboard.png`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import zmq
from prometheus_client.parser import text_string_to_metric_families

from conftest import kill9, write_topology
from hierfl.data.loading import load_topology
from hierfl.runtime.launch import Launch, node_name

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
HEARTBEAT_TIMEOUT = 2.0
NOTICED_WITHIN = HEARTBEAT_TIMEOUT + 1.0 + 1.0 + 3.0
"""The heartbeat timeout, the edge's status interval, the page's poll, and slack for a loaded machine."""


def start_dashboard(run_dir: Path) -> tuple[subprocess.Popen, str]:
    """`hierfl dashboard RUN_DIR` on a free loopback port; the process and its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hierfl", "dashboard", str(run_dir), "--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = process.stdout.readline()
    assert "http://" in line, line + process.stdout.read()
    return process, line.split()[-1]


def send_garbage(address: str) -> None:
    """A message no edge accepts, from a sender it does not know."""
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.ROUTING_ID, b"intruder")
    socket.connect(address)
    socket.send_multipart([b"not a hierfl message"])
    time.sleep(0.5)
    socket.close(linger=0)
    context.term()


def wait_until(condition, what: str, timeout: float = 60.0):
    """`condition()`'s first true value, polled; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def metric_samples(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_the_dashboard_follows_a_launch_in_a_browser(folder):
    assert CHROMIUM.exists(), "needs Debian's chromium: apt-get install -y chromium"
    from playwright.sync_api import expect, sync_playwright

    topology_file = write_topology(
        folder,
        name="dash",
        rounds=1000,
        devices_a=3,
        device_deadline=4.0,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        extra="min_device_participation = 0.5\nmin_edge_participation = 0.5",
    )
    out = folder / "run"
    launch = Launch(load_topology(topology_file), str(topology_file), out)
    dashboard, url = start_dashboard(out)  # before the run exists: it waits for it
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            expect(page.locator("#problems")).to_contain_text("run", timeout=10_000)
            launch.start()

            # Every device of the topology is in the tree.
            devices = page.locator("[data-device]")
            expect(devices).to_have_count(5, timeout=60_000)
            wanted = {
                f"plant-{p}/line-1/dev-00{i}"
                for p, n in (("a", 3), ("b", 2))
                for i in range(1, n + 1)
            }
            assert {devices.nth(i).get_attribute("data-device") for i in range(5)} == wanted

            # The round counter and plant-a's accuracy curve advance.
            curve = page.locator('[data-chart="accuracy"] polyline[data-series="plant-a"]')
            counter = page.locator("#round")

            def shown() -> tuple[int, int]:
                """Points on plant-a's curve, rounds finished in the header."""
                points = curve.get_attribute("data-points") if curve.count() else 0
                return int(points or 0), int(counter.get_attribute("data-finished") or 0)

            before = wait_until(lambda: min(shown()) >= 2 and shown(), "round 2 on the page")
            after = wait_until(lambda: min(shown()) > max(before) and shown(), "a later round")
            points = after[0]

            # A device killed is marked as not answering within the heartbeat timeout.
            victim = page.locator('[data-device="plant-a/line-1/dev-003"]')
            expect(victim).not_to_have_attribute("data-state", "not answering")
            kill9(launch.processes[node_name("plant-a/line-1/dev-003")])
            killed = time.monotonic()
            expect(victim).to_have_attribute(
                "data-state", "not answering", timeout=NOTICED_WITHIN * 1000
            )
            noticed = time.monotonic() - killed
            print(f"dev-003 shown as not answering {noticed:.1f} s after kill -9")
            assert "silent for" in victim.get_attribute("title")

            # A refused message appears with its reason.
            send_garbage(f"ipc://{folder}/a.ipc")
            refusals = page.locator("#refusals")
            expect(refusals).to_contain_text("malformed", timeout=10_000)
            expect(refusals).to_contain_text("intruder")
            expect(page.locator("#rejected")).to_contain_text("plant-a")

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
            print(f"page load {load:.0f} ms; screenshot {ARTIFACTS / 'dashboard.png'}")

            # /metrics, parsed by prometheus_client's own parser, shows the same.
            metrics = metric_samples(page.request.get(url + "metrics").text())
            nodes = {
                (s.labels["tier"], s.labels["plant"], s.labels["state"]): s.value
                for s in metrics["hierfl_nodes"]
            }
            assert nodes[("device", "plant-a", "not answering")] == 1
            rejected = {
                (s.labels["node"], s.labels["reason"]) for s in metrics["hierfl_rejected_messages"]
            }
            assert ("plant-a", "malformed") in rejected
            assert metrics["hierfl_rounds_finished"][0].value >= points
            browser.close()
    finally:
        launch.stop(grace=0)
        dashboard.terminate()
        dashboard.wait(timeout=10)


def test_the_dashboard_keeps_serving_a_missing_run_directory(tmp_path):
    """Pointed at a directory that does not exist, it says so and keeps serving."""
    import urllib.request

    process, url = start_dashboard(tmp_path / "nothing-here")
    try:
        with urllib.request.urlopen(url + "api/state") as reply:
            assert b"does not exist" in reply.read()
    finally:
        process.terminate()
        process.wait(timeout=10)
