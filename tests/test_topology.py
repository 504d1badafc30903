"""Tests for hierfl.topology: presets, the model built from TOML, and every kind of bad input."""

import pickle

import pytest

from hierfl.topology import (
    DataSpec,
    Topology,
    TopologyError,
    load_topology,
    parse_topology,
    preset_names,
    preset_path,
)

MINIMAL = """
[federation]
name = "t"
task = "digits"
cloud_rounds = 3
learning_rate = 0.1

[cloud]
address = "tcp://127.0.0.1:5550"

[[plants]]
name = "plant-a"
address = "tcp://127.0.0.1:5560"

[[plants.lines]]
name = "line-1"
devices = 2
"""


def problems_of(text: str, **kwargs) -> tuple[str, ...]:
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, **kwargs)
    return caught.value.problems


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old  # guards the test's own fixture edits
    return text.replace(old, new)


# --- presets -------------------------------------------------------------------------------


def test_preset_names():
    assert preset_names() == ("bearing", "demo", "large")
    assert preset_path("demo").name == "demo.toml"


def test_demo_preset():
    topology = load_topology("demo")
    assert topology.num_devices == 24
    assert topology.plant_names == ("plant-a", "plant-b")
    assert [len(plant.lines) for plant in topology.plants] == [3, 2]
    assert topology.plant("plant-a").num_devices + topology.plant("plant-b").num_devices == 24
    assert topology.plant("plant-b").shift == 0.2
    assert topology.data == DataSpec(
        partition="dirichlet", alpha=0.5, sigma=1.0, samples_per_device=None
    )
    assert topology.test_fraction == 0.2
    plan = topology.federation
    assert (plan.task, plan.model, plan.algorithm) == ("digits", "mlp", "fedavg")
    assert (plan.cloud_rounds, plan.edge_rounds, plan.local_steps, plan.batch_size) == (
        20,
        2,
        10,
        32,
    )
    assert plan.learning_rate == 0.1
    device = topology.device("plant-a/line-1/dev-003")
    assert (device.name, device.plant, device.line, device.index) == (
        "dev-003",
        "plant-a",
        "line-1",
        2,
    )
    assert topology.cloud.address == "tcp://127.0.0.1:5550"
    assert [plant.address for plant in topology.plants] == [
        "tcp://127.0.0.1:5560",
        "tcp://127.0.0.1:5561",
    ]


def test_bearing_preset():
    topology = load_topology("bearing")
    plan = topology.federation
    assert (plan.task, plan.model, plan.cloud_rounds, plan.learning_rate) == (
        "bearing-fault",
        "cnn1d",
        30,
        0.1,
    )
    assert topology.data.partition == "iid"
    assert topology.data.samples_per_device == 48
    assert topology.plant("plant-b").shift == 0.3
    assert topology.num_devices == 24


def test_large_preset():
    topology = load_topology("large")
    assert topology.num_devices == 10 * 4 * 26 >= 1000
    assert topology.plant_names == tuple(f"plant-{i:02d}" for i in range(10))
    assert all(line.num_devices == 26 for plant in topology.plants for line in plant.lines)
    assert topology.devices[-1].id == "plant-09/line-4/dev-026"
    addresses = [topology.cloud.address] + [plant.address for plant in topology.plants]
    assert len(set(addresses)) == 11
    assert topology.plant("plant-03").address == "tcp://127.0.0.1:5603"
    assert topology.data.samples_per_device == 16


@pytest.mark.parametrize("name", ["demo", "bearing", "large"])
def test_preset_device_indices_are_contiguous_and_ids_unique(name):
    topology = load_topology(name)
    assert [device.index for device in topology.devices] == list(range(topology.num_devices))
    assert len({device.id for device in topology.devices}) == topology.num_devices
    for device in topology.devices:
        assert device.id == f"{device.plant}/{device.line}/{device.name}"
        assert topology.device(device.id) is device


