"""`hierfl launch`: the whole topology as local OS processes, with live progress.

The launcher starts the cloud, one edge per plant and the devices (each a `python -m
hierfl cloud|edge|device|devices ...`), sends each one's output to
`RUN_DIR/logs/<node>.log`, and follows the cloud's `metrics.jsonl` to show progress:
round, the task's score, devices answered per plant, late updates. It ends when the cloud has
trained its rounds (the cloud tells the edges to stop, the edges tell the devices); when
any node exits with an error (`NodeFailure`, naming it and its log's last lines), on
Ctrl-C or an error it stops every process (SIGTERM, then SIGKILL after a grace period).
Node processes are the same ones a multi-machine deployment runs by hand; on Linux they are
forked from one process that has imported their modules already (`hierfl.runtime.node_start`,
`--start-method`), which saves each node about 3 s of CPU and 100 MB.

Devices run one per process (`hierfl device`) or many of a plant per device host
(`hierfl devices`, see `hierfl.runtime.host`), as `[runtime] devices_per_process` says
(`device_groups`): a process per device costs about 300 MB, so a host per plant is what
lets one machine launch a federation of a thousand devices.

With `[privacy] homomorphic = true` the launcher makes a fresh CKKS key pair in
`RUN_DIR/keys/` (kept on `--resume`), gives the cloud the public context and every edge
the secret one, and each edge writes the final model it decrypted to
`RUN_DIR/model-<plant>.npz` (`final_models()`; the cloud holds no plaintext model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hierfl.data.scoring import ACCURACY, Metric
from hierfl.errors import HierflError
from hierfl.runs.live import STATUS_DIR
from hierfl.runs.metrics import METRICS_FILE
from hierfl.runtime.device import STAYED_OUT, STAYS_OUT
from hierfl.runtime.node import node_name
from hierfl.runtime.node_start import Process, default_start_method, starter
from hierfl.topology import Device, Topology

SECRET_FILE, PUBLIC_FILE = (
    "ckks-secret.bin",
    "ckks-public.bin",
)  # as `hierfl.runtime.encrypted` (which needs TenSEAL) names them

GRACE_SECONDS = 10.0
NODE_XLA_FLAGS = ("--xla_force_host_platform_device_count=1", "--xla_cpu_multi_thread_eigen=false")
"""Node processes are many per machine: one XLA CPU device each, no intra-op thread pool."""


def node_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a node process: `environ`, its XLA flags kept but for the two a
    node sets itself (`NODE_XLA_FLAGS`)."""
    names = {flag.split("=")[0] for flag in NODE_XLA_FLAGS}
    kept = [f for f in environ.get("XLA_FLAGS", "").split() if f.split("=")[0] not in names]
    return {**environ, "XLA_FLAGS": " ".join([*kept, *NODE_XLA_FLAGS])}


class NodeFailure(HierflError):
    """A runtime node exited with an error (the cloud, an edge or a device process)."""


AUTO_PROCESS_PER_DEVICE = 16
"""Up to this many devices in the federation, `devices_per_process = "auto"` gives each
device its own process; above it, one host per plant. Measured resident memory of a device
process: about 370 MB on digits, 600 MB on the bearing task, so 16 take 6 to 10 GB; a host
of 104 bearing devices takes the same 600 MB as one device (a device's own state is well
under 1 MB), which is what lets the 1,040 devices of `large` fit in 10 processes."""


def device_groups(topology: Topology) -> list[tuple[Device, ...]]:
    """The devices of each device process `hierfl launch` starts, plant by plant, in device order.

    `[runtime] devices_per_process`: N puts up to N consecutive devices of a plant in
    each process, "line" a line's, "plant" a plant's; "auto" is 1 for federations of
    at most `AUTO_PROCESS_PER_DEVICE` devices, else "plant". A group never spans plants.
    """
    grouping = topology.runtime.devices_per_process
    if grouping == "auto":
        grouping = 1 if topology.num_devices <= AUTO_PROCESS_PER_DEVICE else "plant"
    groups: list[tuple[Device, ...]] = []
    for plant in topology.plants:
        if grouping == "plant":
            groups.append(plant.devices)
        elif grouping == "line":
            groups += [line.devices for line in plant.lines]
        else:
            groups += [
                plant.devices[i : i + grouping] for i in range(0, len(plant.devices), grouping)
            ]
    return groups


