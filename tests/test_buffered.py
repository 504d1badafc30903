"""Buffered asynchronous aggregation (FedBuff) at the cloud: its pure parts, the simulator's
schedule, and the options it refuses."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from conftest import topology_text
from hierfl.core import buffered
from hierfl.sim.engine import simulate
from hierfl.topology import BufferedAggregation, TopologyError, parse_topology


def speeds_text(seconds: list[float], buffer_size: int, extra: str = "", **kwargs) -> str:
    """A digits topology of one 2-device plant per entry of `seconds` (its seconds_per_step),
    buffered with `buffer_size`; `extra` appended."""
    text = topology_text(plants=[[2]] * len(seconds), **kwargs)
    for i, s in enumerate(seconds):
        address = f'address = "tcp://127.0.0.1:{7100 + i}"\n'
        text = text.replace(address, address + f"seconds_per_step = {s}\n")
    return text + f"\n[buffered_aggregation]\nbuffer_size = {buffer_size}\n" + extra


def test_staleness_factor_is_polynomial_or_constant():
    polynomial = BufferedAggregation(buffer_size=2, staleness_exponent=0.5)
    assert buffered.staleness_factor(polynomial, 0) == 1.0
    assert buffered.staleness_factor(polynomial, 3) == pytest.approx(0.5)  # 1/sqrt(4)
    constant = BufferedAggregation(buffer_size=2, staleness="constant")
    assert buffered.staleness_factor(constant, 7) == 1.0


def test_the_buffer_waits_for_its_size_and_for_enough_plants():
    assert not buffered.should_apply([0], 2, 1)
    assert buffered.should_apply([0, 0], 2, 1)
    assert not buffered.should_apply([0, 0, 0], 2, 2)
    assert buffered.should_apply([0, 0, 1], 2, 2)
    assert buffered.required_plants(0.5, 3) == 2
    assert buffered.required_plants(0.01, 3) == 1


def test_arrivals_follow_the_speeds_and_break_ties_in_plant_order():
    first = list(itertools.islice(buffered.arrivals([1.0, 2.5, 1.0]), 7))
    assert [(a.seconds, a.plant, a.cycle) for a in first] == [
        (1.0, 0, 1),
        (1.0, 2, 1),
        (2.0, 0, 2),
        (2.0, 2, 2),
        (2.5, 1, 1),
        (3.0, 0, 3),
        (3.0, 2, 3),
    ]


def test_buffer_add_discounts_and_weights():
    add = buffered.make_buffer_add(parse_rule())
    buffer = add(buffered.empty_buffer(2), np.array([1.0, 2.0], np.float32), 3.0, 0.5)
    buffer = add(buffer, np.array([4.0, 0.0], np.float32), 1.0, 1.0)
    np.testing.assert_allclose(buffer.delta_sum, [1.5 + 4.0, 3.0])
    assert float(buffer.weight) == 4.0


def parse_rule():
    return parse_topology(speeds_text([1, 1], 2), "b.toml").aggregation.cloud


def test_one_plant_and_a_buffer_of_one_is_synchronous():
    # Every summary is applied at once and the plant restarts from the model it made: cloud
    # rounds of HierFAVG, with the same keys (the plant's cycle c trains with cloud round c's).
    kwargs = dict(cloud_rounds=2, local_steps=2, seed=3)
    sync_text = speeds_text([0.1], 1, **kwargs).split("[buffered_aggregation]")[0]
    sync = simulate(parse_topology(sync_text, "sync.toml"))
    buffered_run = simulate(parse_topology(speeds_text([0.1], 1, **kwargs), "b.toml"))
    difference = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(sync.params), jax.tree.leaves(buffered_run.params))
    )
    assert difference <= 1e-6
    assert [r["sim_seconds"] for r in sync.history] == pytest.approx([0.2, 0.4])
    assert [r["sim_seconds"] for r in buffered_run.history] == pytest.approx([0.2, 0.4])


def test_equal_speeds_a_plant_restarts_from_the_model_it_holds():
    # plant-0's summary is taken before the buffer is full: it trains again from version 0,
    # so its second summary is one version stale; plant-1's filled the buffer.
    history = simulate(parse_topology(speeds_text([0.1, 0.1], 2, cloud_rounds=2), "b.toml")).history
    assert [r["summaries"] for r in history] == [
        [{"plant": f"plant-{p}", "cycle": 1, "staleness": 0} for p in (0, 1)],
        [{"plant": f"plant-{p}", "cycle": 2, "staleness": s} for p, s in ((0, 1), (1, 0))],
    ]


def test_a_slow_plant_is_buffered_with_its_staleness():
    # plant-0 cycles every 1 s, plant-1 every 5 s; two summaries per application.
    text = speeds_text([1, 5], 2, cloud_rounds=3, local_steps=1)
    history = simulate(parse_topology(text, "b.toml")).history
    taken = [
        [(s["plant"][-1], s["cycle"], s["staleness"]) for s in r["summaries"]] for r in history
    ]
    assert taken == [
        [("0", 1, 0), ("0", 2, 0)],
        [("0", 3, 0), ("0", 4, 0)],
        [("0", 5, 0), ("1", 1, 2)],  # at 5 s, ties in plant order; plant-1 trained from version 0
    ]
    assert [r["sim_seconds"] for r in history] == [2.0, 4.0, 5.0]
    assert all(np.isfinite(r["accuracy"]) for r in history)


def test_min_edge_participation_holds_the_buffer_for_enough_plants():
    text = speeds_text([1, 5], 2, "\n[runtime]\nmin_edge_participation = 1.0\n", cloud_rounds=1)
    history = simulate(parse_topology(text, "b.toml")).history
    assert [s["plant"] for s in history[0]["summaries"]] == ["plant-0"] * 5 + ["plant-1"]


@pytest.mark.parametrize(
    "extra, names",
    [
        ("[privacy]\nhomomorphic = true\n", "privacy.homomorphic"),
        ('[privacy]\ndp = "device"\n', "privacy.dp = 'device'"),
        ('[personalization]\nmethod = "plant-layers"\nlayers = ["head"]\n', "personalization"),
        ('[aggregation.cloud]\nrule = "median"\n', "aggregation.cloud.rule 'median'"),
    ],
    ids=["ckks", "dp", "personalization", "robust-cloud-rule"],
)
def test_meaningless_combinations_are_refused_with_the_reason(extra, names):
    with pytest.raises(TopologyError) as error:
        parse_topology(speeds_text([1, 2, 3], 2, extra), "b.toml")
    refusals = [p for p in error.value.problems if p.startswith("buffered_aggregation:")]
    assert len(refusals) == 1 and names in refusals[0], error.value.problems


def test_scaffold_and_a_plant_without_speed_are_refused():
    text = speeds_text([1, 2], 2, algorithm="scaffold").replace("seconds_per_step = 2\n", "")
    with pytest.raises(TopologyError) as error:
        parse_topology(text, "b.toml")
    problems = error.value.problems
    assert any(
        "buffered_aggregation: cannot be combined with algorithm 'scaffold'" in p for p in problems
    )
    assert any(
        p.startswith("plants[1].seconds_per_step: buffered aggregation needs") for p in problems
    )


def test_a_bad_buffer_is_refused_naming_the_field():
    with pytest.raises(TopologyError) as error:
        parse_topology(speeds_text([1, 2], 0, 'order = "random"\n'), "b.toml")
    text = str(error.value)
    assert "buffered_aggregation.buffer_size: must be >= 1, got 0" in text
    assert "buffered_aggregation.order: " in text