def test_preset_file_loads_by_path(tmp_path):
    copy = tmp_path / "mine.toml"
    copy.write_text(preset_path("bearing").read_text(encoding="utf-8"))
    topology = load_topology(copy)
    assert topology.source == str(copy)
    assert topology.num_devices == 24


def test_existing_file_wins_over_preset_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text(MINIMAL)
    assert load_topology("demo").num_devices == 2


# --- the model built from TOML -------------------------------------------------------------


def test_minimal_topology_defaults():
    topology = parse_topology(MINIMAL)
    plan = topology.federation
    assert plan.model is None
    assert (plan.algorithm, plan.edge_rounds, plan.local_steps, plan.batch_size) == (
        "fedavg",
        1,
        1,
        32,
    )
    assert (plan.server_learning_rate, plan.seed) == (1.0, 0)
    assert topology.data == DataSpec()
    assert topology.test_fraction == 0.2
    assert topology.plant("plant-a").shift == 0.0
    assert topology.source == "<string>"
    assert [device.id for device in topology.devices] == [
        "plant-a/line-1/dev-001",
        "plant-a/line-1/dev-002",
    ]


def test_integer_learning_rate_becomes_float():
    topology = parse_topology(replace_once(MINIMAL, "learning_rate = 0.1", "learning_rate = 1"))
    assert topology.federation.learning_rate == 1.0
    assert isinstance(topology.federation.learning_rate, float)


def test_device_names_widen_past_999():
    topology = parse_topology(replace_once(MINIMAL, "devices = 2", "devices = 1000"))
    assert topology.devices[0].name == "dev-0001"
    assert topology.devices[-1].name == "dev-1000"


def test_explicit_device_names_and_federation_order():
    text = (
        MINIMAL
        + """
[[plants.lines]]
name = "line-2"
devices = ["press-1", "press-2", "press-3"]

[[plants]]
name = "plant-b"
address = "ipc:///tmp/plant-b"

[[plants.lines]]
name = "line-1"
devices = 1
"""
    )
    topology = parse_topology(text)
    assert [device.id for device in topology.devices] == [
        "plant-a/line-1/dev-001",
        "plant-a/line-1/dev-002",
        "plant-a/line-2/press-1",
        "plant-a/line-2/press-2",
        "plant-a/line-2/press-3",
        "plant-b/line-1/dev-001",
    ]
    assert [device.index for device in topology.devices] == list(range(6))
    assert topology.plant("plant-a").num_devices == 5
    assert [device.index for device in topology.plant("plant-b").devices] == [5]


def test_line_data_overrides_merge_with_defaults():
    text = replace_once(
        MINIMAL,
        "[cloud]",
        '[data]\npartition = "dirichlet"\nalpha = 0.3\nsamples_per_device = 40\n\n[cloud]',
    )
    text += """
[[plants.lines]]
name = "line-2"
devices = 2

[plants.lines.data]
partition = "quantity"
sigma = 2
"""
    line_1, line_2 = parse_topology(text).plant("plant-a").lines
    assert line_1.data == DataSpec(
        partition="dirichlet", alpha=0.3, sigma=1.0, samples_per_device=40
    )
    assert line_2.data == DataSpec(
        partition="quantity", alpha=0.3, sigma=2.0, samples_per_device=40
    )


def test_unknown_plant_and_device_raise_key_error():
    topology = parse_topology(MINIMAL)
    with pytest.raises(KeyError, match="no plant 'plant-z'.*plants: plant-a"):
        topology.plant("plant-z")
    with pytest.raises(KeyError, match="no device 'plant-a/line-1/dev-009'"):
        topology.device("plant-a/line-1/dev-009")


def test_topology_is_frozen():
    topology = parse_topology(MINIMAL)
    with pytest.raises(AttributeError):
        topology.federation.cloud_rounds = 5  # type: ignore[misc]
    assert isinstance(topology.plants, tuple)
    assert isinstance(topology.plants[0].lines[0].devices, tuple)


# --- bad input: one precise problem each ---------------------------------------------------

PLANT_B = """
[[plants]]
name = "plant-b"
address = "tcp://127.0.0.1:5561"

[[plants.lines]]
name = "line-1"
devices = 2
"""

