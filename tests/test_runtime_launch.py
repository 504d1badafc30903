"""The runtime end to end: every node a real OS process on loopback (ipc://).

`hierfl launch` must train the same global model as `hierfl simulate` (all devices
answering), with and without update compression, under local DP and under secure
aggregation (where the edges apply the unmasked sum); and training must survive kill -9 of
devices, of an edge and of the cloud, each restarted (`--resume`) and rejoining.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import zmq

from conftest import kill9, wait_for_record, write_topology
from hierfl.data.loading import load_topology
from hierfl.data.plan import make_plan
from hierfl.inference.artifact import decode_artifact
from hierfl.inference.export import export_model
from hierfl.inference.publisher import decode_publication, subscribe
from hierfl.inference.server import InferenceServer, ServerConfig
from hierfl.runs.checkpoint import load_params
from hierfl.runtime.launch import Launch, node_name, read_new_records
from hierfl.sim.engine import init_global_model, simulate

HIERFL = Path(sys.executable).parent / "hierfl"

CODECS = """
[compression.device_to_edge]
codec = "int8"
block_size = 64

[compression.edge_to_cloud]
codec = "topk"
fraction = 0.1

[aggregation.edge]
rule = "mean"
clip_norm = 0.05

[aggregation.cloud]
optimizer = "adam"

[attack]
kind = "gaussian"
fraction = 0.5
scale = 0.01
"""


def launch_to_the_end(topology: Path, out: Path) -> list[dict]:
    """Runs `hierfl launch` on `topology` into `out`; its metrics records. On failure, shows every node's log tail."""
    result = subprocess.run(
        [str(HIERFL), "launch", str(topology), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "160"},
    )
    logs = (
        "".join(
            f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((out / "logs").glob("*.log"))
        )
        if (out / "logs").exists()
        else ""
    )
    assert result.returncode == 0, result.stderr + logs
    assert "simulation summary" in result.stdout
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def max_difference(params, other) -> float:
    """The largest absolute difference between two parameter trees."""
    return max(
        jax.tree.leaves(
            jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), params, other)
        )
    )


LOCAL_DP = """
[privacy]
dp = "device"
clip_norm = 0.5
noise_multiplier = 0.3
sample_rate = 0.7
"""

EDGE_DP = """
[privacy]
dp = "edge"
clip_norm = 0.5
noise_multiplier = 0.3
sample_rate = 0.8
clip_quantile = 0.5
quantile_noise = 0.5
"""

CLOUD_DP = """
[privacy]
dp = "cloud"
clip_norm = 0.5
noise_multiplier = 0.5
"""

SECURE_EDGE_DP = """
[privacy]
secure_aggregation = true
dp = "edge"
clip_norm = 0.5
noise_multiplier = 0.3
sample_rate = 0.8
"""

PRIVATE = (LOCAL_DP, EDGE_DP, CLOUD_DP, SECURE_EDGE_DP)

SCAFFOLD = "\n# scaffold\n"  # a marker: the test switches the algorithm


