"""A model per plant (`[personalization]`): per-plant layers ("plant-layers") and fine-tuning
("fine-tune"), the topology table and its refusals, the core's mask steps, the simulator's
per-plant models, records and export. (`launch = simulate` with per-plant layers is in
test_runtime_launch.py; the runtime refuses fine-tuning.)"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import write_topology
from hierfl.core import personal
from hierfl.data.evaluation import empty_sums
from hierfl.data.loading import load_topology, topology_task
from hierfl.data.plan import make_plan
from hierfl.inference.export import export_run
from hierfl.kernels import flat_spec, ravel
from hierfl.runs.checkpoint import load_params
from hierfl.runs.report import write_report
from hierfl.runtime import protocol
from hierfl.runtime.cloud_modes import Closing
from hierfl.runtime.cloud_plain import PlainAggregation
from hierfl.runtime.edge_uplink import edge_uplink
from hierfl.runtime.evaluations import PendingScores, release_evaluation
from hierfl.runtime.node import node_model, runtime_problem
from hierfl.sim.engine import init_global_model, simulate
from hierfl.topology import TopologyError

PLANT_LAYERS = """
[personalization]
method = "plant-layers"
layers = ["head"]
"""
FINE_TUNE = """
[personalization]
method = "fine-tune"
rounds = 1
"""


def refusals(folder, text: str) -> str:
    with pytest.raises(TopologyError) as caught:
        load_topology(write_topology(folder, codecs=text))
    return str(caught.value)


def test_layers_are_checked_against_the_model(folder):
    why = refusals(folder, PLANT_LAYERS.replace('["head"]', '["head", "decoder"]'))
    assert "model 'mlp' has no parameter 'decoder'" in why
    assert "head/bias, head/kernel, hidden/0/bias, hidden/0/kernel" in why
    why = refusals(folder, PLANT_LAYERS.replace('["head"]', '["head", "hidden"]'))
    assert "covers every parameter" in why
    assert "needs the layers" in refusals(folder, PLANT_LAYERS.replace('["head"]', "[]"))
    assert 'method "none" makes no model per plant' in refusals(
        folder, PLANT_LAYERS.replace('"plant-layers"', '"none"')
    )
    assert "personalization.method" in refusals(folder, PLANT_LAYERS.replace("plant-", "x-"))
    loaded = load_topology(write_topology(folder, codecs=PLANT_LAYERS))
    assert loaded.personalization.layers == ("head",)
    assert not load_topology(write_topology(folder)).personalization.enabled


@pytest.mark.parametrize("method", ["plant-layers", "fine-tune"])
@pytest.mark.parametrize(
    "other, reason",
    [
        ('[privacy]\ndp = "edge"\n', "privacy.dp"),
        ('[privacy]\ndp = "device"\n', "privacy.dp"),
        ("[privacy]\nsecure_aggregation = true\n", "privacy.secure_aggregation"),
        ("[privacy]\nhomomorphic = true\n", "privacy.homomorphic"),
    ],
)
def test_combinations_that_do_not_fit_are_refused(folder, method, other, reason):
    personalization = PLANT_LAYERS if method == "plant-layers" else FINE_TUNE
    why = refusals(folder, personalization + other)
    assert f"personalization.method: {method!r} cannot be combined with {reason}" in why


def test_scaffold_is_refused(folder):
    path = write_topology(folder, codecs=PLANT_LAYERS)
    path.write_text(path.read_text().replace("seed = 7\n", 'seed = 7\nalgorithm = "scaffold"\n'))
    with pytest.raises(TopologyError, match="cannot be combined with algorithm 'scaffold'"):
        load_topology(path)


def test_mask_steps_on_flat_buffers():
    params = {"body": jnp.zeros((2, 3)), "head": {"bias": jnp.zeros(2), "kernel": jnp.zeros(4)}}
    spec = flat_spec(params)  # body (6), head/bias (2), head/kernel (4)
    mask = personal.layer_mask(spec, ["head"])
    assert mask.tolist() == [False] * 6 + [True] * 6
    assert personal.layer_mask(spec, ["head/bias"]).sum() == 2
    assert personal.unknown_layers(spec.names, ["head", "hea", "body/x"]) == ["hea", "body/x"]
    g, p = np.arange(12.0), -np.arange(12.0)
    merged = np.asarray(personal.merge(g, p, mask))
    assert merged.tolist() == list(range(6)) + [-6.0, -7, -8, -9, -10, -11]
    edge = g + 1
    assert (np.asarray(personal.shared_part(edge, merged, mask)) - merged).tolist() == (
        [1.0] * 6 + [0.0] * 6
    )
    deltas = np.ones((3, 12), np.float32)
    assert np.asarray(personal.mask_personal(deltas, mask)).sum(axis=1).tolist() == [6.0] * 3


def test_simulator_keeps_a_model_per_plant(folder):
    path = write_topology(folder, codecs=PLANT_LAYERS)
    result = simulate(path, out=folder / "run")
    _, initial = init_global_model(make_plan(load_topology(path)))
    # The cloud's aggregate leaves the personal layers be; the shared ones train.
    np.testing.assert_array_equal(result.params["head"]["kernel"], initial["head"]["kernel"])
    assert np.abs(result.params["hidden"][0]["kernel"] - initial["hidden"][0]["kernel"]).max() > 0
    models = {p: load_params(folder / "run" / f"model-{p}.npz") for p in ("plant-a", "plant-b")}
    a, b = models["plant-a"], models["plant-b"]
    np.testing.assert_array_equal(a["hidden"][0]["kernel"], result.params["hidden"][0]["kernel"])
    assert np.abs(a["head"]["kernel"] - b["head"]["kernel"]).max() > 0
    last = result.history[-1]
    assert set(last["plant_personal_accuracy"]) == {"plant-a", "plant-b"}
    assert 0 <= last["personal_accuracy"] <= 1
    assert "accuracy" in last and "plant_accuracy" in last
    info = json.loads((folder / "run" / "run.json").read_text())
    assert info["personalization"] == {"method": "plant-layers", "layers": ["head"]}
    report = (write_report(folder / "run"), (folder / "run" / "report.md").read_text())[1]
    assert "final personalized accuracy" in report and "per-plant layers: head" in report
    artifact = export_run(folder / "run", platforms=("cpu",), plant="plant-b")
    assert artifact.meta.run["plant"] == "plant-b"
    with pytest.raises(Exception, match="model-plant-c.npz: no such file"):
        export_run(folder / "run", platforms=("cpu",), plant="plant-c")
    command = [sys.executable, "-m", "hierfl", "export", str(folder / "run"), "--plant", "plant-a"]
    done = subprocess.run(
        [*command, "--platforms", "cpu"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "plant-a personal accuracy" in done.stdout
    assert (folder / "run" / "model-plant-a.hfl").exists()


def test_personalization_absent_trains_as_before(folder):
    """Without the table nothing changes: the same model as with `method = "none"`."""
    plain = simulate(write_topology(folder, name="plain"))
    none = simulate(
        write_topology(folder, name="none", codecs='[personalization]\nmethod = "none"\n')
    )
    for x, y in zip(jax.tree.leaves(plain.params), jax.tree.leaves(none.params), strict=True):
        np.testing.assert_array_equal(x, y)
    assert "personal_accuracy" not in plain.history[-1]


def test_an_edge_sends_the_shared_change_and_keeps_its_layers(folder):
    topology = load_topology(write_topology(folder, codecs=PLANT_LAYERS))
    net = node_model(topology)
    test = make_plan(topology).test

    def uplink():
        plant = topology.plants[0]
        log = logging.getLogger("test")
        return edge_uplink(topology, plant, net, lambda: test, log, he_context=None, model_out=None)

    edge = uplink()
    mask = personal.topology_mask(topology, net.spec)
    base = np.asarray(ravel(net.spec, net.initial_params))
    _, fields = edge.summary(base + 1, base, 3.0, 1, 0, [])
    sent = np.asarray(fields["arrays"][0])
    assert sent.shape == base.shape  # the summary's layout is the plain one
    assert np.all(sent[mask] == 0) and np.all(sent[~mask] != 0)
    state = edge.state()
    np.testing.assert_array_equal(state["personal"][mask], (base + 1)[mask])
    resumed = uplink()
    resumed.restore(state)
    np.testing.assert_array_equal(resumed.personal, state["personal"])
    with pytest.raises(ValueError, match="no plant model"):
        uplink().restore({"residual": state["residual"]})


def test_a_fine_tuning_edge_keeps_its_plant_model_and_sends_only_statistics(folder):
    """A federated round's summary as without personalization; from the first model marked
    `fine_tune` the edge trains from its plant's model and keeps it (`tuned` has no arrays)."""
    topology = load_topology(write_topology(folder, codecs=FINE_TUNE))
    net = node_model(topology)
    test = make_plan(topology).test
    plant, log = topology.plants[0], logging.getLogger("test")

    def uplink():
        return edge_uplink(topology, plant, net, lambda: test, log, he_context=None, model_out=None)

    def model(version: int, flat: np.ndarray, **flags) -> protocol.Message:
        frames = protocol.encode(
            protocol.MODEL,
            "cloud",
            round=version + 1,
            model_version=version,
            spec=net.spec,
            codec="none",
            arrays=[flat],
            **flags,
        )
        layouts = {protocol.MODEL: ("none", net.model_layout)}
        return protocol.parse_message(
            frames, senders={"cloud"}, spec=net.spec, layouts=layouts, max_bytes=1 << 24
        )

    edge = uplink()
    base = np.asarray(ravel(net.spec, net.initial_params))
    taken = edge.receive(model(0, base))
    assert not taken.model.fine_tune and edge.personal is None
    assert edge.summary(base + 1, base, 3.0, 1, 0, [])[0] == protocol.SUMMARY
    glob = base + 0.5
    taken = edge.receive(model(1, glob, fine_tune=True))
    assert taken.model.fine_tune
    np.testing.assert_array_equal(
        taken.model.flat, glob
    )  # fine-tuning starts from the global model
    (kind, mine), (_, theirs) = taken.replies  # the plant's model is the global one so far
    assert mine["personal"] and mine["loss_sum"] == theirs["loss_sum"]
    assert edge.summary(glob + 1, glob, 3.0, 2, 0, []) == (protocol.TUNED, {})
    taken = edge.receive(model(2, glob, fine_tune=True))
    np.testing.assert_array_equal(taken.model.flat, glob + 1)  # the plant's own model now
    (_, mine), (_, theirs) = taken.replies
    assert mine["loss_sum"] != theirs["loss_sum"]
    resumed = uplink()
    resumed.restore(edge.state())
    np.testing.assert_array_equal(resumed.personal, glob + 1)
    fresh = uplink()
    fresh.restore(uplink().state())  # saved before fine-tuning: no plant model yet
    assert fresh.personal is None