BAD = [
    # (edit of MINIMAL: old, new), the one expected problem
    (
        ("cloud_rounds = 3", "cloud_rounds = '5'"),
        "federation.cloud_rounds: expected an integer, got str '5'",
    ),
    (
        ("cloud_rounds = 3", "cloud_rounds = true"),
        "federation.cloud_rounds: expected an integer, got bool True",
    ),
    (
        ("cloud_rounds = 3", "cloud_rounds = 2.0"),
        "federation.cloud_rounds: expected an integer, got float 2.0",
    ),
    (("cloud_rounds = 3", "cloud_rounds = 0"), "federation.cloud_rounds: must be >= 1, got 0"),
    (("cloud_rounds = 3\n", ""), "federation.cloud_rounds: missing required key"),
    (
        ("cloud_rounds = 3", "cloud_rounds = 3\nedge_rounds = 0"),
        "federation.edge_rounds: must be >= 1, got 0",
    ),
    (
        ("cloud_rounds = 3", "cloud_rounds = 3\nlocal_steps = -1"),
        "federation.local_steps: must be >= 1, got -1",
    ),
    (
        ("cloud_rounds = 3", "cloud_rounds = 3\nbatch_size = 0"),
        "federation.batch_size: must be >= 1, got 0",
    ),
    (
        ("cloud_rounds = 3", "cloud_rounds = 3\nseed = -1"),
        "federation.seed: must be in [0, 4294967295], got -1",
    ),
    (
        ("learning_rate = 0.1", "learning_rate = 0"),
        "federation.learning_rate: must be > 0, got 0.0",
    ),
    (
        ("learning_rate = 0.1", "learning_rate = true"),
        "federation.learning_rate: expected a number, got bool True",
    ),
    (
        ("learning_rate = 0.1", "learning_rate = nan"),
        "federation.learning_rate: must be finite, got nan",
    ),
    (
        ("learning_rate = 0.1", "learning_rate = 0.1\nserver_learning_rate = -1.0"),
        "federation.server_learning_rate: must be > 0, got -1.0",
    ),
    (('name = "t"', 'name = ""'), "federation.name: must not be empty"),
    (('task = "digits"', "task = 7"), "federation.task: expected a string, got int 7"),
    (
        ("cloud_rounds = 3", "cloud_rounds = 3\ncloud_round = 3"),
        "federation.cloud_round: unknown key (allowed: algorithm, batch_size, cloud_rounds, edge_rounds, "
        "learning_rate, local_steps, model, mu, name, seed, server_learning_rate, task); did you mean 'cloud_rounds'?",
    ),
    (
        ("[cloud]", "[data]\npartition = 'zipf'\n[cloud]"),
        "data.partition: unknown value 'zipf' (choose from: dirichlet, iid, quantity)",
    ),
    (("[cloud]", "[data]\nalpha = 0.0\n[cloud]"), "data.alpha: must be > 0, got 0.0"),
    (("[cloud]", "[data]\nsigma = -2\n[cloud]"), "data.sigma: must be > 0, got -2.0"),
    (
        ("[cloud]", "[data]\nsamples_per_device = 0\n[cloud]"),
        "data.samples_per_device: must be >= 1, got 0",
    ),
    (
        ("[cloud]", "[data]\ntest_fraction = 1\n[cloud]"),
        "data.test_fraction: must be in (0, 1), got 1.0",
    ),
    (
        ("[cloud]", "[data]\ntest_fraction = 0.0\n[cloud]"),
        "data.test_fraction: must be in (0, 1), got 0.0",
    ),
    (("[federation]", "data = 3\n[federation]"), "data: expected a table, got int 3"),
    (
        ("[cloud]", "[extra]\n[cloud]"),
        "extra: unknown key (allowed: aggregation, attack, buffered_aggregation, cloud, "
        "compression, data, federation, personalization, plants, privacy, runtime)",
    ),
    (('[cloud]\naddress = "tcp://127.0.0.1:5550"', ""), "cloud: missing required table [cloud]"),
    (('address = "tcp://127.0.0.1:5550"', ""), "cloud.address: missing required key"),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "tcp://127.0.0.1:0"'),
        "cloud.address: port 0 out of range 1..65535 in address 'tcp://127.0.0.1:0'",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "tcp://127.0.0.1:65536"'),
        "cloud.address: port 65536 out of range 1..65535 in address 'tcp://127.0.0.1:65536'",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "tcp://127.0.0.1"'),
        "cloud.address: malformed address 'tcp://127.0.0.1' (expected tcp://HOST:PORT)",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "tcp://localhost:http"'),
        "cloud.address: invalid port 'http' in address 'tcp://localhost:http' (expected a number in 1..65535)",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "tcp://300.0.0.1:5550"'),
        "cloud.address: invalid host '300.0.0.1' in address",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "tcp://my host:5550"'),
        "cloud.address: invalid host 'my host' in address",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "tcp://[::zz]:5550"'),
        "cloud.address: invalid host '[::zz]' in address",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "127.0.0.1:5550"'),
        "cloud.address: malformed address '127.0.0.1:5550' (expected tcp://HOST:PORT, ipc://PATH or inproc://NAME)",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "udp://127.0.0.1:5550"'),
        "cloud.address: unsupported transport 'udp' in address 'udp://127.0.0.1:5550'",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "ipc://"'),
        "cloud.address: empty path in address 'ipc://'",
    ),
    (
        ('address = "tcp://127.0.0.1:5550"', 'address = "inproc://"'),
        "cloud.address: empty name in address 'inproc://'",
    ),
    (
        ('address = "tcp://127.0.0.1:5560"', 'address = "tcp://127.0.0.1:5550"'),
        "plants[0].address: 'tcp://127.0.0.1:5550' already used by cloud.address",
    ),
    (
        ('name = "plant-a"', 'name = "plant a"'),
        "plants[0].name: invalid name 'plant a' (use letters, digits",
    ),
    (('name = "plant-a"', 'name = "a/b"'), "plants[0].name: invalid name 'a/b'"),
    (('name = "plant-a"', 'name = "-a"'), "plants[0].name: invalid name '-a'"),
    (
        ('name = "plant-a"', 'name = "plant-a"\nshift = 1.5'),
        "plants[0].shift: must be in [0, 1], got 1.5",
    ),
    (
        ('name = "plant-a"', 'name = "plant-a"\ncolour = "red"'),
        "plants[0].colour: unknown key (allowed: address, aggregation, bandwidth, classes, latency, "
        "lines, name, publish, seconds_per_step, shift, test_data)",
    ),
    (
        ('name = "line-1"', 'name = "line-1"\ncolour = "red"'),
        "plants[0].lines[0].colour: unknown key (allowed: data, devices, local_steps, name)",
    ),
    (('name = "line-1"\n', ""), "plants[0].lines[0].name: missing required key"),
    (("devices = 2", "devices = 0"), "plants[0].lines[0].devices: must be >= 1, got 0"),
    (
        ("devices = 2", "devices = true"),
        "plants[0].lines[0].devices: expected a device count or an array of device names, got bool True",
    ),
    (
        ("devices = 2", "devices = []"),
        "plants[0].lines[0].devices: must list at least one device name",
    ),
    (
        ("devices = 2", "devices = ['a', 3]"),
        "plants[0].lines[0].devices[1]: expected a string, got int 3",
    ),
    (
        ("devices = 2", "devices = ['a', 'b c']"),
        "plants[0].lines[0].devices[1]: invalid name 'b c'",
    ),
    (
        ("devices = 2", "devices = ['a', 'b', 'a']"),
        "plants[0].lines[0].devices[2]: duplicate device name 'a' (also plants[0].lines[0].devices[0])",
    ),
    (("devices = 2\n", ""), "plants[0].lines[0].devices: missing required key"),
    (
        ("devices = 2", "devices = 2\n[plants.lines.data]\ntest_fraction = 0.5"),
        "plants[0].lines[0].data.test_fraction: unknown key (allowed: alpha, partition, path, samples_per_device, sigma)",
    ),
    (
        ("devices = 2", "devices = 2\n[plants.lines.data]\npartition = 'x'"),
        "plants[0].lines[0].data.partition: unknown value 'x' (choose from: dirichlet, iid, quantity)",
    ),
    (
        ("devices = 2", "devices = 2\n[plants.lines.data]\nalpha = -1"),
        "plants[0].lines[0].data.alpha: must be > 0, got -1.0",
    ),
]


