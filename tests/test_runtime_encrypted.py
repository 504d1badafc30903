"""The runtime with homomorphic encryption of edge summaries (`hierfl.runtime.encrypted`).

End to end (real processes on ipc://): `hierfl launch` with CKKS summaries trains the
simulator's model, and a relay between the edges and the cloud records every frame to
show that no plaintext summary reaches the cloud. Live nodes against fake peers: a
cloud given the secret context refuses to start, an edge with another plant key says so,
and a cloud refuses malformed ciphertexts and keeps serving. The pure parts (catch-up,
coefficients, checkpoints, scores from plant sums, message checks) are tested directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import jax
import msgpack
import numpy as np
import pytest
import zmq

pytest.importorskip("tenseal", reason="homomorphic encryption needs the `he` extra (TenSEAL)")

from test_runtime_edge import Peer  # noqa: E402
from test_runtime_launch import HIERFL, wait_for_offline_rounds  # noqa: E402

from conftest import kill9, wait_for_record, write_topology  # noqa: E402
from hierfl.data.evaluation import (
    PlantSums,
    combine_plant_sums,
    make_evaluator,
    make_plant_evaluator,
)  # noqa: E402
from hierfl.data.loading import load_topology  # noqa: E402
from hierfl.data.plan import make_plan  # noqa: E402
from hierfl.errors import HomomorphicError  # noqa: E402
from hierfl.kernels import flat_spec  # noqa: E402
from hierfl.privacy import homomorphic as he  # noqa: E402
from hierfl.runs.checkpoint import load_params  # noqa: E402
from hierfl.runs.records import reconcile_metrics  # noqa: E402
from hierfl.runtime import encrypted, protocol  # noqa: E402
from hierfl.runtime.evaluations import evaluation_sums, release_evaluation  # noqa: E402
from hierfl.runtime.launch import Launch, read_new_records  # noqa: E402
from hierfl.runtime.node import node_model  # noqa: E402
from hierfl.sim.engine import simulate  # noqa: E402

HOMOMORPHIC = "\n[privacy]\nhomomorphic = true\n"
EVERY_PROTECTION = (
    HOMOMORPHIC
    + 'secure_aggregation = true\ndp = "edge"\nclip_norm = 0.5\nnoise_multiplier = 0.3\n'
)
"""CKKS at the cloud, secure aggregation and DP noise at each edge, in one run."""
TOLERANCE = 1e-4
"""Launch vs simulate, absolute, on params of magnitude < 0.3: CKKS adds about 1e-6 of the
values' magnitude per aggregate (`hierfl.privacy.homomorphic`), i.e. some 3e-7 a round;
float32 reordering adds 1e-7. 1e-4 leaves two orders of magnitude for two rounds of
training to amplify it, and is still far below what a wrong weight or a missed summary
would change (about 1e-2)."""


def he_topology(folder: Path, name: str = "he", privacy: str = HOMOMORPHIC, **kwargs) -> Path:
    return write_topology(folder, name=name, heartbeat_timeout=30.0, codecs=privacy, **kwargs)


def unwrapped(text: str) -> str:
    """`text` with the terminal's line wrapping undone (rich wraps error messages)."""
    return " ".join(text.split())


