"""Plant speeds: validated where the topology is read, and turned into simulated seconds."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import topology_text
from hierfl.core import speeds
from hierfl.sim.engine import simulate
from hierfl.topology import TopologyError, parse_topology

SLOW = 'address = "tcp://127.0.0.1:7101"\n'


def with_speeds(text: str, plant: int, **fields) -> str:
    """`text` with `fields` added to plant `plant`'s table (right after its address)."""
    address = f'address = "tcp://127.0.0.1:{7100 + plant}"\n'
    added = "".join(f"{key} = {value}\n" for key, value in fields.items())
    return text.replace(address, address + added)


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("seconds_per_step", "0", "must be > 0"),
        ("latency", "-0.5", "must be > 0"),
        ("bandwidth", "inf", "must be finite"),
        ("seconds_per_step", '"fast"', "expected a number"),
    ],
)
def test_a_bad_speed_is_refused_naming_the_field(field, value, why):
    text = with_speeds(topology_text(plants=[[2], [2]]), 1, **{field: value})
    with pytest.raises(TopologyError) as error:
        parse_topology(text, "speeds.toml")
    assert f"plants[1].{field}: {why}" in str(error.value)


def test_cycle_seconds_add_compute_and_link():
    # plant-0: 2 edge rounds x 3 steps x 0.5 s; plant-1: line steps 5, 2 x 5 x 0.1 s, plus a link.
    text = topology_text(plants=[[2], [1]], edge_rounds=2, local_steps=3)
    text = with_speeds(text, 0, seconds_per_step=0.5)
    text = with_speeds(text, 1, seconds_per_step=0.1, latency=0.25, bandwidth=1000)
    text = text.replace("devices = 1\n", "devices = 1\nlocal_steps = 5\n")
    topology = parse_topology(text, "speeds.toml")
    cycles = speeds.cycle_seconds(topology, model_bytes=3000, summary_bytes=1000)
    np.testing.assert_allclose(cycles, [3.0, 1.0 + 0.5 + 4.0])
    assert speeds.sync_round_seconds(cycles) == pytest.approx(5.5)
    assert speeds.sync_round_seconds(cycles, np.array([True, False])) == pytest.approx(3.0)


def test_simulate_records_the_slowest_plant_per_round():
    text = topology_text(plants=[[2], [2]], cloud_rounds=2, local_steps=2)
    text = with_speeds(text, 0, seconds_per_step=0.01)
    text = with_speeds(text, 1, seconds_per_step=0.05)
    result = simulate(parse_topology(text, "speeds.toml"))
    # The slowest plant: one edge round of 2 steps at 0.05 s, no link declared.
    assert [r["sim_seconds"] for r in result.history] == pytest.approx([0.1, 0.2])


def test_no_speed_no_simulated_seconds(make_topology):
    assert not speeds.declares_speeds(make_topology(plants=[[1], [1]]))