@pytest.mark.parametrize(
    ("edit", "expected"),
    BAD,
    ids=[expected.split(":")[0] + f"#{i}" for i, (_, expected) in enumerate(BAD)],
)
def test_bad_input_reports_one_precise_problem(edit, expected):
    problems = problems_of(replace_once(MINIMAL, *edit))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


BAD_WHOLE = [
    (
        MINIMAL + PLANT_B.replace("plant-b", "plant-a"),
        "plants[1].name: duplicate plant name 'plant-a' (also plants[0].name)",
    ),
    (
        MINIMAL + PLANT_B.replace("5561", "5560"),
        "plants[1].address: 'tcp://127.0.0.1:5560' already used by plants[0].address",
    ),
    (
        MINIMAL + '\n[[plants.lines]]\nname = "line-1"\ndevices = 1\n',
        "plants[0].lines[1].name: duplicate line name 'line-1' (also plants[0].lines[0].name)",
    ),
    (
        MINIMAL + '\n[[plants]]\nname = "plant-b"\naddress = "tcp://127.0.0.1:5561"\n',
        "plants[1].lines: missing required key (declare at least one line with [[plants.lines]])",
    ),
    (
        MINIMAL + '\n[[plants]]\nname = "plant-b"\naddress = "tcp://127.0.0.1:5561"\nlines = []\n',
        "plants[1].lines: must declare at least one line",
    ),
    (
        MINIMAL.split("[[plants]]")[0],
        "plants: missing required key (declare at least one plant with [[plants]])",
    ),
    ("plants = []\n" + MINIMAL.split("[[plants]]")[0], "plants: must declare at least one plant"),
    ("plants = [1]\n" + MINIMAL.split("[[plants]]")[0], "plants[0]: expected a table, got int 1"),
    (
        "plants = 'x'\n" + MINIMAL.split("[[plants]]")[0],
        "plants: expected an array of tables ([[plants]]), got str 'x'",
    ),
    (
        MINIMAL.split("[cloud]")[0].replace("[federation]", "federation = 1\n[x]"),
        "federation: expected a table, got int 1",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), BAD_WHOLE, ids=[expected.split(":")[0] for _, expected in BAD_WHOLE]
)
def test_bad_structure_reports_precise_problem(text, expected):
    assert any(problem.startswith(expected) for problem in problems_of(text)), problems_of(text)


