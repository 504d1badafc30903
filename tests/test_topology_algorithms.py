"""The topology file's algorithm, per-tier rule, optimizer and attack fields, and their validation."""

from __future__ import annotations

import pytest

from conftest import topology_text
from hierfl.data.loading import load_topology
from hierfl.topology import ServerOptimizer, TierRule, TopologyError, parse_topology

SHAPE = [[5, 5], [5, 5], [5]]  # plants of 10, 10 and 5 devices


def parse(
    extra: str = "",
    federation: str = "",
    line_extra: str = "",
    algorithm: str = "fedavg",
    plants=SHAPE,
):
    text = topology_text(plants=plants, algorithm=algorithm)
    text = text.replace("seed = 0\n", f"seed = 0\n{federation}\n")
    text = text.replace("[cloud]", f"{extra}\n[cloud]")
    if line_extra:
        text = text.replace('name = "line-1"\n', f'name = "line-1"\n{line_extra}\n', 1)
    return parse_topology(text, "test.toml", choices=load_choices())


def load_choices():
    from hierfl.core.algorithms import ALGORITHMS
    from hierfl.data.tasks import TASKS

    return {"federation.task": TASKS, "federation.algorithm": ALGORITHMS}


def problems(**kwargs) -> list[str]:
    with pytest.raises(TopologyError) as error:
        parse(**kwargs)
    return list(error.value.problems)


def test_defaults_are_fedavg_with_mean_everywhere():
    topology = parse()
    assert topology.aggregation.edge == TierRule() and topology.aggregation.cloud == TierRule()
    assert topology.aggregation.optimizer == ServerOptimizer("sgd")
    assert topology.federation.mu is None and topology.attack.kind == "none"
    assert set(topology.device_steps) == {3}


def test_every_tier_and_plant_is_read():
    topology = parse(
        extra='[aggregation.edge]\nrule = "trimmed_mean"\nbeta = 0.2\nclip_norm = 5.0\n'
        '[aggregation.cloud]\nrule = "median"\noptimizer = "adam"\nbeta2 = 0.999\ntau = 0.01\n'
        '[attack]\nkind = "sign_flip"\nfraction = 0.2\nscale = 5',
        line_extra="local_steps = 7",
    )
    assert topology.aggregation.edge == TierRule("trimmed_mean", beta=0.2, clip_norm=5.0)
    assert topology.aggregation.cloud.rule == "median"
    assert topology.aggregation.optimizer == ServerOptimizer("adam", beta2=0.999, tau=0.01)
    assert topology.attack.fraction == 0.2 and topology.attack.scale == 5.0
    # line-1 of plant-0 takes 7 steps, everyone else the federation's 3.
    assert topology.device_steps == (3,) * 5 + (7,) * 5 + (3,) * 15


def test_a_plant_may_use_its_own_edge_rule():
    text = topology_text(plants=SHAPE).replace(
        'address = "tcp://127.0.0.1:7101"\n',
        'address = "tcp://127.0.0.1:7101"\n[plants.aggregation]\nrule = "krum"\nbyzantine = 2\n',
    )
    topology = parse_topology(text, "test.toml")
    assert [topology.edge_rule(p).rule for p in topology.plants] == ["mean", "krum", "mean"]


