"""The buffered cloud's decisions across a crash: a summary applied before it is never taken
again, one buffered but not applied is lost (never applied twice), and the buffer fills on."""

from __future__ import annotations

import logging
import time
import types

import numpy as np
import pytest
from test_buffered import speeds_text

from hierfl.runtime import protocol
from hierfl.runtime.cloud_async import BufferedRounds
from hierfl.runtime.cloud_buffer import BufferedAggregation
from hierfl.runtime.node import Counters, node_model
from hierfl.topology import parse_topology


class Node(types.SimpleNamespace):
    """What `BufferedRounds` asks of `cloud.CloudNode`, with the models it sends kept."""

    def send(self, edge, frames):
        self.sent.append(edge)

    def write(self, record):
        self.written.append(record)

    def alive_edges(self):
        return set(self.edges)


def cloud(topology, net, run_dir, resume: bool) -> tuple[Node, BufferedRounds]:
    node = Node(
        topology=topology,
        runtime=topology.runtime,
        net=net,
        edges={name: i for i, name in enumerate(topology.plant_names)},
        round=1,
        rounds=5,
        resumed=resume,
        log=logging.getLogger("test cloud"),
        live=types.SimpleNamespace(write=lambda: None),
        counters=Counters(),
        late=0,
        elapsed_before=0.0,
        run_started=time.perf_counter(),
        sent=[],
        written=[],
    )
    node.mode = BufferedAggregation(topology, net, run_dir, node, publish=None)
    if resume:
        node.round, _ = node.mode.restore()
    rounds = BufferedRounds(node)
    rounds.open()
    return node, rounds


def summary(net, plant: str, cycle: int, version: int) -> protocol.Message:
    frames = protocol.encode(
        protocol.SUMMARY,
        plant,
        round=cycle,
        model_version=version,
        spec=net.spec,
        codec="none",
        arrays=[np.full(net.spec.size, 0.01 * cycle, np.float32)],
        weight=10.0,
        loss=5.0,
        answered=[2],
        expected=2,
    )
    return protocol.parse_message(
        frames,
        senders={plant},
        spec=net.spec,
        layouts={protocol.SUMMARY: ("none", net.edge_layout)},
        max_bytes=1 << 28,
    )


def test_a_summary_applied_before_a_crash_is_refused_after_it(tmp_path):
    topology = parse_topology(speeds_text([1, 5], 2, cloud_rounds=5), "b.toml")
    net = node_model(topology)
    node, rounds = cloud(topology, net, tmp_path, resume=False)
    rounds.summary(summary(net, "plant-0", 1, 0), collecting=True)
    rounds.summary(summary(net, "plant-0", 2, 0), collecting=True)  # full: version 1
    assert node.round == 2
    rounds.summary(summary(net, "plant-0", 3, 1), collecting=True)  # buffered, then the crash
    node.mode.close()

    node, rounds = cloud(topology, net, tmp_path, resume=True)
    assert node.round == 2 and rounds.taken == {"plant-0": 2}
    for cycle in (1, 2):
        with pytest.raises(protocol.MessageRejected) as refused:
            rounds.summary(summary(net, "plant-0", cycle, 0), collecting=True)
        assert refused.value.reason == protocol.DUPLICATE
    rounds.summary(summary(net, "plant-0", 4, 1), collecting=True)
    rounds.summary(summary(net, "plant-1", 1, 0), collecting=True)  # 1 version stale
    assert node.round == 3
    # Version 1's record (its scores still awaited at the crash) is pending once, beside version
    # 2's: neither is written before every live plant scored it (a record written early would
    # score part of the test set); version 2's holds what it took, cycle 3 not.
    assert node.written == [] and sorted(node.mode.plain.scores.records) == [1, 2]
    version_2 = node.mode.plain.scores.records[2]
    assert version_2["summaries"] == [
        {"plant": "plant-0", "cycle": 4, "staleness": 0},
        {"plant": "plant-1", "cycle": 1, "staleness": 1},
    ]
    assert version_2["cycles_taken"] == {"plant-0": 4, "plant-1": 1}
    node.mode.close()