def logs_of(out: Path) -> str:
    return (
        "".join(
            f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((out / "logs").glob("*.log"))
        )
        if (out / "logs").exists()
        else ""
    )


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "privacy", [HOMOMORPHIC, EVERY_PROTECTION], ids=["ckks", "ckks-secure-aggregation-edge-dp"]
)
def test_launch_with_ckks_summaries_trains_the_simulators_model(folder, privacy):
    topology = he_topology(folder, privacy=privacy)
    out = folder / "run"
    result = subprocess.run(
        [str(HIERFL), "launch", str(topology), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr + logs_of(out)
    assert "final model (decrypted at its plant; the cloud holds none)" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["devices_answered"] == {"plant-a": [2, 2], "plant-b": [2, 2]} for r in records)
    assert all(
        r["rejected_messages"] == {"cloud": {}, "plant-a": {}, "plant-b": {}} for r in records
    )
    assert not (out / "model.npz").exists(), "the cloud holds no plaintext model"

    reference = simulate(topology)
    models = [load_params(out / f"model-{plant}.npz") for plant in ("plant-a", "plant-b")]
    same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), *models))
    assert all(same), "every plant decrypts the same aggregate"
    differences = jax.tree.leaves(
        jax.tree.map(
            lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), reference.params, models[0]
        )
    )
    print(f"max |launch with CKKS - simulate| = {max(differences):.3g}")
    assert max(differences) <= TOLERANCE
    for record, expected in zip(records, reference.history):
        assert record["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-3)
        assert record["plant_accuracy"] == pytest.approx(expected["plant_accuracy"], abs=1e-3)
        # Counts travel exact: the plants' confusion matrices add up to the whole test set's.
        assert np.sum(record["confusion"]) == np.sum(expected["confusion"])
        assert record["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-2)
        assert record["plant_confusion"].keys() == expected["plant_confusion"].keys()
        assert record["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-3)
        assert record.get("epsilon") == expected.get("epsilon")
    model_bytes = node_model(load_topology(topology)).spec.nbytes
    assert all(
        r["bytes"]["edge_to_cloud"] > 2 * 8 * model_bytes for r in records
    )  # ciphertexts, ~14x
    assert (
        records[0]["bytes"]["cloud_to_edge"] == 0
        and records[1]["bytes"]["cloud_to_edge"] > 2 * 4 * model_bytes
    )
    # The cloud checkpoints the round and the encrypted aggregate; each edge its decrypted global model and version.
    assert sorted(p.name for p in (out / "checkpoints" / "cloud-he").iterdir()) == [
        "round-000001.ckpt",
        "round-000002.ckpt",
    ]
    with np.load(out / "checkpoints" / "edge-plant-a.npz") as state:
        assert int(state["global_version"]) == 2 and int(state["round"]) == 2


class Relay:
    """A ROUTER at the cloud's address that forwards each edge's frames to the real cloud, recording both ways.

    Per edge it dials the cloud with a DEALER of the edge's name (the cloud checks the
    routing id against the sender), so the cloud cannot tell the relay from the edges.
    """

    def __init__(self, front: str, back: str, edges: list[str]):
        self.context = zmq.Context()
        self.front = self.context.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.front.bind(front)
        self.backs = {}
        for edge in edges:
            socket = self.context.socket(zmq.DEALER)
            socket.setsockopt(zmq.ROUTING_ID, edge.encode())
            socket.connect(back)
            self.backs[edge] = socket
        self.up: list[tuple[str, list[bytes]]] = []
        self.down: list[tuple[str, list[bytes]]] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        for socket in self.backs.values():
            poller.register(socket, zmq.POLLIN)
        while self.running:
            for socket, _ in poller.poll(50):
                if socket is self.front:
                    edge, *frames = socket.recv_multipart()
                    self.up.append((edge.decode(), frames))
                    self.backs[edge.decode()].send_multipart(frames)
                else:
                    frames = socket.recv_multipart()
                    edge = socket.getsockopt(zmq.ROUTING_ID).decode()
                    self.down.append((edge, frames))
                    self.front.send_multipart([edge.encode(), *frames])

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        for socket in [self.front, *self.backs.values()]:
            socket.close(linger=0)
        self.context.term()


def holds_values(
    frame: bytes, values: np.ndarray, window: int = 16, tolerance: float = 1e-5
) -> bool:
    """Whether `frame` holds `window` consecutive entries of `values` as float32 or float64, at any byte alignment."""
    start = int(np.argmax(np.abs(values[: len(values) - window])))  # a distinctive value
    target = values[start : start + window].astype(np.float64)
    for dtype in (np.float32, np.float64):
        size = np.dtype(dtype).itemsize
        for offset in range(size):
            usable = (len(frame) - offset) // size * size
            with np.errstate(
                invalid="ignore", over="ignore"
            ):  # random bytes read as floats: NaNs and infinities
                array = np.frombuffer(frame, dtype, usable // size, offset).astype(np.float64)
                candidates = np.nonzero(np.abs(array - target[0]) <= tolerance)[0]
            for c in candidates[:10_000]:
                if c + window <= len(array) and np.all(
                    np.abs(array[c : c + window] - target) <= tolerance
                ):
                    return True
    return False


def test_the_cloud_receives_only_ciphertexts(folder):
    topology_file = he_topology(folder, name="relay")
    topology = load_topology(topology_file)
    out = folder / "run"
    launch = Launch(topology, str(topology_file), out)
    commands = launch.node_commands()
    commands["cloud"] += ["--bind", f"ipc://{folder}/real-cloud.ipc"]
    launch.node_commands = lambda: commands
    relay = Relay(topology.cloud.address, f"ipc://{folder}/real-cloud.ipc", topology.plant_names)
    try:
        launch.start()
        history = launch.wait()
    finally:
        launch.stop(grace=0)
        relay.close()
    assert [r["round"] for r in history] == [1, 2], logs_of(out)
    up_kinds = [msgpack.unpackb(frames[0])["kind"] for _, frames in relay.up]
    down_kinds = {msgpack.unpackb(frames[0])["kind"] for _, frames in relay.down}
    assert set(up_kinds) <= {"hello", "heartbeat", "he_summary", "evaluation"}, set(up_kinds)
    assert (
        up_kinds.count("he_summary") == 4 and up_kinds.count("evaluation") == 4
    )  # 2 edges x 2 rounds
    assert down_kinds <= {"heartbeat", "he_aggregate", "stop"} and "he_aggregate" in down_kinds
    for _, frames in (
        relay.up + relay.down
    ):  # ciphertexts travel as raw frames, never inside the header
        assert not any(isinstance(v, bytes) for v in msgpack.unpackb(frames[0]).values())

    # Decrypt every summary with the plants' key (which the cloud does not have) and look for it in every frame sent up.
    secret = encrypted.load_plant_context(out / "keys" / encrypted.SECRET_FILE, topology)
    spec = node_model(topology).spec
    summaries = [
        (edge, frames)
        for edge, frames in relay.up
        if msgpack.unpackb(frames[0])["kind"] == "he_summary"
    ]
    everything_up = [frame for _, frames in relay.up for frame in frames]
    for edge, frames in summaries:
        plaintext = he.decrypt_aggregate(secret, {"size": spec.size, "chunks": frames[1:]})
        assert 1e-4 < np.abs(plaintext).max() < 1.0, "a real model change"
        assert not any(holds_values(frame, plaintext) for frame in everything_up), (
            f"{edge}'s summary crossed in the clear"
        )
    # The check itself finds a plaintext summary where there is one.
    assert holds_values(b"xyz" + plaintext.astype(np.float32).tobytes(), plaintext)


def test_an_edge_down_for_rounds_catches_up_and_a_resumed_cloud_goes_on(folder):
    """kill -9 plant-b's edge for two rounds, restart it with --resume; then kill -9 the cloud and resume it."""
    topology_file = write_topology(
        folder,
        name="hefaults",
        rounds=1000,
        codecs=HOMOMORPHIC,
        extra="min_edge_participation = 0.5",
    )
    topology = load_topology(topology_file)
    out = folder / "run"
    launch = Launch(topology, str(topology_file), out)
    commands = launch.node_commands()
    launch.start()
    try:
        wait_for_record(out, lambda r: r["round"] >= 2, "round 2", launch)
        kill9(launch.processes["edge-plant-b"])
        first = wait_for_record(
            out, lambda r: r["edges_answered"] == ["plant-a"], "a round without plant-b", launch
        )
        wait_for_record(
            out,
            lambda r: r["round"] > first["round"] and r["edges_answered"] == ["plant-a"],
            "another one",
            launch,
        )
        launch.start_node("edge-plant-b", commands["edge-plant-b"] + ["--resume"])
        back = wait_for_record(
            out,
            lambda r: (
                r["round"] > first["round"] + 1 and r["edges_answered"] == ["plant-a", "plant-b"]
            ),
            "plant-b back",
            launch,
        )
        assert back["plant_accuracy"]["plant-b"] == back["plant_accuracy"]["plant-b"], (
            "plant-b evaluates again"
        )  # not NaN
        edge_log = (out / "logs" / "edge-plant-b.log").read_text()
        assert (
            "resumed after cloud round" in edge_log
            and "caught up to global model version" in edge_log
        ), edge_log[-3000:]

        edges = ["edge-plant-a", "edge-plant-b"]
        offsets = {edge: len((out / "logs" / f"{edge}.log").read_text()) for edge in edges}
        kill9(launch.processes["cloud"])
        wait_for_offline_rounds(
            out, edges, offsets
        )  # their progress comes back as encrypted stale summaries
        last = read_new_records(out / "metrics.jsonl", 0)[-1]["round"]
        final = last + 3
        cloud = list(commands["cloud"])
        cloud[cloud.index("--rounds") + 1] = str(final)
        launch.start_node("cloud", cloud + ["--resume"])
        history = launch.wait()
    finally:
        launch.stop(grace=0)
    assert [r["round"] for r in history] == list(range(1, final + 1)), "every round exactly once"
    assert "resumed from the checkpoint of cloud round" in (out / "logs" / "cloud.log").read_text()
    stale = {name for r in history[last - 1 :] for name in r["stale_summaries"]}
    assert stale == {"plant-a", "plant-b"}, [r["stale_summaries"] for r in history[last - 1 :]]
    assert history[-1]["edges_answered"] == ["plant-a", "plant-b"] and history[-1]["accuracy"] > 0.5
    models = [load_params(out / f"model-{plant}.npz") for plant in ("plant-a", "plant-b")]
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), *models))), (
        "plant-b caught up exactly"
    )