@pytest.mark.parametrize(
    "codecs",
    ["", CODECS, LOCAL_DP, EDGE_DP, CLOUD_DP, SCAFFOLD, SECURE_EDGE_DP],
    ids=[
        "float32-fedavg",
        "fednova-unequal-steps-int8-topk-clipped-adam-gaussian-attack",
        "local-dp-sampled",
        "edge-dp-adaptive-clip",
        "cloud-dp",
        "scaffold",
        "secure-aggregation-edge-dp-sampled",
    ],
)
def test_launch_trains_the_same_model_as_simulate(folder, codecs):
    # A long heartbeat timeout: on a loaded machine no edge may take the cloud for gone (and train offline).
    topology = write_topology(folder, codecs=codecs, heartbeat_timeout=30.0)
    if codecs == CODECS:
        # FedNova with plant-b's line at 1 local step against plant-a's 3.
        head, line_b, tail = (
            topology.read_text()
            .replace("seed = 7\n", 'seed = 7\nalgorithm = "fednova"\n')
            .rpartition("devices = 2\n")
        )
        topology.write_text(head + line_b + "local_steps = 1\n" + tail)
    if codecs == SCAFFOLD:
        topology.write_text(
            topology.read_text().replace("seed = 7\n", 'seed = 7\nalgorithm = "scaffold"\n')
        )
    edge_rounds = (
        1 if codecs == CLOUD_DP else 2
    )  # the cloud's noise bounds one edge round's updates
    topology.write_text(
        topology.read_text().replace("edge_rounds = 2", f"edge_rounds = {edge_rounds}")
    )
    out = folder / "run"
    records = launch_to_the_end(topology, out)
    assert [r["round"] for r in records] == [1, 2]
    assert all(
        r["devices_answered"] == {"plant-a": [2] * edge_rounds, "plant-b": [2] * edge_rounds}
        for r in records
    )
    assert all(
        r["rejected_messages"] == {"cloud": {}, "plant-a": {}, "plant-b": {}} for r in records
    )
    assert sorted(p.name for p in (out / "logs").iterdir()) == sorted(
        ["cloud.log", "edge-plant-a.log", "edge-plant-b.log", "fork-server.log"]
        + [f"device-plant-{p}.line-1.dev-00{i}.log" for p in "ab" for i in (1, 2)]
    )

    reference = simulate(topology)
    difference = max_difference(reference.params, load_params(out / "model.npz"))
    print(f"max |launch - simulate| = {difference:.3g}")
    assert difference <= 1e-5
    assert records[-1]["accuracy"] == pytest.approx(reference.history[-1]["accuracy"], abs=1e-3)
    if codecs in PRIVATE:
        assert [r["epsilon"] for r in records] == [h["epsilon"] for h in reference.history]
        assert [r["clip_norm"] for r in records] == pytest.approx(
            [h["clip_norm"] for h in reference.history], rel=1e-6
        )
    if codecs == SECURE_EDGE_DP:
        assert all(
            r["secure_aggregation_failures"] == {"plant-a": 0, "plant-b": 0} for r in records
        )
    if codecs == EDGE_DP:  # adaptive clipping moved the clip norm, the same way in both
        assert records[-1]["clip_norm"] != 0.5


def wait_for_offline_rounds(
    run_dir: Path, edges: list[str], offsets: dict[str, int], timeout: float = 120.0
) -> None:
    """Waits until every edge's log, past `offsets`, says it went offline and closed an offline edge round."""
    marker = "the cloud is silent; running offline edge rounds"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = {
            edge: (run_dir / "logs" / f"{edge}.log").read_text()[offsets[edge] :] for edge in edges
        }
        if all(marker in text and "closed" in text.split(marker, 1)[1] for text in logs.values()):
            return
        time.sleep(0.1)
    raise AssertionError(
        "gave up waiting for offline edge rounds:\n"
        + "\n".join(f"--- {e}\n{t[-1500:]}" for e, t in logs.items())
    )


