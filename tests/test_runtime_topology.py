"""The `[runtime]` table of a topology file: defaults, ranges, keys; every problem named by its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from hierfl.topology import Runtime, TopologyError, parse_topology

TINY = (Path(__file__).parent / "data" / "tiny.toml").read_text()
KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(TINY + text)
    return list(info.value.problems)


def test_defaults_without_a_runtime_table():
    runtime = parse_topology(TINY).runtime
    assert runtime == Runtime()
    assert not runtime.secure


def test_values_are_read_and_checked():
    runtime = parse_topology(
        TINY + "\n[runtime]\ndevice_deadline = 2\nmin_device_participation = 0.75\n"
    ).runtime
    assert runtime.device_deadline == 2.0 and runtime.min_device_participation == 0.75
    found = problems(
        "\n[runtime]\ndevice_deadline = 0\nmin_edge_participation = 1.5\nheartbeat_interval = 2.0\n"
        "heartbeat_timeout = 1.0\nmax_message_bytes = 10\ndeadline = 3\n"
    )
    assert any(p.startswith("runtime.device_deadline: must be > 0") for p in found)
    assert any(p.startswith("runtime.min_edge_participation: must be in (0, 1]") for p in found)
    assert any(
        p.startswith("runtime.heartbeat_timeout: must be greater than heartbeat_interval")
        for p in found
    )
    assert any(p.startswith("runtime.max_message_bytes: must be >= 1024") for p in found)
    assert any(p.startswith("runtime.deadline: unknown key") for p in found)


def test_secure_aggregation_phases_wait_their_own_deadline_or_the_devices():
    from hierfl.runtime.secagg_rounds import phase_deadline

    assert phase_deadline(parse_topology(TINY + "\n[runtime]\ndevice_deadline = 20\n")) == 20.0
    assert (
        phase_deadline(
            parse_topology(TINY + "\n[runtime]\ndevice_deadline = 20\nsecagg_deadline = 3\n")
        )
        == 3.0
    )
    assert any(
        p.startswith("runtime.secagg_deadline: must be > 0")
        for p in problems("\n[runtime]\nsecagg_deadline = 0\n")
    )


def test_devices_per_process_is_a_grouping_or_a_positive_integer():
    assert parse_topology(TINY).runtime.devices_per_process == "auto"
    assert (
        parse_topology(
            TINY + '\n[runtime]\ndevices_per_process = "line"\n'
        ).runtime.devices_per_process
        == "line"
    )
    assert (
        parse_topology(TINY + "\n[runtime]\ndevices_per_process = 8\n").runtime.devices_per_process
        == 8
    )
    for value, shown in (
        ("0", "int 0"),
        ('"lines"', "str 'lines'"),
        ("true", "bool True"),
        ("1.5", "float 1.5"),
    ):
        assert problems(f"\n[runtime]\ndevices_per_process = {value}\n") == [
            f'runtime.devices_per_process: expected "auto", "line", "plant" or an integer >= 1, got {shown}'
        ]


def test_keys_make_the_runtime_secure_and_must_cover_every_plant():
    runtime = parse_topology(
        TINY
        + f'\n[runtime.keys]\ncloud = "{KEY}"\nedges = {{ plant-a = "{KEY}" }}\ndevices = ["{KEY}"]\n'
    ).runtime
    assert (
        runtime.secure and runtime.edge_keys == {"plant-a": KEY} and runtime.device_keys == (KEY,)
    )
    found = problems(f'\n[runtime.keys]\ncloud = "short"\nedges = {{ plant-z = "{KEY}" }}\n')
    assert (
        "runtime.keys.cloud: expected a 40-character Z85 public key (from `hierfl keys generate`), got str 'short'"
        in found
    )
    assert "runtime.keys.edges: missing the public key of plant 'plant-a'" in found
    assert "runtime.keys.edges.plant-z: no plant of that name" in found
    assert any(p.startswith("runtime.keys.devices: expected a non-empty array") for p in found)