# -- live nodes against fake peers ----------------------------------------------------------------


def test_a_cloud_with_the_secret_context_or_none_refuses_to_start(folder):
    topology = he_topology(folder, name="keys")
    secret, public = encrypted.write_key_files(folder / "keys", he.CkksParameters())
    for context, expected in [
        (secret, "holds the plants' secret key; the cloud must get the public context only"),
        (None, "the cloud needs the plants' public CKKS context: --he-context"),
    ]:
        flags = ["--he-context", str(context)] if context else []
        result = subprocess.run(
            [str(HIERFL), "cloud", str(topology), "--out", str(folder / "run"), *flags],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and expected in unwrapped(result.stderr), result.stderr
    result = subprocess.run(
        [str(HIERFL), "edge", str(topology), "--plant", "plant-a", "--he-context", str(public)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "an edge needs the plants' secret context" in unwrapped(
        result.stderr
    ), result.stderr


def test_an_edge_with_another_key_says_so_and_stops(folder):
    topology_file = he_topology(folder, name="wrongkey")
    topology = load_topology(topology_file)
    _, cloud_public = encrypted.write_key_files(folder / "federation", he.CkksParameters())
    other_secret, _ = encrypted.write_key_files(folder / "other", he.CkksParameters())
    context = zmq.Context()
    cloud = context.socket(zmq.ROUTER)
    cloud.setsockopt(zmq.LINGER, 0)
    cloud.bind(topology.cloud.address)
    log = folder / "edge.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [
                str(HIERFL),
                "edge",
                str(topology_file),
                "--plant",
                "plant-a",
                "--he-context",
                str(other_secret),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        assert cloud.poll(120_000), f"the edge never said hello:\n{log.read_text()}"
        cipher = encrypted.CloudCipher(
            he.load_context(cloud_public.read_bytes()),
            node_model(topology).spec,
            he.CkksParameters(),
            1.0,
        )
        cloud.send_multipart([b"plant-a", *cipher.aggregate_frames(encrypted.Aggregate(0), 1)])
        assert process.wait(timeout=60) == 2, (
            log.read_text()
        )  # it stops rather than hold up the rounds
        text = unwrapped(log.read_text())
        assert (
            "plant plant-a: cannot use the cloud's aggregate for round 1" in text
            and "not the plants' shared secret context" in text
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
        cloud.close()
        context.term()


def test_the_cloud_refuses_bad_ciphertexts_and_keeps_serving(folder):
    topology_file = he_topology(folder, name="badcipher")
    topology = load_topology(topology_file)
    secret, public = encrypted.write_key_files(folder / "keys", he.CkksParameters())
    out = folder / "run"
    log = folder / "cloud.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [
                str(HIERFL),
                "cloud",
                str(topology_file),
                "--out",
                str(out),
                "--he-context",
                str(public),
                "--rounds",
                "1",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    context = zmq.Context()
    edges = {name: Peer(context, topology.cloud.address, name) for name in topology.plant_names}
    try:
        for edge in edges.values():
            edge.send_kind(protocol.HELLO)
        a, b = edges["plant-a"], edges["plant-b"]
        opened, chunks = a.recv(protocol.HE_AGGREGATE, timeout_ms=120_000)
        assert (
            opened["round"] == 1
            and opened["model_version"] == 0
            and opened["chunks"] == 0
            and chunks == []
        )
        spec = node_model(topology).spec
        plant = encrypted.PlantCipher(
            encrypted.load_plant_context(secret, topology), spec, he.CkksParameters()
        )
        delta = np.full(spec.size, 0.01, np.float32)
        good = plant.summary_fields(delta, 10.0, 1)

        def send_summary(edge, **changes):
            fields = {**good, **changes}
            edge.send(
                protocol.encode(
                    protocol.HE_SUMMARY,
                    edge.identity,
                    round=1,
                    edge_round=2,
                    weight=10.0,
                    loss=5.0,
                    **fields,
                )
            )
            return edge.recv(protocol.REJECTED)[0]

        garbage = [np.frombuffer(bytes(1000), np.uint8)] * good["chunks"]
        refused = send_summary(a, arrays=garbage)
        assert (
            refused["reason"] == protocol.MALFORMED and "not a CKKS ciphertext" in refused["detail"]
        )
        refused = send_summary(a, arrays=good["arrays"][:-1])
        assert refused["reason"] == protocol.MALFORMED and "ciphertext frames" in refused["detail"]
        refused = send_summary(a, key_id="0" * 16)
        assert (
            refused["reason"] == protocol.WRONG_SPEC
            and "encrypted under CKKS key" in refused["detail"]
        )
        a.send(
            protocol.encode(
                protocol.SUMMARY,
                "plant-a",
                round=1,
                spec=spec,
                codec="none",
                arrays=[delta],
                weight=1.0,
                loss=0.0,
            )
        )
        assert (
            a.recv(protocol.REJECTED)[0]["reason"] == protocol.UNEXPECTED
        )  # plaintext summaries are not taken at all
        a.send(
            protocol.encode(
                protocol.EVALUATION, "plant-a", round=1, count=-1, loss_sum=0.0, metric_sums={}
            )
        )
        assert a.recv(protocol.REJECTED)[0]["reason"] == protocol.MALFORMED
        # The cloud is still serving: valid summaries close the round and the encrypted aggregate comes back.
        for edge, weight in ((a, 10.0), (b, 30.0)):
            edge.send(
                protocol.encode(
                    protocol.HE_SUMMARY,
                    edge.identity,
                    round=1,
                    edge_round=2,
                    weight=weight,
                    loss=5.0,
                    **good,
                )
            )
        final, chunks = a.recv(protocol.HE_AGGREGATE)
        assert (
            final["final"] is True
            and final["model_version"] == 1
            and final["coefficients"] == {"plant-a": 0.25, "plant-b": 0.75}
        )
        assert len(chunks) == good["chunks"]
        aggregate = he.decrypt_aggregate(plant.context, {"size": spec.size, "chunks": chunks})
        np.testing.assert_allclose(aggregate, delta, atol=1e-6)
        # The record of round 1 waits for the plants' scores, then combines them. plant-a
        # got 30 of 40 zeros right (10 taken for ones), plant-b 10 of 40 ones (30 for zeros).
        confusion = {"plant-a": np.zeros((10, 10), int), "plant-b": np.zeros((10, 10), int)}
        confusion["plant-a"][0, :2] = (30, 10)
        confusion["plant-b"][1, :2] = (30, 10)
        bad = confusion["plant-a"].tolist()
        bad[9][9] = 1  # 41 examples counted, 40 reported
        for edge, correct, counts in (
            (a, 30.0, bad),
            (a, 30.0, confusion["plant-a"].tolist()),
            (b, 10.0, confusion["plant-b"].tolist()),
        ):
            edge.send(
                protocol.encode(
                    protocol.EVALUATION,
                    edge.identity,
                    round=1,
                    count=40,
                    loss_sum=20.0,
                    metric_sums={"accuracy": correct},
                    confusion=counts,
                    histogram=[],
                )
            )
            if counts is bad:
                assert a.recv(protocol.REJECTED)[0]["reason"] == protocol.MALFORMED
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
        for edge in edges.values():
            edge.socket.close()
        context.term()
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (
        record["round"] == 1
        and record["accuracy"] == 0.5
        and record["plant_accuracy"] == {"plant-a": 0.75, "plant-b": 0.25}
    )
    # Pooled: zeros 30 right, 10 taken for ones; ones 10 right, 30 taken for zeros.
    # 0: precision 30/60, recall 30/40, F1 60/100; 1: 10/20, 10/40, F1 20/60; macro over 0 and 1.
    assert record["confusion"][0][:2] == [30, 10] and record["confusion"][1][:2] == [30, 10]
    assert record["per_class"]["0"] == {"precision": 0.5, "recall": 0.75, "f1": 0.6, "support": 40}
    assert record["macro_f1"] == pytest.approx((0.6 + 1 / 3) / 2)
    assert record["plant_macro_f1"]["plant-a"] == pytest.approx((60 / 70 + 0) / 2)
    assert record["chance"] == {"class": "0", "accuracy": 0.5, "macro_f1": pytest.approx(1 / 3)}
    # The round's refusals are counted when it closes, before the evaluations (the bad one
    # was refused above).
    assert record["test_loss"] == 0.5 and record["rejected_messages"]["cloud"] == {
        "malformed": 3,
        "wrong-spec": 1,
        "unexpected": 1,
    }


def test_hierfl_keys_ckks_writes_the_plants_and_the_clouds_contexts(folder, capsys, monkeypatch):
    from hierfl.cli.commands import main

    monkeypatch.setenv(
        "XLA_FLAGS", os.environ.get("XLA_FLAGS", "")
    )  # main() sets XLA's device count for this process

    topology = he_topology(folder, name="keyfiles")
    assert main(["keys", "ckks", str(folder / "keys"), "--topology", str(topology)]) == 0
    assert "never to the cloud" in capsys.readouterr().out
    secret, public = (
        folder / "keys" / encrypted.SECRET_FILE,
        folder / "keys" / encrypted.PUBLIC_FILE,
    )
    assert secret.stat().st_mode & 0o777 == 0o600
    plant, cloud = (
        encrypted.load_plant_context(secret, load_topology(topology)),
        encrypted.load_cloud_context(public, load_topology(topology)),
    )
    assert encrypted.key_id(plant) == encrypted.key_id(cloud) and not cloud.has_secret_key()
    assert (
        main(["keys", "ckks", str(folder / "keys")]) == 2
    )  # never silently replaces the federation's key
    assert "already exist" in unwrapped(capsys.readouterr().err) and encrypted.key_id(
        encrypted.load_plant_context(secret, load_topology(topology))
    ) == encrypted.key_id(plant)
    # hierfl launch refuses what the cloud cannot do under HE before starting anything.
    assert (
        main(
            [
                "launch",
                str(topology),
                "--out",
                str(folder / "run"),
                "--publish",
                f"ipc://{folder}/m.ipc",
            ]
        )
        == 2
    )
    assert (
        "holds no plaintext model to publish" in unwrapped(capsys.readouterr().err)
        and not (folder / "run").exists()
    )


def test_contexts_must_match_the_topology_and_fit_its_message_limit(folder):
    topology = load_topology(he_topology(folder, name="params"))
    secret, _ = encrypted.write_key_files(folder / "big", he.CkksParameters(16384, 40))
    with pytest.raises(
        HomomorphicError,
        match="CKKS context of degree 16384, the topology sets privacy.he_poly_modulus_degree = 8192",
    ):
        encrypted.load_plant_context(secret, topology)
    secret, _ = encrypted.write_key_files(folder / "scale", he.CkksParameters(8192, 30))
    with pytest.raises(
        HomomorphicError, match="scale 2\\^30, the topology sets privacy.he_scale_bits = 40"
    ):
        encrypted.load_plant_context(secret, topology)
    spec = node_model(topology).spec
    assert encrypted.layout_problem(topology, spec, topology.runtime.max_message_bytes) is None
    assert (
        "runtime.max_message_bytes: 1000000 is below what an encrypted summary of this model may take (3 CKKS ciphertexts"
        in (encrypted.layout_problem(topology, spec, 1_000_000))
    )


# -- the pure parts -------------------------------------------------------------------------------


def test_an_edge_catches_up_by_one_aggregate_and_names_a_larger_gap():
    assert encrypted.catch_up(3, 3) == encrypted.CatchUp(apply=False)
    assert encrypted.catch_up(2, 3) == encrypted.CatchUp(apply=True)
    with pytest.raises(
        HomomorphicError, match="can catch up by one round only \\(2 aggregates are missing\\)"
    ):
        encrypted.catch_up(1, 4)
    with pytest.raises(HomomorphicError, match="ahead of the cloud's version 2"):
        encrypted.catch_up(3, 2)


def test_the_cloud_keeps_the_newest_aggregates_within_its_budget():
    history = {v: encrypted.Aggregate(v, (b"x" * 10,)) for v in range(1, 6)}
    assert encrypted.newest_within(history, 30) == [3, 4, 5]
    assert encrypted.newest_within(history, 5) == [5]
    assert encrypted.newest_within({}, 5) == []


def test_coefficients_are_the_mean_rule_then_sgd():
    assert encrypted.coefficients([10.0, 30.0], 1.0) == [0.25, 0.75]
    assert encrypted.coefficients([10.0, 30.0], 0.5) == [0.125, 0.375]
    assert encrypted.coefficients([0.0, 0.0], 1.0) == [0.0, 0.0]


def test_cloud_checkpoints_keep_the_encrypted_aggregate(tmp_path):
    checkpoints = encrypted.EncryptedCheckpoints(tmp_path / "ck")
    assert checkpoints.latest() is None
    for r in (1, 2, 3):
        checkpoints.save(
            r,
            encrypted.Aggregate(r, (bytes([r]) * 5,), {"plant-a": 1.0}),
            {"round": r, "accuracy": float("nan")},
        )
    state = checkpoints.latest()
    assert state.round == 3 and state.aggregate == encrypted.Aggregate(
        3, (b"\x03" * 5,), {"plant-a": 1.0}
    )
    assert state.record["round"] == 3 and np.isnan(state.record["accuracy"])
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "round-000002.ckpt",
        "round-000003.ckpt",
    ]


def test_resume_keeps_the_files_record_of_the_checkpointed_round_when_it_has_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"round": r}) + "\n" for r in (1, 2, 3)))
    assert reconcile_metrics(path, 2, None) is True
    assert [json.loads(line)["round"] for line in path.read_text().splitlines()] == [1, 2]
    assert (
        reconcile_metrics(path, 3, None) is False
    )  # round 3's record waits for the plants' scores