def test_the_cloud_waits_for_both_evaluations_of_a_plant(folder):
    task = topology_task(load_topology(write_topology(folder)))
    written = []
    scores = PendingScores(task, ["plant-a"], lambda r, v, who: written.append(r), personal=True)
    scores.add(1, {"round": 1})
    sums = {**release_evaluation(empty_sums(task)), "count": 0}

    def evaluation(**extra):
        return protocol.Message(protocol.EVALUATION, "plant-a", 1, 0, {**sums, **extra})

    scores.take(evaluation(), round=2)
    assert not scores.complete({"plant-a"}) and not written
    scores.take(evaluation(personal=True), round=2)
    assert scores.complete({"plant-a"})
    assert set(written[0]) >= {"accuracy", "personal_accuracy", "plant_personal_accuracy"}
    plain = PendingScores(task, ["plant-a"], lambda r, v, who: None)
    plain.add(1, {"round": 1})
    with pytest.raises(protocol.MessageRejected, match="no \\[personalization\\]"):
        plain.take(evaluation(personal=True), round=2)


def test_fine_tuning_is_checked(folder):
    assert 'personalization.rounds: method "fine-tune" needs the rounds' in refusals(
        folder, FINE_TUNE.replace("rounds = 1\n", "")
    )
    assert "2 fine-tuning rounds leave none of federation.cloud_rounds = 2" in refusals(
        folder, FINE_TUNE.replace("rounds = 1", "rounds = 2")
    )
    assert 'personalization.rounds: method "plant-layers" keeps its layers' in refusals(
        folder, PLANT_LAYERS + "rounds = 1\n"
    )
    assert "model 'mlp' has no parameter 'decoder'" in refusals(
        folder, FINE_TUNE + 'layers = ["decoder"]\n'
    )
    every = load_topology(
        write_topology(folder, codecs=FINE_TUNE + 'layers = ["head", "hidden"]\n')
    )
    assert every.personalization.layers == ("head", "hidden")  # fine-tuning may adapt all
    loaded = load_topology(write_topology(folder, codecs=FINE_TUNE + 'layers = ["head"]\n'))
    assert (loaded.personalization.rounds, loaded.personalization.layers) == (1, ("head",))
    assert runtime_problem(loaded) is None  # the runtime fine-tunes too
    assert runtime_problem(load_topology(write_topology(folder, codecs=PLANT_LAYERS))) is None