@pytest.mark.parametrize(
    "address",
    [
        "tcp://127.0.0.1:5550",
        "tcp://localhost:1",
        "tcp://edge-3.plant-a.example.com:65535",
        "tcp://[::1]:5550",
        "ipc:///tmp/hierfl/cloud",
        "inproc://cloud",
    ],
)
def test_good_addresses_are_accepted(address):
    text = replace_once(MINIMAL, 'address = "tcp://127.0.0.1:5550"', f'address = "{address}"')
    assert parse_topology(text).cloud.address == address


@pytest.mark.parametrize("host", ["*", "0.0.0.0", "[::]"])
def test_a_wildcard_host_is_refused_where_others_dial_it(host):
    text = replace_once(
        MINIMAL, 'address = "tcp://127.0.0.1:5550"', f'address = "tcp://{host}:5550"'
    )
    text = replace_once(text, 'address = "tcp://127.0.0.1:5560"', f'address = "tcp://{host}:5560"')
    cloud, plant = problems_of(text)
    assert cloud.startswith(
        f"cloud.address: 'tcp://{host}:5550' is a wildcard host, which nobody can dial; "
        "give the address the edges dial (e.g. tcp://cloud.example.com:5550) and bind the "
        f"wildcard with `hierfl cloud --bind tcp://{host}:5550`"
    ), cloud
    assert plant.startswith(
        f"plants[0].address: 'tcp://{host}:5560' is a wildcard host, which nobody can dial; "
        "give the address the devices dial (e.g. tcp://plant-a.example.com:5560) and bind the "
        f"wildcard with `hierfl edge --plant plant-a --bind tcp://{host}:5560`"
    ), plant


