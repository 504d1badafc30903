"""Checking a parsed TOML document against the topology format and building the `Topology`.

Every check runs and every problem is collected, each naming its exact place
(`plants[1].lines[0].devices: must be >= 1, got 0`); then either one `TopologyError`
lists them all or a complete `Topology` is returned. Nothing is half-built.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from .schema import (
    ALGORITHM_PARAMETERS,
    ATTACK_FIELDS,
    BUFFERED_FIELDS,
    CODEC_PARAMETERS,
    CURVE_KEY_PATTERN,
    DATA_FIELDS,
    DEVICE_GROUPINGS,
    DEVICE_PATH_KEYS,
    FEDERATION_FIELDS,
    LINE_DATA_KEYS,
    LINK_FIELDS,
    LINKS,
    NAME,
    NAME_PATTERN,
    NAME_RULE,
    OPTIMIZER_FIELDS,
    OPTIMIZER_PARAMETERS,
    PERSONALIZATION_FIELDS,
    PLANT_CLASS,
    PLANT_SHIFT,
    PLANT_SPEED_KEYS,
    PRIVACY_FIELDS,
    REQUIRED,
    RULE_FIELDS,
    RULE_PARAMETERS,
    RUNTIME_FIELDS,
    TEST_PATH_KEYS,
    TIERS,
    Aggregation,
    Attack,
    BufferedAggregation,
    Cloud,
    Compression,
    DataSpec,
    Device,
    Federation,
    Field,
    Line,
    LinkCompression,
    Personalization,
    Plant,
    Privacy,
    Runtime,
    ServerOptimizer,
    TierRule,
    Topology,
    TopologyError,
    check_choices,
    combination_problems,
    describe,
    fill_template,
    template_problem,
    unknown_key,
)

TOP_KEYS = (
    "federation",
    "data",
    "compression",
    "aggregation",
    "attack",
    "privacy",
    "personalization",
    "buffered_aggregation",
    "cloud",
    "plants",
    "runtime",
)
ADDRESS = Field(str)
CLOUD_FIELDS: Mapping[str, Field] = {"address": ADDRESS}
PLANT_FIELDS: Mapping[str, Field] = {
    "name": NAME,
    "address": ADDRESS,
    "shift": PLANT_SHIFT,
    "test_data": Field(str, default=None),
    **{key: Field(float, default=None, low=0, low_open=True) for key in PLANT_SPEED_KEYS},
    "publish": Field(str, default=None),
}
LINE_FIELDS: Mapping[str, Field] = {"name": NAME, "local_steps": Field(int, default=None, low=1)}
MAX_DEVICES_PER_LINE = 1_000_000
"""Guards against a typo such as `devices = 40000000` allocating millions of devices."""
MAX_DEVICES = 1_000_000
"""The most devices a whole topology declares: checked on the counts, before any device is named."""
MAX_NAME_BYTES = 200
"""The longest federation name and device id (`plant/line/device`), in UTF-8 bytes. A device id
is the device's ZeroMQ routing id (libzmq takes at most 255 bytes; a plant's name is its edge's)
and part of its log and state file names; the federation name names the run directory
`<name>-<time>`; a file name has at most 255 bytes."""
MAX_IPC_PATH_BYTES = 107
"""The longest path of an `ipc://` address: Linux's `sun_path` holds 108 bytes with the final NUL."""
WILDCARD_HOSTS = ("*", "0.0.0.0", "[::]")
"""Hosts a server binds to listen on every interface; nobody can dial them."""

ADDRESS_FORMS = "tcp://HOST:PORT, ipc://PATH or inproc://NAME"
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
_IPV4_LIKE = re.compile(r"[0-9.]+")
_PORT = re.compile(r"[0-9]{1,5}")


class _LineDraft(NamedTuple):
    name: str | None
    devices: int | tuple[str, ...]
    """A count from `devices = N` (named when assembled) or the listed names; () if invalid."""
    data: DataSpec | None
    local_steps: int | None = None
    paths: Mapping[str, str] = {}
    """The data paths of the devices listed as tables with their own `data`, by name."""


class _PlantDraft(NamedTuple):
    name: str | None
    address: str | None
    shift: float | None
    lines: tuple[_LineDraft, ...]
    aggregation: TierRule | None = None
    classes: tuple[str, ...] | None = None
    test_data: str | None = None
    speeds: Mapping[str, float | None] = {}
    """`PLANT_SPEED_KEYS` -> value (None where not declared)."""
    publish: str | None = None


