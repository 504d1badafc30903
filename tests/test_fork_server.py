"""The fork server `hierfl launch` starts its nodes from (`hierfl.runtime.fork_server`): real
forks of a real pre-imported Python, their exit statuses, signals and logs, and its refusal
to fork a process whose threads would not survive it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import write_topology
from hierfl.runs.checkpoint import load_params
from hierfl.runtime.fork_server import ForkServer
from hierfl.runtime.launch import node_env

HIERFL = Path(sys.executable).with_name("hierfl")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fork server is Linux only")


@pytest.fixture
def server(tmp_path):
    server = ForkServer(node_env(os.environ), tmp_path / "fork-server.log")
    yield server
    server.close()


def test_a_forked_node_runs_the_command_line_and_reports_its_exit_status(server, tmp_path):
    log = tmp_path / "node.log"
    node = server.start(["cloud", str(tmp_path / "missing.toml"), "--out", str(tmp_path)], log)
    assert node.wait(timeout=60) == 2
    assert "missing.toml" in log.read_text()
    assert node.pid != server.process.pid and node.poll() == 2
    server_log = (tmp_path / "fork-server.log").read_text()
    assert f"pid {node.pid}: hierfl cloud" in server_log
    assert f"pid {node.pid}: exited with status 2" in server_log


def test_signals_reach_a_forked_node_and_kill_9_reads_as_the_signal(server, folder):
    topology = write_topology(folder)
    cloud = server.start(
        ["cloud", str(topology), "--out", str(folder / "run")], folder / "cloud.log"
    )
    edge = server.start(["edge", str(topology), "--plant", "plant-a"], folder / "edge.log")
    deadline = time.monotonic() + 120
    while "serving" not in text_of(folder / "edge.log"):
        assert time.monotonic() < deadline and edge.poll() is None, text_of(folder / "edge.log")
        time.sleep(0.1)
    assert open(f"/proc/{edge.pid}/comm").read().strip() == "hierfl-edge"
    edge.send_signal(signal.SIGTERM)
    assert edge.wait(timeout=30) == 0
    assert (folder / "edge.log").read_text().rstrip().endswith("stopped")
    with pytest.raises(subprocess.TimeoutExpired):
        cloud.wait(timeout=0.2)
    cloud.kill()
    assert cloud.wait(timeout=30) == -signal.SIGKILL


def test_a_native_thread_makes_a_process_unsafe_to_fork():
    # A thread named as native libraries name theirs (pyarrow's jemalloc: jemalloc_bg_thd,
    # which ForkServer turns off with JE_ARROW_MALLOC_CONF).
    before, after = safety_before_and_after(
        "import threading, time\n"
        "def run():\n"
        "    open(f'/proc/self/task/{threading.get_native_id()}/comm', 'w').write('bg_worker')\n"
        "    time.sleep(60)\n"
        "threading.Thread(target=run, daemon=True).start()\n"
        "time.sleep(0.5)\n"
    )
    assert before == [] and any("bg_worker" in problem for problem in after)


def test_a_process_with_a_jax_backend_is_not_safe_to_fork():
    before, after = safety_before_and_after("import jax\njax.devices()\n")
    assert before == [] and any("JAX backend" in problem for problem in after)


def safety_before_and_after(setup: str) -> list[list[str]]:
    """`fork_safety_problems()` in a fresh node process, before and after running `setup`."""
    code = (
        "import json\n"
        "from hierfl.runtime.fork_server import fork_safety_problems as problems\n"
        f"before = problems()\n{setup}print(json.dumps([before, problems()]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=node_env(os.environ),
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_forked_and_executed_launches_train_the_same_model(folder):
    topology = write_topology(folder, heartbeat_timeout=30.0)
    models = {}
    for method in ("fork", "exec"):
        out = folder / method
        done = subprocess.run(
            [
                str(HIERFL),
                "launch",
                str(topology),
                "--out",
                str(out),
                "--quiet",
                "--start-method",
                method,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert (out / "logs" / "fork-server.log").exists() == (method == "fork")
        models[method] = load_params(out / "model.npz")
    assert jax.tree.structure(models["fork"]) == jax.tree.structure(models["exec"])
    for forked, executed in zip(jax.tree.leaves(models["fork"]), jax.tree.leaves(models["exec"])):
        np.testing.assert_array_equal(forked, executed)


def text_of(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