def test_plant_sums_combine_to_the_clouds_scores(tmp_path):
    topology = load_topology(write_topology(tmp_path, name="scores"))
    plan, net = make_plan(topology), node_model(topology)
    whole = make_evaluator(net.model, plan.task, plan.test, plan.num_edges)(net.initial_params)
    sums = [
        make_plant_evaluator(net.model, plan.task, plan.test, i)(net.initial_params)
        for i in range(plan.num_edges)
    ]
    combined = combine_plant_sums(plan.task, sums)
    assert combined.score == pytest.approx(
        whole.score, abs=1e-9
    ) and combined.loss == pytest.approx(whole.loss, rel=1e-6)
    assert combined.per_plant == pytest.approx(whole.per_plant, abs=1e-9)
    np.testing.assert_array_equal(combined.classification.confusion, whole.classification.confusion)
    assert combined.classification.macro_f1 == whole.classification.macro_f1
    partial = combine_plant_sums(plan.task, [sums[0], None])
    assert partial.score == pytest.approx(whole.per_plant[0]) and np.isnan(partial.per_plant[1])
    # Scalars leave rounded; counts exact, and they arrive as they left.
    confusion = np.zeros((10, 10), np.int64)
    confusion[3, 3], confusion[3, 5] = 123450, 6
    released = release_evaluation(
        PlantSums(123456, 1.23456789, {"accuracy": 98765.4321}, confusion),
        digits=encrypted.EVALUATION_DIGITS,
    )
    assert released == {
        "count": 123456,
        "loss_sum": 1.235,
        "metric_sums": {"accuracy": 98770.0},
        "confusion": confusion.tolist(),
        "histogram": [],
    }
    for sent in sums:
        message = protocol.parse_message(
            protocol.encode(protocol.EVALUATION, "plant-a", **release_evaluation(sent)),
            senders={"plant-a"},
            spec=net.spec,
            layouts={protocol.EVALUATION: (protocol.SUMS, protocol.EvaluationLayout(10, 0))},
            max_bytes=1 << 20,
        )
        received = evaluation_sums(message.header)
        np.testing.assert_array_equal(received.confusion, sent.confusion)
        assert received.confusion.dtype == np.int64 and received.histogram.shape == (0, 0)