def build_topology(
    document: Mapping[str, Any], source: str, choices: Mapping[str, Collection[str]] | None = None
) -> Topology:
    """The `Topology` a parsed TOML document declares; TopologyError listing every problem.

    `choices` maps `federation.<field>` to the values allowed for it (the caller's
    registries of tasks, models, algorithms).
    """
    choices = check_choices(choices)
    problems: list[str] = [
        unknown_key(key, key, TOP_KEYS) for key in document if key not in TOP_KEYS
    ]
    federation = _read_table_fields(
        document, "federation", FEDERATION_FIELDS, problems, choices=choices
    )
    _apply_algorithm_parameters(federation, document.get("federation"), problems)
    data_values = _read_table_fields(document, "data", DATA_FIELDS, problems, required=False)
    data = _data_spec(data_values)
    problems += _template_problems("data.path", data_values["path"], DEVICE_PATH_KEYS)
    problems += _template_problems("data.test_data", data_values["test_data"], TEST_PATH_KEYS)
    compression = _read_compression(document.get("compression", {}), problems)
    aggregation = _read_aggregation(document.get("aggregation", {}), problems)
    attack = Attack(
        **_read_table_fields(document, "attack", ATTACK_FIELDS, problems, required=False)
    )
    privacy = Privacy(
        **_read_table_fields(document, "privacy", PRIVACY_FIELDS, problems, required=False)
    )
    personalization = _read_personalization(document.get("personalization", {}), problems)
    buffered = None
    if "buffered_aggregation" in document:
        values = _read_table_fields(document, "buffered_aggregation", BUFFERED_FIELDS, problems)
        buffered = BufferedAggregation(**values) if values.get("buffer_size") else None
    cloud = _read_table_fields(document, "cloud", CLOUD_FIELDS, problems)
    cloud_address = _checked_address(
        cloud.get("address"), "cloud.address", problems, dialled_by=("edges", "cloud", None)
    )
    drafts = _read_plants(document.get("plants", REQUIRED), data, problems)
    problems += _device_total_problems(drafts)
    problems += _name_length_problems(federation.get("name"), drafts)
    runtime = _read_runtime(document.get("runtime", {}), [draft.name for draft in drafts], problems)
    problems += _address_clashes(
        [("cloud.address", cloud_address)]
        + [(f"plants[{i}].address", draft.address) for i, draft in enumerate(drafts)]
        + [(f"plants[{i}].publish", draft.publish) for i, draft in enumerate(drafts)]
    )
    if problems:
        raise TopologyError(problems, source)
    topology = Topology(
        federation=Federation(**federation),
        cloud=Cloud(address=cloud_address),
        plants=assemble_plants(drafts, data_values["test_data"]),
        data=data,
        test_fraction=data_values["test_fraction"],
        on_bad_rows=data_values["on_bad_rows"],
        compression=compression,
        aggregation=aggregation,
        attack=attack,
        privacy=privacy,
        personalization=personalization,
        buffered=buffered,
        source=source,
        runtime=runtime,
    )
    problems = combination_problems(topology)
    if problems:
        raise TopologyError(problems, source)
    return topology


def device_names(count: int) -> tuple[str, ...]:
    """`dev-001`, `dev-002`, ...: names for `count` devices, zero-padded to at least 3 digits."""
    return tuple(device_name(number, count) for number in range(1, count + 1))


def device_name(number: int, count: int) -> str:
    """The name of device `number` (from 1) of a line declared with `devices = count`."""
    return f"dev-{number:0{max(3, len(str(count)))}d}"


def assemble_plants(
    drafts: Iterable[_PlantDraft], test_data: str | None = None
) -> tuple[Plant, ...]:
    """Plants from checked drafts, numbering devices 0..N-1 in federation order; a plant
    without its own `test_data` gets the `[data]` template `test_data` filled with its name."""
    plants = []
    index = 0
    for draft in drafts:
        lines = []
        for line in draft.lines:
            devices = []
            names = device_names(line.devices) if isinstance(line.devices, int) else line.devices
            for name in names:
                devices.append(
                    Device(
                        f"{draft.name}/{line.name}/{name}",
                        name,
                        draft.name,
                        line.name,
                        index,
                        data=line.paths.get(name),
                    )
                )
                index += 1
            lines.append(Line(line.name, tuple(devices), line.data, line.local_steps))
        plants.append(
            Plant(
                draft.name,
                draft.address,
                tuple(lines),
                draft.shift,
                aggregation=draft.aggregation,
                classes=draft.classes,
                test_data=_plant_test_data(draft, test_data),
                **draft.speeds,
                publish=draft.publish,
            )
        )
    return tuple(plants)