def test_the_total_number_of_devices_is_capped_before_devices_are_named(monkeypatch):
    from hierfl.topology import validate

    named = []
    monkeypatch.setattr(validate, "device_names", lambda count: named.append(count) or ())
    lines = "".join(
        f'\n[[plants.lines]]\nname = "line-{i}"\ndevices = 1000000\n' for i in range(2, 12)
    )
    assert problems_of(MINIMAL + lines) == (
        f"plants: 10000002 devices in all, more than the limit of {validate.MAX_DEVICES}; "
        "a topology declares at most that many devices (is a line's `devices` mistyped?)",
    )
    assert named == []  # refused before any device list was built


def test_every_problem_is_reported_together():
    text = """
[federation]
name = "t"
task = "digits"
cloud_rounds = 0
learning_rate = -1

[cloud]
address = "tcp://127.0.0.1:5560"

[[plants]]
name = "plant-a"
address = "tcp://127.0.0.1:5560"

[[plants.lines]]
name = "line-1"
devices = 0

[[plants]]
name = "plant-b"
address = "tcp://127.0.0.1:99999"
lines = []
"""
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, "plants.toml")
    error = caught.value
    assert error.source == "plants.toml"
    assert set(error.problems) == {
        "federation.cloud_rounds: must be >= 1, got 0",
        "federation.learning_rate: must be > 0, got -1.0",
        "plants[0].address: 'tcp://127.0.0.1:5560' already used by cloud.address",
        "plants[0].lines[0].devices: must be >= 1, got 0",
        "plants[1].address: port 99999 out of range 1..65535 in address 'tcp://127.0.0.1:99999'",
        "plants[1].lines: must declare at least one line",
    }
    lines = str(error).splitlines()
    assert lines[0] == "invalid topology plants.toml: 6 problems"
    assert lines[1:] == [f"  - {problem}" for problem in error.problems]


def test_missing_federation_table_is_one_problem():
    text = MINIMAL.replace("[federation]", "[federatoin]")
    problems = problems_of(text)
    assert problems[0].startswith(
        "federatoin: unknown key (allowed: aggregation, attack, buffered_aggregation, cloud, "
        "compression, data, federation, personalization, plants, privacy, runtime); did you mean 'federation'?"
    )
    # the misplaced keys belong to the unknown table: only the missing table itself is reported
    assert problems[1:] == ("federation: missing required table [federation]",)


def test_error_is_a_value_error_and_pickles():
    error = TopologyError(["a: b"], "x.toml")
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.problems, clone.source, str(clone)) == (("a: b",), "x.toml", str(error))
    assert str(error) == "invalid topology x.toml: 1 problem\n  - a: b"


# --- TOML syntax, files, presets -----------------------------------------------------------


def test_toml_syntax_error_names_source_line_and_column():
    with pytest.raises(TopologyError) as caught:
        parse_topology('[federation]\nname = "t\n', "broken.toml")
    error = caught.value
    assert error.source == "broken.toml"
    (problem,) = error.problems
    assert problem.startswith("TOML syntax error: ")
    assert "line 2" in problem
    assert str(error).startswith("invalid topology broken.toml: 1 problem")


