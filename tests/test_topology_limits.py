"""Topology files at and past the limits of what the code can use: each refused at load time,
in one problem line naming the field (or the file) and the limit, never a traceback or a hang.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import topology_text
from hierfl.topology import TopologyError, load_topology, parse_topology
from hierfl.topology.load import MAX_FILE_BYTES
from hierfl.topology.schema import MAX_PRINTED_PROBLEMS

HIERFL = Path(sys.executable).parent / "hierfl"
BASE = topology_text(plants=[[2]])


def problems(text: str) -> tuple[str, ...]:
    with pytest.raises(TopologyError) as refused:
        parse_topology(text, "t.toml")
    return refused.value.problems


def test_a_file_larger_than_the_limit_is_refused_unread_naming_its_size(tmp_path):
    big = tmp_path / "big.toml"
    with open(big, "wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing written
    with pytest.raises(TopologyError) as refused:
        load_topology(big)
    assert refused.value.problems == (
        f"is {MAX_FILE_BYTES + 1:,} bytes; a topology file may have at most {MAX_FILE_BYTES:,}",
    )


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path):
    """Run as `hierfl topology validate`: reading either used to block or never end."""
    fifo = tmp_path / "plants.toml"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), ("/dev/zero", "a character device")):
        refused = subprocess.run(
            [str(HIERFL), "topology", "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=120,  # a guard against the hang this test is about, not a timing
        )
        assert refused.returncode == 2
        assert f"is not a regular file ({kind}), expected a TOML file" in refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x = " + "{a = " * 2000 + "1" + "}" * 2000, "nest too deeply to parse"),
        ("x = " + "[" * 2000 + "1" + "]" * 2000, "nest too deeply to parse"),
        ("[federation.name" + ".a" * 3000 + "]\nx = 1\n", "nested more than 32 tables"),
        ("[plants." + ".".join(["a"] * 40) + "]\n", "plants.a.a.a"),
    ],
)
def test_a_document_nested_hundreds_deep_is_one_problem(text, expected):
    found = problems(text)
    assert len(found) == 1 and expected in found[0], found


def test_hundreds_of_thousands_of_problems_print_the_first_ones_and_a_count():
    names = ", ".join(['"-bad"'] * 200_000)  # each invalid, and each a repeat
    found = problems(BASE.replace("devices = 2", f"devices = [{names}]"))
    assert len(found) == 400_000 - 1
    lines = str(TopologyError(found, "t.toml")).splitlines()
    assert len(lines) == 1 + MAX_PRINTED_PROBLEMS + 1
    assert lines[-1] == f"  ... and {len(found) - MAX_PRINTED_PROBLEMS} more"


def test_names_that_make_too_long_routing_ids_are_refused_naming_the_field():
    assert parse_topology(BASE.replace('name = "test"', f'name = "{"f" * 200}"'))
    fits = BASE.replace("devices = 2", f'devices = ["{"d" * (200 - len("plant-0/line-0/"))}"]')
    assert len(parse_topology(fits).plants[0].devices[0].id.encode()) == 200
    cases = [
        (BASE.replace('name = "test"', f'name = "{"f" * 201}"'), "federation.name: 201 bytes"),
        (BASE.replace('"plant-0"', f'"{"p" * 300}"'), "plants[0].name: 300 bytes"),
        (
            BASE.replace("devices = 2", f'devices = ["ok", "{"d" * 186}", "{"e" * 190}"]'),
            "plants[0].lines[0].devices[1]: device id 'plant-0/line-0/ddd",
        ),
        (BASE.replace('"line-0"', f'"{"l" * 190}"'), "plants[0].lines[0].name: device id"),
    ]
    for text, expected in cases:
        found = problems(text)
        assert len(found) == 1 and found[0].startswith(expected), found
        assert "routing id" in found[0] or "file name" in found[0]
    assert "(and 1 more devices of this line)" in problems(cases[2][0])[0]


def test_an_ipc_path_longer_than_a_socket_path_is_refused():
    fits = f"ipc:///tmp/{'x' * 102}"  # 107 bytes of path
    assert parse_topology(BASE.replace('"tcp://127.0.0.1:7000"', f'"{fits}"')).cloud.address == fits
    found = problems(BASE.replace('"tcp://127.0.0.1:7000"', f'"{fits}y"'))
    assert found == (
        f"cloud.address: the path of '{fits}y' is 108 bytes; a socket path has at most 107 "
        "(use a shorter path)",
    )


def test_a_seed_outside_32_bits_is_refused_with_the_range():
    """JAX keys take 32 bits: seed 2**32 used to train exactly the run of seed 0."""
    assert (
        parse_topology(BASE.replace("seed = 0", f"seed = {2**32 - 1}")).federation.seed == 2**32 - 1
    )
    for seed in (2**32, 2**63, 2**64 + 5):
        found = problems(BASE.replace("seed = 0", f"seed = {seed}"))
        assert found == (f"federation.seed: must be in [0, 4294967295], got {seed}",)
    with pytest.raises(TopologyError, match=r"must be in \[0, 4294967295\]"):
        parse_topology(BASE).with_federation(seed=2**32)