def address_problem(address: str) -> str | None:
    """Why `address` is not an endpoint we accept, or None: `tcp://HOST:PORT` (HOST a hostname,
    IPv4, `*` or `[IPv6]`; PORT 1..65535), `ipc://PATH` or `inproc://NAME`."""
    scheme, separator, rest = address.partition("://")
    if not separator:
        return f"malformed address {address!r} (expected {ADDRESS_FORMS})"
    if scheme == "tcp":
        return _tcp_problem(address, rest)
    if scheme in ("ipc", "inproc") and not rest:
        return f"empty {'path' if scheme == 'ipc' else 'name'} in address {address!r}"
    if scheme == "ipc" and len(rest.encode()) > MAX_IPC_PATH_BYTES:
        return (
            f"the path of {address!r} is {len(rest.encode())} bytes; a socket path has at most "
            f"{MAX_IPC_PATH_BYTES} (use a shorter path)"
        )
    if scheme in ("ipc", "inproc"):
        return None
    return f"unsupported transport {scheme!r} in address {address!r} (expected {ADDRESS_FORMS})"


def _tcp_problem(address: str, rest: str) -> str | None:
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        return f"malformed address {address!r} (expected tcp://HOST:PORT)"
    if not _PORT.fullmatch(port):
        return f"invalid port {port!r} in address {address!r} (expected a number in 1..65535)"
    if not 1 <= int(port) <= 65535:
        return f"port {int(port)} out of range 1..65535 in address {address!r}"
    if not _is_host(host):
        return f"invalid host {host!r} in address {address!r} (expected a hostname, an IPv4 address, '*' or [IPv6])"
    return None


def _is_host(host: str) -> bool:
    if host == "*":
        return True
    if host.startswith("[") and host.endswith("]"):
        return _parses(ipaddress.IPv6Address, host[1:-1])
    if _IPV4_LIKE.fullmatch(host):
        return _parses(ipaddress.IPv4Address, host)
    return bool(_HOSTNAME.fullmatch(host))