def test_syntax_error_in_a_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[[plants]\n")
    with pytest.raises(
        TopologyError,
        match=r"invalid topology .*bad\.toml: 1 problem\n  - TOML syntax error: .*line 1",
    ):
        load_topology(path)


def test_unknown_preset_or_missing_file():
    with pytest.raises(TopologyError) as caught:
        load_topology("demoo")
    assert caught.value.problems == (
        "no such file, and no preset of that name (presets: bearing, demo, large); did you mean 'demo'?",
    )
    with pytest.raises(TopologyError, match="no such file"):
        load_topology("/nonexistent/plants.toml")
    with pytest.raises(TopologyError, match="unknown preset"):
        preset_path("nope")


def test_directory_and_non_utf8_file(tmp_path):
    with pytest.raises(TopologyError, match="is a directory"):
        load_topology(tmp_path)
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"name = '\xe9'\n")
    with pytest.raises(TopologyError, match="not UTF-8 text"):
        load_topology(path)


# --- choices and with_federation -----------------------------------------------------------

CHOICES = {
    "federation.task": {"digits", "bearing-fault"},
    "federation.algorithm": {"fedavg", "fedsgd"},
}


def test_choices_accept_known_values():
    assert parse_topology(MINIMAL, choices=CHOICES).federation.task == "digits"
    assert load_topology("demo", choices=CHOICES).federation.task == "digits"


def test_choices_reject_unknown_values():
    text = replace_once(MINIMAL, 'task = "digits"', 'task = "foo"\nalgorithm = "fedprox"')
    assert problems_of(text, choices=CHOICES) == (
        "federation.task: unknown value 'foo' (choose from: bearing-fault, digits)",
        "federation.algorithm: unknown value 'fedprox' (choose from: fedavg, fedsgd)",
    )


def test_choices_skip_an_absent_optional_model():
    assert parse_topology(MINIMAL, choices={"federation.model": {"mlp"}}).federation.model is None
    text = replace_once(MINIMAL, 'task = "digits"', 'task = "digits"\nmodel = "cnn"')
    assert problems_of(text, choices={"federation.model": {"mlp"}}) == (
        "federation.model: unknown value 'cnn' (choose from: mlp)",
    )


def test_choices_must_name_a_string_federation_field():
    with pytest.raises(ValueError, match="unsupported field 'federation.tasks'"):
        parse_topology(MINIMAL, choices={"federation.tasks": {"digits"}})
    with pytest.raises(ValueError, match="unsupported field 'federation.cloud_rounds'"):
        parse_topology(MINIMAL, choices={"federation.cloud_rounds": {"3"}})
    with pytest.raises(TypeError, match="got the string 'digits'"):
        parse_topology(MINIMAL, choices={"federation.task": "digits"})


def test_with_federation_replaces_and_keeps_the_rest():
    topology = load_topology("demo")
    changed = topology.with_federation(cloud_rounds=3, learning_rate=1, model=None)
    assert changed.federation.cloud_rounds == 3
    assert changed.federation.learning_rate == 1.0
    assert changed.federation.model is None
    assert changed.federation.edge_rounds == topology.federation.edge_rounds
    assert changed.plants == topology.plants
    assert changed.devices == topology.devices
    assert topology.federation.cloud_rounds == 20  # the original is untouched
    assert isinstance(changed, Topology)


def test_with_federation_rejects_bad_values_together():
    topology = load_topology("demo")
    with pytest.raises(TopologyError) as caught:
        topology.with_federation(cloud_rounds=0, batch_size="8", learning_rate=True, rounds=3)
    error = caught.value
    assert error.source == "demo"
    assert error.problems[:3] == (
        "federation.cloud_rounds: must be >= 1, got 0",
        "federation.batch_size: expected an integer, got str '8'",
        "federation.learning_rate: expected a number, got bool True",
    )
    assert error.problems[3].startswith("federation.rounds: unknown key (allowed: algorithm,")


def test_with_federation_checks_choices():
    topology = load_topology("demo")
    with pytest.raises(
        TopologyError,
        match=r"federation.algorithm: unknown value 'fedprox' \(choose from: fedavg, fedsgd\)",
    ):
        topology.with_federation(algorithm="fedprox", choices=CHOICES)
    assert (
        topology.with_federation(algorithm="fedsgd", choices=CHOICES).federation.algorithm
        == "fedsgd"
    )