def device_process(topology: Topology, group: tuple[Device, ...]) -> tuple[str, list[str]]:
    """The node name (its log file's) and `hierfl` arguments of the process running `group`.

    One device: `device --id ID`; a host names its whole plant (`devices --plant P`), a
    whole line (`--line L`) or its devices one by one (`--ids ...`).
    """
    first = group[0]
    if len(group) == 1:
        return node_name(first.id), ["device", "--id", first.id]
    plant = topology.plant(first.plant)
    if group == plant.devices:
        return f"devices-{plant.name}", ["devices", "--plant", plant.name]
    line = next(line for line in plant.lines if line.name == first.line)
    if group == line.devices:
        return f"devices-{plant.name}.{line.name}", [
            "devices",
            "--plant",
            plant.name,
            "--line",
            line.name,
        ]
    name = f"devices-{first.id.replace('/', '.')}+{len(group) - 1}"  # its first device and how many follow
    return name, ["devices", "--plant", plant.name, "--ids", *(device.id for device in group)]


class Launch:
    """The processes of one launched federation. `start()`, then `wait()`; `stop()` on error or Ctrl-C."""

    def __init__(
        self,
        topology: Topology,
        source: str,
        run_dir: Path,
        *,
        rounds: int | None = None,
        resume: bool = False,
        publish: str | None = None,
        emulate_speeds: bool = False,
        start_method: str | None = None,
    ):
        self.topology = topology
        self.emulate_speeds = emulate_speeds
        self.source = source
        self.run_dir = Path(run_dir)
        self.rounds = rounds or topology.federation.cloud_rounds
        self.resume = resume
        self.publish = publish
        self.logs = self.run_dir / "logs"
        self.processes: dict[str, Process] = {}
        self.starter = starter(start_method or default_start_method(), self.logs)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hierfl", *args]

    def node_commands(self) -> dict[str, list[str]]:
        """Every node's command line, cloud first, then edges, then devices (one per process or hosted)."""
        resume = ["--resume"] if self.resume else []
        publish = ["--publish", self.publish] if self.publish else []
        state = str(self.run_dir / "checkpoints")
        he = self.topology.privacy.homomorphic
        cloud_he = ["--he-context", str(self.keys / PUBLIC_FILE)] if he else []
        commands = {
            "cloud": self.command(
                "cloud",
                self.source,
                "--out",
                str(self.run_dir),
                "--rounds",
                str(self.rounds),
                *resume,
                *publish,
                *cloud_he,
            )
        }
        for plant in self.topology.plants:
            edge_he = (
                [
                    "--he-context",
                    str(self.keys / SECRET_FILE),
                    "--model-out",
                    str(self.final_model(plant.name)),
                ]
                if he
                else []
            )
            if self.topology.personalization.enabled:  # the plant's personalized model
                edge_he = ["--model-out", str(self.final_model(plant.name))]
            commands[f"edge-{plant.name}"] = self.command(
                "edge",
                self.source,
                "--plant",
                plant.name,
                "--state",
                state,
                "--status",
                str(self.run_dir / STATUS_DIR),
                *resume,
                *edge_he,
                *(["--emulate-speeds"] if self.emulate_speeds else []),
            )
        for group in device_groups(self.topology):
            name, (command, *args) = device_process(self.topology, group)
            commands[name] = self.command(command, self.source, *args, "--state", state, *resume)
        return commands

    @property
    def keys(self) -> Path:
        """Where the launcher keeps the run's CKKS contexts (homomorphic encryption)."""
        return self.run_dir / "keys"

    def final_model(self, plant: str) -> Path:
        """Where plant `plant`'s edge writes the final model under homomorphic encryption, or
        its personalized model with personalization."""
        return self.run_dir / f"model-{plant}.npz"

    def final_models(self) -> list[Path]:
        """The final model files of the run that exist: the cloud's `model.npz`, or under HE each plant's."""
        if not self.topology.privacy.homomorphic:
            paths = [self.run_dir / "model.npz"]
        else:
            paths = [self.final_model(plant) for plant in self.topology.plant_names]
        return [path for path in paths if path.exists()]

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.topology.privacy.homomorphic and not (
            self.resume and (self.keys / SECRET_FILE).exists()
        ):
            from hierfl.privacy.homomorphic import CkksParameters
            from hierfl.runtime.encrypted import write_key_files

            write_key_files(
                self.keys, CkksParameters.of(self.topology.privacy), overwrite=True
            )  # a new run, a new key
        env = node_env(os.environ)
        for name, command in self.node_commands().items():
            self.start_node(name, command, env)

    def start_node(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> Process:
        """Starts node `name` (its output appended to `logs/<name>.log`) with the launch's start method."""
        process = self.starter.start(
            command, env or node_env(os.environ), self.logs / f"{name}.log"
        )
        self.processes[name] = process
        return process

    def wait(
        self, on_record: Callable[[dict[str, Any]], None] | None = None, poll: float = 0.2
    ) -> list[dict[str, Any]]:
        """Follows the run until the cloud exits; returns its records.

        Every node is supervised: one that exits with an error (the cloud, an edge, a
        device process) stops the whole launch with NodeFailure naming it and the end of
        its log, so a run never reports success with a plant missing.
        """
        metrics = self.run_dir / METRICS_FILE
        seen = 0
        history: list[dict[str, Any]] = []
        cloud = self.processes["cloud"]
        while True:
            done = cloud.poll() is not None
            for record in read_new_records(metrics, seen):
                seen += 1
                history.append(record)
                if on_record is not None:
                    on_record(record)
            failed = self.failed_node()
            if failed is not None:
                self.stop()
                raise self.failure(failed)
            if done:
                break
            time.sleep(poll)
        self.stop(grace=GRACE_SECONDS)
        return history

    def failed_node(self) -> str | None:
        """The first node (in start order) that has exited with a non-zero status, or None.

        A device process that stayed out (`STAYED_OUT`: its data could not be used, it said
        why in its log) has not failed: its edge and the cloud train on without it.
        """
        for name, process in self.processes.items():
            status = process.poll()
            if status in (None, 0) or (status == STAYED_OUT and name in self.device_nodes):
                continue
            return name
        return None

    @property
    def device_nodes(self) -> set[str]:
        return {name for name in self.processes if name != "cloud" and not name.startswith("edge-")}

    def stayed_out(self) -> list[str]:
        """Why each device that stayed out did (the reason its process logged)."""
        reasons = []
        for name in sorted(self.device_nodes):
            try:
                text = (self.logs / f"{name}.log").read_text(errors="replace")
            except FileNotFoundError:
                continue
            reasons += [
                line.split(STAYS_OUT, 1)[1] for line in text.splitlines() if STAYS_OUT in line
            ]
        return reasons

    def failure(self, name: str, lines: int = 12) -> NodeFailure:
        """NodeFailure for node `name`: its exit status and the last `lines` lines of its log."""
        status = self.processes[name].returncode
        try:
            tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            tail = ["(no log)"]
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        return NodeFailure(
            f"node {name} {how}; stopped every node. The end of {self.logs / name}.log:\n"
            + "\n".join("  " + line for line in tail)
        )

    def stop(self, grace: float = 5.0) -> None:
        """Waits up to `grace` s for the nodes to exit by themselves, then SIGTERM, then SIGKILL."""
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        alive = [p for p in self.processes.values() if p.poll() is None]
        for process in alive:
            process.send_signal(signal.SIGTERM)
        for process in alive:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.starter.close()


def read_new_records(path: Path, seen: int) -> list[dict[str, Any]]:
    """The complete records of `metrics.jsonl` after the first `seen` (a line still being written is left)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete
    return [json.loads(line) for line in lines[seen:] if line.strip()]


class LaunchProgress:
    """Rich live progress of a launched run: rounds, the task's score, devices answered per plant, late updates."""

    def __init__(self, total: int, title: str, enabled: bool = True, metric: Metric = ACCURACY):
        self.metric = metric
        short = "acc" if metric.name == "accuracy" else metric.name
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                short + " {task.fields[score]}  {task.fields[answered]}  late {task.fields[late]}"
            ),
            TimeElapsedColumn(),
            disable=not enabled,
        )
        self.task = self.progress.add_task(
            title, total=total, score="-", answered="waiting for nodes", late=0
        )

    def __enter__(self) -> LaunchProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, record: dict[str, Any]) -> None:
        expected = record.get("devices_expected", {})
        answered = record.get("devices_answered", {})
        per_plant = "  ".join(
            f"{plant} {min(answered.get(plant) or [0])}/{n}" for plant, n in expected.items()
        )
        self.progress.update(
            self.task,
            completed=record["round"],
            score=f"{record[self.metric.name]:.4f}",
            answered=per_plant,
            late=record.get("late_updates", 0),
        )