def _parses(parse: type, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def _read_table_fields(
    document: Mapping[str, Any],
    key: str,
    fields: Mapping[str, Field],
    problems: list[str],
    *,
    required: bool = True,
    choices: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    """The fields of the top-level table `document[key]`, read with `_read_fields`.

    A missing (if `required`) or mistyped table is one problem; its fields then read as
    their defaults, or None where required.
    """
    table = document.get(key, REQUIRED)
    if table is REQUIRED and not required:
        table = {}
    elif table is REQUIRED:
        problems.append(f"{key}: missing required table [{key}]")
        table = None
    elif not isinstance(table, dict):
        problems.append(f"{key}: expected a table, got {describe(table)}")
        table = None
    if table is None:
        return {
            name: None if field.default is REQUIRED else field.default
            for name, field in fields.items()
        }
    return _read_fields(table, key, fields, problems, choices=choices)


def _read_fields(
    table: Mapping[str, Any],
    path: str,
    fields: Mapping[str, Field],
    problems: list[str],
    *,
    structural: Collection[str] = (),
    choices: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    """Every scalar field of `table` checked against its `Field`: values (None where invalid).

    Appends a problem for each unknown key (keys in `structural` are read by the caller),
    missing required key and bad value.
    """
    allowed = [*fields, *structural]
    problems += [unknown_key(f"{path}.{key}", key, allowed) for key in table if key not in allowed]
    values: dict[str, Any] = {}
    for key, field in fields.items():
        key_path = f"{path}.{key}"
        if key not in table:
            if field.default is REQUIRED:
                problems.append(f"{key_path}: missing required key")
            values[key] = None if field.default is REQUIRED else field.default
            continue
        values[key], reason = field.check(table[key], (choices or {}).get(key_path))
        if reason is not None:
            problems.append(f"{key_path}: {reason}")
    return values


def _read_compression(table: Any, problems: list[str]) -> Compression:
    """The `[compression]` table: one optional `[compression.<link>]` table per link of `LINKS`."""
    if not isinstance(table, dict):
        problems.append(f"compression: expected a table, got {describe(table)}")
        return Compression()
    problems += [unknown_key(f"compression.{key}", key, LINKS) for key in table if key not in LINKS]
    links = {}
    for link in LINKS:
        path = f"compression.{link}"
        link_table = table.get(link, {})
        if not isinstance(link_table, dict):
            problems.append(f"{path}: expected a table, got {describe(link_table)}")
            continue
        values = _read_fields(link_table, path, LINK_FIELDS, problems)
        _reject_unused(path, link_table, "codec", values["codec"], CODEC_PARAMETERS, problems)
        if None not in values.values():
            links[link] = LinkCompression(**values)
    return Compression(**links)


def _apply_algorithm_parameters(
    federation: dict[str, Any], table: Any, problems: list[str]
) -> None:
    """Fills the defaults of the chosen algorithm's own fields (e.g. fedprox's `mu`).

    A field set for an algorithm that does not take it is reported by
    `combination_problems` once the topology is assembled.
    """
    for key, default in ALGORITHM_PARAMETERS.get(federation.get("algorithm"), {}).items():
        if federation.get(key) is None and not (isinstance(table, dict) and key in table):
            federation[key] = default


def _read_aggregation(table: Any, problems: list[str]) -> Aggregation:
    """The `[aggregation]` table: an optional `[aggregation.<tier>]` table per tier of `TIERS`."""
    if not isinstance(table, dict):
        problems.append(f"aggregation: expected a table, got {describe(table)}")
        return Aggregation()
    problems += [unknown_key(f"aggregation.{key}", key, TIERS) for key in table if key not in TIERS]
    edge = _read_rule(table.get("edge", {}), "aggregation.edge", problems)
    cloud_table = table.get("cloud", {})
    cloud = _read_rule(
        cloud_table, "aggregation.cloud", problems, structural=tuple(OPTIMIZER_FIELDS)
    )
    optimizer = ServerOptimizer()
    if isinstance(cloud_table, dict):
        values = _read_fields(
            cloud_table,
            "aggregation.cloud",
            OPTIMIZER_FIELDS,
            problems,
            structural=tuple(RULE_FIELDS),
        )
        _reject_unused(
            "aggregation.cloud",
            cloud_table,
            "optimizer",
            values["optimizer"],
            OPTIMIZER_PARAMETERS,
            problems,
        )
        if None not in values.values():
            optimizer = ServerOptimizer(**values)
    return Aggregation(edge or TierRule(), cloud or TierRule(), optimizer)


def _read_rule(
    table: Any, path: str, problems: list[str], structural: tuple[str, ...] = ()
) -> TierRule | None:
    """One tier's rule (`RULE_FIELDS`), or None if the table is invalid (after recording why)."""
    if not isinstance(table, dict):
        problems.append(f"{path}: expected a table, got {describe(table)}")
        return None
    values = _read_fields(table, path, RULE_FIELDS, problems, structural=structural)
    _reject_unused(
        path, table, "rule", values["rule"], RULE_PARAMETERS, problems, always=("clip_norm",)
    )
    optional = ("select", "clip_norm")
    if any(values[key] is None for key in RULE_FIELDS if key not in optional):
        return None
    return TierRule(**values)


def _reject_unused(
    path: str,
    table: Mapping[str, Any],
    selector: str,
    choice: str | None,
    parameters: Mapping[str, tuple[str, ...]],
    problems: list[str],
    always: tuple[str, ...] = (),
) -> None:
    """A problem for each parameter in `table` that the chosen `selector` value does not take."""
    if choice is None:
        return
    takes = (*parameters.get(choice, ()), *always)
    for key in {key for keys in parameters.values() for key in keys}:
        if key in table and key not in takes:
            users = [name for name, keys in parameters.items() if key in keys]
            problems.append(
                f"{path}.{key}: {selector} {choice!r} takes no {key} (only {', '.join(users)} does)"
            )


RUNTIME_KEY_TABLES = ("cloud", "edges", "devices")


def _read_runtime(table: Any, plant_names: list[str | None], problems: list[str]) -> Runtime:
    """The `[runtime]` table (all optional) and its `[runtime.keys]` CurveZMQ public keys."""
    if not isinstance(table, dict):
        problems.append(f"runtime: expected a table, got {describe(table)}")
        return Runtime()
    found = len(problems)
    values = _read_fields(
        table, "runtime", RUNTIME_FIELDS, problems, structural=("keys", "devices_per_process")
    )
    interval, timeout = values["heartbeat_interval"], values["heartbeat_timeout"]
    if interval is not None and timeout is not None and timeout <= interval:
        problems.append(
            f"runtime.heartbeat_timeout: must be greater than heartbeat_interval ({interval}), got {timeout}"
        )
    grouping = table.get("devices_per_process", Runtime.devices_per_process)
    if not _is_device_grouping(grouping):
        choices = ", ".join(f'"{name}"' for name in DEVICE_GROUPINGS)
        problems.append(
            f"runtime.devices_per_process: expected {choices} or an integer >= 1, got {describe(grouping)}"
        )
    keys = _read_runtime_keys(table.get("keys", {}), plant_names, problems)
    if len(problems) > found:  # the file is refused; any Runtime will do
        return Runtime()
    return Runtime(**values, **keys, devices_per_process=grouping)


def _is_device_grouping(value: object) -> bool:
    """A named grouping of `DEVICE_GROUPINGS` or a positive integer (not a bool)."""
    if isinstance(value, str):
        return value in DEVICE_GROUPINGS
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _read_runtime_keys(
    table: Any, plant_names: list[str | None], problems: list[str]
) -> dict[str, Any]:
    """`[runtime.keys]`: `cloud` (one key), `edges` (plant -> key, every plant), `devices` (a
    list of keys any device may use, or a table of device id -> that device's own key)."""
    path = "runtime.keys"
    if not isinstance(table, dict):
        problems.append(f"{path}: expected a table, got {describe(table)}")
        return {}
    if not table:
        return {}
    problems += [
        unknown_key(f"{path}.{key}", key, RUNTIME_KEY_TABLES)
        for key in table
        if key not in RUNTIME_KEY_TABLES
    ]
    before = len(problems)
    cloud = table.get("cloud")
    if cloud is None:
        problems.append(
            f"{path}.cloud: missing required key (the cloud's public key; every secure link needs it)"
        )
    else:
        _check_curve_key(cloud, f"{path}.cloud", problems)
    edges = table.get("edges", {})
    if not isinstance(edges, dict):
        problems.append(
            f"{path}.edges: expected a table of plant name -> public key, got {describe(edges)}"
        )
        edges = {}
    for name in plant_names:
        if name is not None and name not in edges:
            problems.append(f"{path}.edges: missing the public key of plant {name!r}")
    for name, key in edges.items():
        if name not in plant_names:
            problems.append(f"{path}.edges.{name}: no plant of that name")
        _check_curve_key(key, f"{path}.edges.{name}", problems)
    devices = table.get("devices", [])
    bound = dict(devices) if isinstance(devices, dict) else {}
    if isinstance(devices, dict):
        for device_id, key in bound.items():
            if len(device_id.split("/")) != 3:
                problems.append(f"{path}.devices.{device_id}: not a device id (plant/line/device)")
            _check_curve_key(key, f'{path}.devices."{device_id}"', problems)
        devices = list(bound.values())
    if not isinstance(devices, list) or not devices:
        problems.append(
            f"{path}.devices: expected a non-empty array of device public keys, or a table of "
            f"device id -> its public key, got {describe(devices)}"
        )
        devices = []
    if not bound:
        for i, key in enumerate(devices):
            _check_curve_key(key, f"{path}.devices[{i}]", problems)
    if len(problems) > before:
        return {}
    return {
        "cloud_key": cloud,
        "edge_keys": dict(edges),
        "device_keys": tuple(dict.fromkeys(devices)),
        "device_key_of": bound,
    }


def _check_curve_key(key: Any, path: str, problems: list[str]) -> None:
    if not isinstance(key, str) or not CURVE_KEY_PATTERN.fullmatch(key):
        problems.append(
            f"{path}: expected a 40-character Z85 public key (from `hierfl keys generate`), got {describe(key)}"
        )


def _data_spec(values: Mapping[str, Any]) -> DataSpec:
    return DataSpec(**{key: values[key] for key in LINE_DATA_KEYS})


def _checked_address(
    address: str | None,
    path: str,
    problems: list[str],
    *,
    dialled_by: tuple[str, str, str | None],
) -> str | None:
    """`address` if it is well-formed and dialable, else None (after recording why).

    `dialled_by` is (who dials it, the `hierfl` command that binds it, its plant or None),
    for the message that explains `--bind`. A topology's addresses are the ones others
    dial, so a wildcard host (`tcp://*:5560`) is refused: it is what a server binds.
    """
    if address is None:
        return None
    reason = address_problem(address) or _wildcard_problem(address, *dialled_by)
    if reason is not None:
        problems.append(f"{path}: {reason}")
        return None
    return address


def _wildcard_problem(address: str, dialers: str, command: str, plant: str | None) -> str | None:
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme != "tcp" or host not in WILDCARD_HOSTS:
        return None
    example = f"{plant or 'cloud'}.example.com"
    binds = f"hierfl {command}" + (f" --plant {plant}" if plant else "")
    return (
        f"{address!r} is a wildcard host, which nobody can dial; give the address the {dialers} "
        f"dial (e.g. tcp://{example}:{port}) and bind the wildcard with `{binds} --bind {address}`"
    )


def _device_total_problems(drafts: Iterable[_PlantDraft]) -> list[str]:
    """A problem if the plants declare more than `MAX_DEVICES` devices in all (counted, not named)."""
    total = sum(
        line.devices if isinstance(line.devices, int) else len(line.devices)
        for draft in drafts
        for line in draft.lines
    )
    if total <= MAX_DEVICES:
        return []
    return [
        f"plants: {total} devices in all, more than the limit of {MAX_DEVICES}; "
        "a topology declares at most that many devices (is a line's `devices` mistyped?)"
    ]


def _name_length_problems(federation_name: Any, drafts: Iterable[_PlantDraft]) -> list[str]:
    """A problem for the federation name and each line whose device ids exceed MAX_NAME_BYTES.

    A too-long plant name is named itself; otherwise the line's first device whose id
    `plant/line/device` is too long (its line's name if the devices are counted), with how
    many more of that line are.
    """
    problems = []
    if isinstance(federation_name, str) and _bytes(federation_name) > MAX_NAME_BYTES:
        problems.append(
            f"federation.name: {_bytes(federation_name)} bytes, more than {MAX_NAME_BYTES}; "
            "it names the run directory, and a file name has at most 255 bytes"
        )
    routing = "a device's ZeroMQ routing id and log file name"
    for i, plant in enumerate(drafts):
        if plant.name is not None and _bytes(plant.name) > MAX_NAME_BYTES:
            problems.append(
                f"plants[{i}].name: {_bytes(plant.name)} bytes, more than {MAX_NAME_BYTES}; "
                f"it begins {routing}s (`plant/line/device`)"
            )
            continue
        for j, line in enumerate(plant.lines if plant.name is not None else ()):
            if line.name is None:
                continue
            prefix = f"{plant.name}/{line.name}/"
            if isinstance(line.devices, int):  # dev-001..: all as long as the last
                count = line.devices
                too_long = _bytes(prefix + device_name(count, count)) > MAX_NAME_BYTES
                long = range(count) if too_long else range(0)
                field, first = f"plants[{i}].lines[{j}].name", prefix + device_name(1, count)
            else:
                long = [
                    k
                    for k, name in enumerate(line.devices)
                    if _bytes(prefix + name) > MAX_NAME_BYTES
                ]
                field = f"plants[{i}].lines[{j}].devices[{long[0]}]" if long else ""
                first = prefix + line.devices[long[0]] if long else ""
            if not long:
                continue
            more = f" (and {len(long) - 1} more devices of this line)" if len(long) > 1 else ""
            problems.append(
                f"{field}: device id {_cut(first)} is {_bytes(first)} bytes, more than "
                f"{MAX_NAME_BYTES}{more}; it is {routing}: shorten the plant, line or device name"
            )
    return problems


def _bytes(text: str) -> int:
    return len(text.encode())


def _cut(text: str, limit: int = 48) -> str:
    """`repr(text)`, cut to about `limit` characters."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _array_of_tables(
    value: Any, path: str, header: str, what: str, problems: list[str]
) -> list[Any]:
    """`value` if it is a non-empty array (of `[[header]]` tables), else [] after a problem."""
    if value is REQUIRED:
        problems.append(
            f"{path}: missing required key (declare at least one {what} with [[{header}]])"
        )
        return []
    if not isinstance(value, list):
        problems.append(
            f"{path}: expected an array of tables ([[{header}]]), got {describe(value)}"
        )
        return []
    if not value:
        problems.append(f"{path}: must declare at least one {what}")
    return value


def _plant_test_data(draft: _PlantDraft, template: str | None) -> str | None:
    if draft.test_data is not None:
        return fill_template(draft.test_data, plant=draft.name)
    return None if template is None else fill_template(template, plant=draft.name)


def _template_problems(path: str, template: str | None, keys: Collection[str]) -> list[str]:
    problem = None if template is None else template_problem(template, keys)
    return [] if problem is None else [f"{path}: {problem}"]


def _read_plants(value: Any, data: DataSpec, problems: list[str]) -> tuple[_PlantDraft, ...]:
    tables = _array_of_tables(value, "plants", "plants", "plant", problems)
    drafts = tuple(
        _read_plant(table, f"plants[{i}]", data, problems) for i, table in enumerate(tables)
    )
    problems += [
        f"{path}: duplicate plant name {name!r} (also {first})"
        for path, name, first in _repeats(
            (f"plants[{i}].name", d.name) for i, d in enumerate(drafts)
        )
    ]
    return drafts


def _read_plant(table: Any, path: str, data: DataSpec, problems: list[str]) -> _PlantDraft:
    if not isinstance(table, dict):
        problems.append(f"{path}: expected a table, got {describe(table)}")
        return _PlantDraft(None, None, None, ())
    values = _read_fields(
        table, path, PLANT_FIELDS, problems, structural=("lines", "aggregation", "classes")
    )
    classes = _read_plant_classes(table.get("classes"), f"{path}.classes", problems)
    problems += _template_problems(f"{path}.test_data", values["test_data"], TEST_PATH_KEYS)
    address = _checked_address(
        values["address"],
        f"{path}.address",
        problems,
        dialled_by=("devices", "edge", values["name"] or "PLANT"),
    )
    publish = _checked_address(
        values["publish"],
        f"{path}.publish",
        problems,
        dialled_by=("plant's inference servers", "edge", values["name"] or "PLANT"),
    )
    aggregation = (
        _read_rule(table["aggregation"], f"{path}.aggregation", problems)
        if "aggregation" in table
        else None
    )
    tables = _array_of_tables(
        table.get("lines", REQUIRED), f"{path}.lines", "plants.lines", "line", problems
    )
    lines = tuple(
        _read_line(line, f"{path}.lines[{i}]", data, problems) for i, line in enumerate(tables)
    )
    problems += [
        f"{line_path}: duplicate line name {name!r} (also {first})"
        for line_path, name, first in _repeats(
            (f"{path}.lines[{i}].name", line.name) for i, line in enumerate(lines)
        )
    ]
    return _PlantDraft(
        values["name"],
        address,
        values["shift"],
        lines,
        aggregation,
        classes,
        values["test_data"],
        {key: values[key] for key in PLANT_SPEED_KEYS},
        publish,
    )


def _read_personalization(table: Any, problems: list[str]) -> Personalization:
    """`[personalization]`: `method` and `layers`, a list of distinct non-empty names (whether
    the model has them is checked against the task, `hierfl.data.loading`)."""
    if not isinstance(table, dict):
        problems.append(f"personalization: expected a table, got {describe(table)}")
        return Personalization()
    values = _read_fields(
        table, "personalization", PERSONALIZATION_FIELDS, problems, structural=("layers",)
    )
    layers = table.get("layers", [])
    if not isinstance(layers, list) or not all(
        isinstance(name, str) and name.strip("/") for name in layers
    ):
        problems.append(
            "personalization.layers: expected an array of parameter names or prefixes, "
            f'e.g. ["head"], got {describe(layers)}'
        )
        layers = []
    problems += [
        f"{item_path}: duplicate layer {name!r} (also {first})"
        for item_path, name, first in _repeats(
            (f"personalization.layers[{i}]", n) for i, n in enumerate(layers)
        )
    ]
    method = values["method"] if values["method"] is not None else "none"
    rounds = values.get("rounds") or 0
    return Personalization(method, tuple(name.strip("/") for name in layers), rounds)


def _read_plant_classes(value: Any, path: str, problems: list[str]) -> tuple[str, ...] | None:
    """A plant's `classes = ["healthy", "outer"]`: a non-empty list of distinct names, or None if absent."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        problems.append(f"{path}: expected a non-empty array of class names, got {describe(value)}")
        return None
    before = len(problems)
    for i, name in enumerate(value):
        _, reason = PLANT_CLASS.check(name)
        if reason is not None:
            problems.append(f"{path}[{i}]: {reason}")
    problems += [
        f"{item_path}: duplicate class {name!r} (also {first})"
        for item_path, name, first in _repeats(
            (f"{path}[{i}]", n) for i, n in enumerate(value) if isinstance(n, str)
        )
    ]
    return tuple(value) if len(problems) == before else None


def _read_line(table: Any, path: str, defaults: DataSpec, problems: list[str]) -> _LineDraft:
    if not isinstance(table, dict):
        problems.append(f"{path}: expected a table, got {describe(table)}")
        return _LineDraft(None, (), None)
    values = _read_fields(table, path, LINE_FIELDS, problems, structural=("devices", "data"))
    entries, paths = _device_entries(table.get("devices", REQUIRED), f"{path}.devices", problems)
    names = _read_devices(entries, f"{path}.devices", problems)
    data = _read_line_data(table.get("data", {}), f"{path}.data", defaults, problems)
    return _LineDraft(values["name"], names, data, values["local_steps"], paths)


def _device_entries(value: Any, path: str, problems: list[str]) -> tuple[Any, dict[str, str]]:
    """`devices` with each `{ name = "...", data = "..." }` entry replaced by its name, and
    the data path of each device that gives its own (a template over {plant}, {line}, {device})."""
    if not isinstance(value, list):
        return value, {}
    names, paths = [], {}
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            names.append(entry)
            continue
        problems += [
            unknown_key(f"{path}[{i}].{key}", key, ("data", "name"))
            for key in entry
            if key not in ("data", "name")
        ]
        name, data = entry.get("name", REQUIRED), entry.get("data")
        if name is REQUIRED:
            problems.append(f"{path}[{i}].name: missing required key")
            name = None
        if data is not None and (not isinstance(data, str) or not data):
            problems.append(f"{path}[{i}].data: expected a path, got {describe(data)}")
        elif data is not None:
            problems += _template_problems(f"{path}[{i}].data", data, DEVICE_PATH_KEYS)
            if isinstance(name, str):
                paths[name] = data
        names.append(name)
    return names, paths


def _read_line_data(table: Any, path: str, defaults: DataSpec, problems: list[str]) -> DataSpec:
    """The line's `DataSpec`: the federation's `[data]` with this line's overrides applied."""
    if not isinstance(table, dict):
        problems.append(f"{path}: expected a table, got {describe(table)}")
        return defaults
    if "test_fraction" in table:
        problems.append(
            f"{path}.test_fraction: unknown key (allowed: {', '.join(sorted(LINE_DATA_KEYS))}); "
            "the test split is federation-wide, set it in [data]"
        )
        table = {key: value for key, value in table.items() if key != "test_fraction"}
    fields = {
        key: dataclasses.replace(DATA_FIELDS[key], default=getattr(defaults, key))
        for key in LINE_DATA_KEYS
    }
    values = _read_fields(table, path, fields, problems)
    if "path" in table:
        problems += _template_problems(f"{path}.path", values["path"], DEVICE_PATH_KEYS)
    return _data_spec(values)


def _read_devices(value: Any, path: str, problems: list[str]) -> int | tuple[str, ...]:
    """The count N of `devices = N` (named dev-001.. when assembled), or the names of
    `devices = ["a", "b"]`; () if invalid."""
    if value is REQUIRED:
        problems.append(f"{path}: missing required key")
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            problems.append(f"{path}: must be >= 1, got {value}")
            return ()
        if value > MAX_DEVICES_PER_LINE:
            problems.append(f"{path}: must be <= {MAX_DEVICES_PER_LINE}, got {value}")
            return ()
        return value
    if not isinstance(value, list):
        problems.append(
            f"{path}: expected a device count or an array of device names, got {describe(value)}"
        )
        return ()
    if not value:
        problems.append(f"{path}: must list at least one device name")
        return ()
    before = len(problems)
    for i, name in enumerate(value):
        if not isinstance(name, str):
            problems.append(f"{path}[{i}]: expected a string, got {describe(name)}")
        elif not NAME_PATTERN.fullmatch(name):
            problems.append(f"{path}[{i}]: invalid name {name!r} ({NAME_RULE})")
    problems += [
        f"{item_path}: duplicate device name {name!r} (also {first})"
        for item_path, name, first in _repeats(
            (f"{path}[{i}]", name) for i, name in enumerate(value) if isinstance(name, str)
        )
    ]
    return tuple(value) if len(problems) == before else ()


def _repeats(entries: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any, str]]:
    """`(path, value, first path)` for each entry whose value appeared before (None skipped)."""
    first: dict[Any, str] = {}
    for path, value in entries:
        if value is None:
            continue
        if value in first:
            yield path, value, first[value]
        else:
            first[value] = path


def _address_clashes(entries: Iterable[tuple[str, str | None]]) -> list[str]:
    return [
        f"{path}: {address!r} already used by {first}" for path, address, first in _repeats(entries)
    ]