def test_devices_edges_and_the_cloud_die_and_come_back(folder):
    """kill -9 a third of plant-a's devices, then plant-b's edge, then the cloud; each comes back."""
    topology_file = write_topology(
        folder,
        name="faults",
        rounds=1000,
        devices_a=3,
        device_deadline=4.0,
        extra="min_device_participation = 0.5\nmin_edge_participation = 0.5",
    )
    topology = load_topology(topology_file)
    out = folder / "run"
    launch = Launch(topology, str(topology_file), out)
    commands = launch.node_commands()
    launch.start()
    try:
        # 1. A third of plant-a's devices die in the middle of training: rounds complete without them.
        wait_for_record(out, lambda r: r["round"] >= 2, "round 2", launch)
        victim = node_name("plant-a/line-1/dev-003")
        kill9(launch.processes[victim])
        killed_at = time.monotonic()
        short = wait_for_record(
            out,
            lambda r: r["devices_answered"].get("plant-a") == [2, 2],
            "a round with 2 of 3 devices",
            launch,
        )
        assert short["round_seconds"] < 4.0 + 2.0
        assert time.monotonic() - killed_at < 30
        # ... and the device is re-admitted when it comes back.
        launch.start_node(victim, commands[victim])
        back = wait_for_record(
            out,
            lambda r: (
                r["round"] > short["round"] and r["devices_answered"].get("plant-a") == [3, 3]
            ),
            "the device back in a round",
            launch,
        )

        # 2. plant-b's edge dies: the cloud completes rounds with plant-a alone, then the edge resumes and rejoins.
        kill9(launch.processes["edge-plant-b"])
        alone = wait_for_record(
            out,
            lambda r: r["round"] > back["round"] and r["edges_answered"] == ["plant-a"],
            "a round without plant-b",
            launch,
        )
        launch.start_node("edge-plant-b", commands["edge-plant-b"] + ["--resume"])
        rejoined = wait_for_record(
            out,
            lambda r: r["round"] > alone["round"] and r["edges_answered"] == ["plant-a", "plant-b"],
            "plant-b's edge back",
            launch,
        )
        assert "resumed after cloud round" in (out / "logs" / "edge-plant-b.log").read_text()

        # 3. The cloud dies; restarted with --resume it continues from its last checkpoint.
        edges = ["edge-plant-a", "edge-plant-b"]
        offsets = {edge: len((out / "logs" / f"{edge}.log").read_text()) for edge in edges}
        kill9(launch.processes["cloud"])
        # Both edges notice the silence and train offline before the cloud comes back.
        wait_for_offline_rounds(out, edges, offsets)
        before = read_new_records(out / "metrics.jsonl", 0)
        last = before[-1]["round"]
        assert last >= rejoined["round"]
        final = last + 3
        cloud = list(commands["cloud"])
        cloud[cloud.index("--rounds") + 1] = str(final)
        launch.start_node("cloud", cloud + ["--resume"])
        history = launch.wait()
    finally:
        launch.stop(grace=0)
    rounds = [r["round"] for r in history]
    assert rounds == list(range(1, final + 1)), "every round exactly once"
    # While the cloud was down the edges trained offline; that progress came back as stale
    # summaries in the first round the restarted cloud trained. That is the round after its
    # checkpoint, which may be one past the last record read above: a kill between a round's
    # checkpoint and its record leaves the record to the resume (reconcile_metrics).
    cloud_log = (out / "logs" / "cloud.log").read_text()
    checkpointed = int(re.search(r"resumed from the checkpoint of cloud round (\d+)", cloud_log)[1])
    assert checkpointed in (last, last + 1)
    resumed = history[checkpointed]
    assert sorted(resumed["stale_summaries"]) == ["plant-a", "plant-b"], resumed
    assert all(
        s["weight"] > 0 and s["edge_rounds"] >= 1 for s in resumed["stale_summaries"].values()
    )
    for name in ("plant-a", "plant-b"):
        assert "sent 2 offline edge rounds" in (out / "logs" / f"edge-{name}.log").read_text()
    assert "resumed from the checkpoint of cloud round" in (out / "logs" / "cloud.log").read_text()
    assert history[-1]["accuracy"] >= before[-1]["accuracy"] - 0.05
    assert history[-1]["accuracy"] > 0.5
    assert all(p.poll() is not None for p in launch.processes.values())
    assert (out / "model.npz").exists()