def test_fine_tuning_adapts_the_global_model_per_plant(folder):
    """The first rounds are plain federated training; in the last each plant trains alone."""
    plain = simulate(write_topology(folder, name="plain", rounds=1))
    path = write_topology(folder, name="tuned", codecs=FINE_TUNE + 'layers = ["head"]\n')
    tuned = simulate(path, out=folder / "run")
    # The global model is the federated rounds' and stays through the fine-tuning round.
    for x, y in zip(jax.tree.leaves(plain.params), jax.tree.leaves(tuned.params), strict=True):
        np.testing.assert_array_equal(x, y)
    first, last = tuned.history
    assert first["plant_personal_accuracy"] == first["plant_accuracy"]
    assert last["plant_accuracy"] == plain.history[-1]["plant_accuracy"]
    assert last["bytes"]["edge_to_cloud"] == 0 < first["bytes"]["edge_to_cloud"]
    assert last["bytes"]["cloud_to_edge"] == first["bytes"]["cloud_to_edge"] > 0
    assert last["bytes"]["device_to_edge"] == first["bytes"]["device_to_edge"] > 0
    models = {p: load_params(folder / "run" / f"model-{p}.npz") for p in ("plant-a", "plant-b")}
    a, b = models["plant-a"], models["plant-b"]
    for model in (a, b):  # only the head is adapted
        np.testing.assert_array_equal(
            model["hidden"][0]["kernel"], tuned.params["hidden"][0]["kernel"]
        )
        assert np.abs(model["head"]["kernel"] - tuned.params["head"]["kernel"]).max() > 0
    assert np.abs(a["head"]["kernel"] - b["head"]["kernel"]).max() > 0
    info = json.loads((folder / "run" / "run.json").read_text())
    assert info["personalization"] == {"method": "fine-tune", "layers": ["head"], "rounds": 1}
    report = (write_report(folder / "run"), (folder / "run" / "report.md").read_text())[1]
    assert "fine-tuned: the last 1 rounds each plant trains layers head" in report
    everything = simulate(write_topology(folder, name="all", codecs=FINE_TUNE), out=folder / "all")
    whole = load_params(folder / "all" / "model-plant-a.npz")
    assert np.abs(whole["hidden"][0]["kernel"] - everything.params["hidden"][0]["kernel"]).max() > 0