def test_ciphertext_messages_are_checked_before_use():
    spec = flat_spec({"w": np.zeros(5000, np.float32)})
    layout = protocol.CipherLayout(chunks=2, max_chunk_bytes=100)
    layouts = {protocol.HE_SUMMARY: ("ckks", layout)}

    def parse(frames, **fields):
        header = {
            "spec": spec,
            "codec": "ckks",
            "key_id": "k",
            "chunks": len(frames),
            "weight": 1.0,
            "loss": 0.0,
            **fields,
        }
        message = protocol.encode(protocol.HE_SUMMARY, "plant-a", round=1, arrays=frames, **header)
        return protocol.parse_message(
            [bytes(f) for f in message],
            senders={"plant-a"},
            spec=spec,
            layouts=layouts,
            max_bytes=10_000,
        )

    chunk = np.ones(50, np.uint8)
    assert [bytes(a) for a in parse([chunk, chunk]).arrays] == [bytes(chunk)] * 2
    for chunks, fields, reason, words in [
        ([chunk], {}, protocol.MALFORMED, "1 ciphertext frames, expected 2"),
        ([chunk, np.ones(101, np.uint8)], {}, protocol.OVERSIZED, "at most 100"),
        ([chunk, chunk], {"chunks": 3}, protocol.MALFORMED, "'chunks' says 3"),
        ([chunk, chunk], {"key_id": 7}, protocol.MALFORMED, "'key_id'"),
        ([chunk, chunk], {"codec": "none"}, protocol.WRONG_SPEC, "this link uses 'ckks'"),
        ([chunk, chunk], {"weight": float("nan")}, protocol.NON_FINITE, "weight"),
    ]:
        with pytest.raises(protocol.MessageRejected, match=words) as error:
            parse(chunks, **fields)
        assert error.value.reason == reason
    aggregate = {protocol.HE_AGGREGATE: ("ckks", layout._replace(allow_empty=True))}
    empty = protocol.encode(
        protocol.HE_AGGREGATE, "cloud", spec=spec, codec="ckks", key_id="k", chunks=0
    )
    assert (
        protocol.parse_message(
            empty, senders={"cloud"}, spec=spec, layouts=aggregate, max_bytes=10_000
        ).arrays
        == ()
    )