def test_the_cloud_publishes_each_model_and_ctrl_c_stops_every_node(folder):
    topology = write_topology(folder, name="interrupted", rounds=100000, devices_a=1)
    out = folder / "run"
    address = f"ipc://{folder}/models.ipc"
    context = zmq.Context()
    subscriber = subscribe(context, address)
    launcher = subprocess.Popen(
        [str(HIERFL), "launch", str(topology), "--out", str(out), "--quiet", "--publish", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert subscriber.poll(180_000), "no model published"
        publication = decode_publication(subscriber.recv_multipart(copy=False))
        artifact = decode_artifact(publication.data)
        assert publication.header["version"] >= 1 and artifact.meta.task == "digits"
        record = next(
            r
            for r in read_new_records(out / "metrics.jsonl", 0)
            if r["round"] == artifact.meta.version
        )
        assert artifact.meta.metrics["accuracy"] == record["accuracy"]
        launcher.send_signal(signal.SIGINT)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        subscriber.close()
        context.term()
    assert launcher.returncode == 130
    assert "stopping every node" in stderr
    logs = sorted((out / "logs").glob("*.log"))
    assert len(logs) == 1 + 2 + 3 + 1  # the cloud, edges, devices and the fork server
    for log in logs:
        assert log.read_text().rstrip().endswith("stopped"), log.name


def test_launch_fails_naming_the_edge_that_cannot_bind_its_port(folder):
    """Plant-b's edge port is held by another program: launch must stop every node and exit non-zero.

    Before, that edge died with a traceback in its log, its devices dialed the other
    program, and the cloud trained plant-a alone and printed a normal summary.
    """
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    topology = write_topology(folder, rounds=2)
    topology.write_text(
        topology.read_text().replace(f"ipc://{folder}/b.ipc", f"tcp://127.0.0.1:{port}")
    )
    out = folder / "run"
    try:
        result = subprocess.run(
            [str(HIERFL), "launch", str(topology), "--out", str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        squatter.close()
    assert result.returncode != 0, result.stdout
    assert "simulation summary" not in result.stdout
    assert "edge-plant-b" in result.stderr, result.stderr
    assert "Address already in use" in result.stderr
    edge_log = (out / "logs" / "edge-plant-b.log").read_text()
    assert "Traceback" not in edge_log, edge_log
    assert f"cannot bind tcp://127.0.0.1:{port}: Address already in use" in edge_log


PLANT_LAYERS = """
[personalization]
method = "plant-layers"
layers = ["head"]

[compression.edge_to_cloud]
codec = "topk"
fraction = 0.1
"""


FINE_TUNE = """
[personalization]
method = "fine-tune"
rounds = 2
layers = ["head"]

[compression.device_to_edge]
codec = "int8"
"""


@pytest.mark.parametrize("method", ["plant-layers", "fine-tune"])
def test_launch_trains_the_same_personalized_models_as_simulate(folder, method):
    """Per-plant layers, and fine-tuning (one federated round, then two in which each plant
    adapts the global head alone): the same global model and the same personalized scores
    per plant, and each edge writes its plant's model (the one the simulator writes) for
    export."""
    personalization, rounds = (PLANT_LAYERS, 2) if method == "plant-layers" else (FINE_TUNE, 3)
    topology = write_topology(folder, rounds=rounds, codecs=personalization, heartbeat_timeout=30.0)
    out = folder / "run"
    records = launch_to_the_end(topology, out)
    reference = simulate(topology, out=folder / "sim")
    assert max_difference(reference.params, load_params(out / "model.npz")) <= 1e-5
    for record, expected in zip(records, reference.history, strict=True):
        assert record["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-3)
        assert record["personal_accuracy"] == pytest.approx(expected["personal_accuracy"], abs=1e-3)
        for plant in ("plant-a", "plant-b"):
            assert record["plant_personal_accuracy"][plant] == pytest.approx(
                expected["plant_personal_accuracy"][plant], abs=1e-3
            )
        assert record["bytes"] == expected["bytes"]
    plants = {p: load_params(out / f"model-{p}.npz") for p in ("plant-a", "plant-b")}
    # Fine-tuning's plant models come straight from int8-coded updates: where the engines'
    # float sums differ in the last bit, a value can round to the next of int8's 255 levels
    # (about 1e-4 on the head's updates; without the codec they agree to 1e-5).
    tolerance = 1e-5 if method == "plant-layers" else 2e-4
    for plant, launched in plants.items():
        simulated = load_params(folder / "sim" / f"model-{plant}.npz")
        assert max_difference(simulated, launched) <= tolerance
    launched = load_params(out / "model.npz")
    assert max_difference(launched["head"], plants["plant-a"]["head"]) > 0
    if method == "plant-layers":  # the cloud never moved the personal layers
        _, initial = init_global_model(make_plan(load_topology(topology)))
        assert max_difference(initial["head"], launched["head"]) == 0
    else:  # the global model is the federated round's; fine-tuning moved only the heads
        assert [r["bytes"]["edge_to_cloud"] > 0 for r in records] == [True, False, False]
        assert max_difference(launched["hidden"], plants["plant-a"]["hidden"]) == 0
        assert records[2]["personal_accuracy"] != records[1]["personal_accuracy"]


BUFFERED = """
[buffered_aggregation]
buffer_size = 2
order = "declared"
"""


def test_launch_buffered_in_declared_order_trains_the_same_model_as_simulate(folder):
    """FedBuff with plant-b 3x slower: the cloud takes the summaries in the order the declared
    speeds give (the simulator's), so the model, and which summaries each version took with
    what staleness, are the simulator's."""
    topology = write_topology(folder, rounds=3, codecs=BUFFERED, heartbeat_timeout=30.0)
    text = topology.read_text()
    for plant, seconds in (("a", 0.125), ("b", 0.375)):  # cycles of 0.75 s and 2.25 s
        address = f'address = "ipc://{folder}/{plant}.ipc"\n'
        text = text.replace(address, address + f"seconds_per_step = {seconds}\n")
    topology.write_text(text)
    out = folder / "run"
    records = launch_to_the_end(topology, out)
    reference = simulate(topology)
    taken = [
        [(s["plant"], s["cycle"], s["staleness"]) for s in r["summaries"]]
        for r in reference.history
    ]
    assert taken == [
        [("plant-a", 1, 0), ("plant-a", 2, 0)],
        [("plant-a", 3, 0), ("plant-b", 1, 1)],  # at 2.25 s, in plant order
        [("plant-a", 4, 1), ("plant-a", 5, 0)],
    ]
    assert [r["summaries"] for r in records] == [h["summaries"] for h in reference.history]
    assert [r["sim_seconds"] for r in reference.history] == [1.5, 2.25, 3.75]
    difference = max_difference(reference.params, load_params(out / "model.npz"))
    print(f"max |launch - simulate| = {difference:.3g}")
    assert difference <= 1e-5
    for record, expected in zip(records, reference.history, strict=True):
        assert record["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-3)
    assert all(r["rejected_messages"]["cloud"] == {} for r in records)


def test_a_plant_edge_publishes_its_plant_model_to_its_servers_only(folder):
    """`plants.publish`: plant-a's edge publishes plant-a's personalized model each round. A
    server started with plant-a's model takes them and ends serving the final one (the
    file the edge writes); a server of the global model subscribed there refuses them."""
    address = f"ipc://{folder}/plant-a-models.ipc"
    topology = write_topology(folder, codecs=PLANT_LAYERS, heartbeat_timeout=30.0)
    text = topology.read_text()
    plant_a = f'address = "ipc://{folder}/a.ipc"\n'
    topology.write_text(text.replace(plant_a, f'{plant_a}publish = "{address}"\n'))
    plan = make_plan(load_topology(topology))
    model, initial = init_global_model(plan)
    run = {"name": "rt", "plant": "plant-a"}
    own = export_model(model, initial, plan.task, version=0, run=run, platforms=("cpu",))
    global_model = export_model(model, initial, plan.task, version=0, platforms=("cpu",))
    servers = [
        InferenceServer(artifact, ServerConfig(f"ipc://{folder}/serve-{i}.ipc", subscribe=address))
        for i, artifact in enumerate((own, global_model))
    ]
    for server in servers:
        server.start()
    try:
        records = launch_to_the_end(topology, folder / "run")
        final = records[-1]["round"]
        plants_server, global_server = servers
        wait_for(lambda: plants_server.model.meta.version == final, "plant-a's final model")
        wait_for(lambda: global_server.stats.rejected_artifacts >= 1, "a refusal")
        x = plan.test.x[:8]
        expected = model.apply(load_params(folder / "run" / "model-plant-a.npz"), x)
        np.testing.assert_allclose(plants_server.model.predict(x), expected, atol=1e-5)
        assert plants_server.info()["plant"] == "plant-a"
        assert global_server.model.meta.version == 0 and global_server.stats.swaps == 0
    finally:
        for server in servers:
            server.stop()


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Polls `condition` until it holds (a message published on loopback arrives within it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