def test_a_plant_publishes_its_own_model_only_with_personalization(folder):
    """`plants.publish`: where plant-a's edge publishes plant-a's model (with personalization)."""

    def with_publish(codecs: str, address: str) -> str:
        path = write_topology(folder, codecs=codecs)
        plant_a = f'address = "ipc://{folder}/a.ipc"\n'
        path.write_text(path.read_text().replace(plant_a, f'{plant_a}publish = "{address}"\n'))
        return path

    models = f"ipc://{folder}/models.ipc"
    for codecs in (PLANT_LAYERS, FINE_TUNE):
        loaded = load_topology(with_publish(codecs, models))
        assert [plant.publish for plant in loaded.plants] == [models, None]
    with pytest.raises(TopologyError, match="plants\\[0\\].publish: the plant's edge publishes"):
        load_topology(with_publish("", models))
    with pytest.raises(TopologyError, match="plants\\[0\\].publish: .* already used by cloud"):
        load_topology(with_publish(PLANT_LAYERS, f"ipc://{folder}/cloud.ipc"))
    with pytest.raises(TopologyError, match="plants\\[0\\].publish: malformed address"):
        load_topology(with_publish(PLANT_LAYERS, "nowhere"))


class Shell(types.SimpleNamespace):
    """What `PlainAggregation` asks of the cloud's shell, recording what it writes."""

    def send(self, edge, frames):
        pass

    def alive_edges(self):
        return {"plant-a", "plant-b"}

    def write(self, record):
        self.written.append(record)

    def serve(self, done, seconds):
        pass