def test_fedprox_gets_a_default_mu():
    assert parse(algorithm="fedprox").federation.mu == 0.01
    assert parse(algorithm="fedprox", federation="mu = 0.5").federation.mu == 0.5


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            dict(extra='[aggregation.edge]\nrule = "average"'),
            "aggregation.edge.rule: unknown value 'average' (choose from: krum, mean, median, multi_krum, trimmed_mean)",
        ),
        (
            dict(extra='[aggregation.edge]\nrule = "trimmed_mean"\nbeta = 0.5'),
            "aggregation.edge.beta: must be in [0, 0.5), got 0.5",
        ),
        (
            dict(algorithm="fedprox", federation="mu = -0.1"),
            "federation.mu: must be >= 0, got -0.1",
        ),
        (
            dict(federation="mu = 0.1"),
            "federation.mu: algorithm 'fedavg' takes no mu (only fedprox does)",
        ),
        (
            dict(extra='[aggregation.edge]\nrule = "median"\nbeta = 0.1'),
            "aggregation.edge.beta: rule 'median' takes no beta (only trimmed_mean does)",
        ),
        (
            dict(extra='[aggregation.cloud]\noptimizer = "sgd"\nbeta1 = 0.8'),
            "aggregation.cloud.beta1: optimizer 'sgd' takes no beta1 (only adam, yogi does)",
        ),
        (
            dict(extra='[aggregation.cloud]\noptimizer = "fedadam"'),
            "aggregation.cloud.optimizer: unknown value 'fedadam' (choose from: adagrad, adam, momentum, sgd, yogi)",
        ),
        (
            dict(extra='[aggregation.edge]\noptimizer = "adam"'),
            "aggregation.edge.optimizer: unknown key",
        ),
        (
            dict(extra='[aggregation.plant]\nrule = "mean"'),
            "aggregation.plant: unknown key (allowed: cloud, edge)",
        ),
        (
            dict(extra="[aggregation.edge]\nclip_norm = 0"),
            "aggregation.edge.clip_norm: must be > 0, got 0.0",
        ),
        (
            dict(extra='[attack]\nkind = "sign_flip"\nfraction = 1.0'),
            "attack.fraction: must be in [0, 1), got 1.0",
        ),
        (dict(line_extra="local_steps = 0"), "plants[0].lines[1].local_steps: must be >= 1, got 0"),
        (dict(algorithm="fedavgg"), "federation.algorithm: unknown value 'fedavgg'"),
    ],
)
def test_bad_fields_are_named(kwargs, expected):
    found = problems(**kwargs)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            dict(extra='[aggregation.edge]\nrule = "krum"\nbyzantine = 2'),
            "aggregation.edge.byzantine: krum tolerating 2 byzantine senders needs at least 2 * 2 + 3 = 7, "
            "but there are 5 devices in plant 'plant-2'",
        ),
        (
            dict(extra='[aggregation.cloud]\nrule = "krum"'),
            "aggregation.cloud.byzantine: krum tolerating 1 byzantine senders needs at least 2 * 1 + 3 = 5, but there are 3 plants",
        ),
        (
            dict(extra='[aggregation.edge]\nrule = "multi_krum"\nbyzantine = 1\nselect = 5'),
            "aggregation.edge.select: multi_krum can average at most 5 - 1 = 4 updates, got select = 5 (5 devices in plant 'plant-2')",
        ),
        (
            dict(extra='[aggregation.cloud]\nrule = "median"', plants=[[5], [5]]),
            "aggregation.cloud.rule: 'median' over 2 plants is meaningless (needs at least 3)",
        ),
        (
            dict(algorithm="scaffold", extra='[aggregation.edge]\nrule = "trimmed_mean"'),
            "aggregation.edge.rule: 'trimmed_mean' cannot be combined with algorithm 'scaffold'",
        ),
        (
            dict(algorithm="fedsgd", line_extra="local_steps = 4"),
            "plants[0].lines[1].local_steps: algorithm 'fedsgd' takes exactly one full-batch step",
        ),
    ],
)
def test_meaningless_combinations_are_rejected(kwargs, expected):
    found = problems(**kwargs)
    assert any(p.startswith(expected) for p in found), found


def test_python_api_checks_like_the_loader():
    topology = parse()
    changed = topology.with_aggregation(
        edge=TierRule("median"), optimizer=ServerOptimizer("yogi", tau=0.01)
    )
    assert (
        changed.aggregation.edge.rule == "median"
        and changed.aggregation.optimizer.optimizer == "yogi"
    )
    with pytest.raises(
        TopologyError, match=r"aggregation.edge.beta: must be in \[0, 0.5\), got 0.7"
    ):
        topology.with_aggregation(edge=TierRule("trimmed_mean", beta=0.7))
    with pytest.raises(TopologyError, match="cannot be combined with algorithm 'scaffold'"):
        changed.with_federation(algorithm="scaffold")
    assert topology.with_federation(algorithm="fedprox").federation.mu == 0.01
    assert topology.with_federation(algorithm="fedprox", mu=0.3).federation.mu == 0.3
    with pytest.raises(TopologyError, match="takes no mu"):
        topology.with_federation(mu=0.3)
    with pytest.raises(TopologyError, match="algorithm 'fedprox' needs mu"):
        topology.with_federation(algorithm="fedprox", mu=None)
    # Restating the algorithm keeps its parameters; switching away drops them.
    prox = topology.with_federation(algorithm="fedprox", mu=0.3)
    assert prox.with_federation(algorithm="fedprox").federation.mu == 0.3
    assert prox.with_federation(cloud_rounds=7).federation.mu == 0.3
    assert prox.with_federation(algorithm="fedavg").federation.mu is None


def test_the_demo_preset_still_loads():
    assert load_topology("demo").aggregation.edge.rule == "mean"
