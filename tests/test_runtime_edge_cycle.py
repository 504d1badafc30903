"""`EdgeCycle` without sockets: a fake collecting mode and a fake uplink, the Outbox checked.

Rounds, tallies, quorum, offline rounds and the stale summary are decided here; the live
edge (`test_runtime_edge.py`) checks the same through real sockets.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hierfl.kernels import flat_spec
from hierfl.runtime import protocol
from hierfl.runtime.edge_cycle import COLLECTING, IDLE, STARTING, EdgeCycle, Outbox
from hierfl.runtime.edge_rounds import RoundResult
from hierfl.runtime.edge_tally import NoVariates
from hierfl.runtime.edge_uplink import CloudModel

DEVICES = ("plant-0/line-0/dev-001", "plant-0/line-0/dev-002")


class FakeRounds:
    """Every answering device adds 1 to the model and weight 10, loss 2."""

    kinds = (protocol.UPDATE,)
    layouts: dict = {}

    def __init__(self):
        self.expected: set[str] = set()
        self.answered: set[str] = set()

    def open(self, invited, round, edge_round, version):
        self.expected, self.answered = set(invited), set()

    def next_phase(self):
        return None

    def variate_sum(self):
        return NoVariates.EMPTY

    def aggregate(self, edge_flat, round, edge_round, clip_norm):
        n = len(self.answered)
        return RoundResult(np.asarray(edge_flat) + n, 10.0 * n, 2.0 * n, 0.0)

    def status(self, collecting):
        return {}

    def summary_fields(self):
        return {}


class FakeUplink:
    """Summaries carry `edge_flat - base_flat` and the key index they were encoded with."""

    version = 0

    def summary(self, edge_flat, base_flat, weight, round, key_index, extra):
        delta = np.asarray(edge_flat) - np.asarray(base_flat)
        return protocol.SUMMARY, {"delta": delta, "key_index": key_index}


SPEC = flat_spec({"w": np.zeros(3, np.float32)})
LOG = logging.getLogger("test-edge-cycle")


@pytest.fixture
def cycle(make_topology):
    """`cycle(edge_rounds)` -> the EdgeCycle of plant-0 (2 plants of 2 devices) and its rounds."""

    def make(edge_rounds: int) -> tuple[EdgeCycle, FakeRounds]:
        topology = make_topology(plants=[[2], [2]], edge_rounds=edge_rounds)
        assert tuple(d.id for d in topology.plants[0].devices) == DEVICES
        rounds = FakeRounds()
        return EdgeCycle(topology, 0, SPEC, rounds, FakeUplink(), NoVariates(), LOG), rounds

    return make


def model(round: int, version: int) -> CloudModel:
    return CloudModel(round, version, np.zeros(3, np.float32), 1.0)


def answer(rounds: FakeRounds, devices=DEVICES) -> None:
    rounds.answered = set(devices)


def health() -> dict:
    return {"rejected": {}, "late": 0}


def test_a_cloud_round_runs_its_edge_rounds_then_sends_one_summary(cycle):
    edge, rounds = cycle(edge_rounds=2)
    assert edge.start(model(1, 0), DEVICES) == Outbox()
    assert edge.phase == STARTING
    first = edge.open(DEVICES)
    assert edge.phase == COLLECTING and first.opened and set(first.devices) == set(DEVICES)
    answer(rounds)
    second = edge.close(DEVICES, [0, 0], health)
    assert second.opened and edge.edge_round == 1 and not second.cloud
    answer(rounds)
    done = edge.close(DEVICES, [0, 0], health)
    ((kind, fields),) = done.cloud
    assert kind == protocol.SUMMARY and done.checkpoint and edge.phase == IDLE
    assert (fields["round"], fields["weight"], fields["loss"]) == (1, 40.0, 8.0)
    assert fields["answered"] == [2, 2] and fields["expected"] == 2 and fields["key_index"] == 0
    np.testing.assert_array_equal(fields["delta"], [4, 4, 4])
    assert edge.finished_round == 1


def test_too_few_answers_leave_the_model_and_count_nothing(cycle):
    edge, rounds = cycle(edge_rounds=1)
    edge.start(model(1, 0), DEVICES)
    edge.open(DEVICES)
    assert edge.required() == 1  # half the plant's devices, by default
    answer(rounds, ())
    ((_, fields),) = edge.close(DEVICES, [0, 0], health).cloud
    assert fields["weight"] == 0.0 and fields["answered"] == [0]
    np.testing.assert_array_equal(fields["delta"], [0, 0, 0])


def test_an_older_model_or_the_round_in_progress_is_ignored(cycle):
    edge, rounds = cycle(2)
    edge.start(model(2, 1), DEVICES)
    edge.open(DEVICES)
    assert edge.start(model(1, 0), DEVICES) == Outbox()
    assert edge.start(model(2, 1), DEVICES) == Outbox()
    assert edge.round == 2 and edge.phase == COLLECTING


def test_offline_rounds_go_up_as_a_stale_summary_from_the_last_summary(cycle):
    edge, rounds = cycle(edge_rounds=1)
    edge.start(model(1, 0), DEVICES)
    edge.open(DEVICES)
    answer(rounds)
    edge.close(DEVICES, [0, 0], health)  # the summary of round 1
    assert edge.may_go_offline()
    for _ in range(1):  # at most edge_rounds offline rounds
        edge.open_offline(DEVICES)
        assert (edge.round, edge.offline.active) == (2, True)
        answer(rounds)
        assert edge.close(DEVICES, [0, 0], health) == Outbox()
    assert not edge.may_go_offline()
    back = edge.start(model(2, 1), DEVICES)
    ((kind, fields),) = back.cloud
    assert kind == protocol.SUMMARY and fields["stale"] is True
    assert (fields["round"], fields["weight"], fields["base_version"]) == (2, 20.0, 1)
    assert fields["key_index"] == 2 + 0  # plants + index: apart from the round's own summary
    assert fields["model_version"] == 0  # sent before the new model's version
    np.testing.assert_array_equal(fields["delta"], [2, 2, 2])
    assert back.opened and not edge.offline.active and edge.model_version == 1