def test_the_cloud_steps_in_federated_rounds_only_and_takes_the_kind_each_expects(folder):
    """With 2 cloud rounds and 1 fine-tuning round: round 1 takes summaries and steps,
    round 2's model is marked `fine_tune`, takes `tuned` only and leaves the model as it is."""
    topology = load_topology(write_topology(folder, codecs=FINE_TUNE))
    net = node_model(topology)
    shell = Shell(log=logging.getLogger("test cloud"), rounds=2, written=[])
    cloud = PlainAggregation(topology, net, folder / "run", shell, publish=None)

    def message(kind: str, round: int) -> protocol.Message:
        arrays = [np.full(net.spec.size, 0.01, np.float32)] if kind == protocol.SUMMARY else []
        frames = protocol.encode(
            kind,
            "plant-a",
            round=round,
            spec=net.spec,
            codec="none",
            arrays=arrays,
            weight=10.0,
            loss=5.0,
            answered=[2],
            expected=2,
        )
        layouts = {protocol.SUMMARY: ("none", net.edge_layout)}
        return protocol.parse_message(
            frames, senders={"plant-a"}, spec=net.spec, layouts=layouts, max_bytes=1 << 24
        )

    def close(round: int) -> None:
        closing = Closing(round, True, {"plant-a": {}}, 2, 2, lambda scores, clip: {"round": round})
        cloud.close_round(closing)

    def refused(kind: str, round: int) -> str:
        with pytest.raises(protocol.MessageRejected) as info:
            cloud.take(0, message(kind, round), 10.0)
        assert info.value.reason == protocol.UNEXPECTED
        return str(info.value)

    def model_header(frames) -> dict:
        return protocol.parse_header(bytes(frames[0]))

    start = np.asarray(ravel(net.spec, cloud.params))
    assert "fine_tune" not in model_header(cloud.open_round(1))
    assert "tuned in cloud round 1, which takes summary messages" in refused(protocol.TUNED, 1)
    cloud.take(0, message(protocol.SUMMARY, 1), 10.0)
    close(1)
    federated = np.asarray(ravel(net.spec, cloud.params))
    assert np.abs(federated - start).max() > 0
    assert model_header(cloud.open_round(2))["fine_tune"] is True
    assert "summary in cloud round 2, which takes tuned messages" in refused(protocol.SUMMARY, 2)
    cloud.take(0, message(protocol.TUNED, 2), 10.0)
    close(2)
    np.testing.assert_array_equal(np.asarray(ravel(net.spec, cloud.params)), federated)
    cloud.close()
