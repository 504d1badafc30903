"""The topology model: frozen dataclasses for a federation, and the rules for its scalar fields.

A `Topology` is the whole hierarchy (cloud -> plants -> lines -> devices) plus the training
plan and the data assignment. It is built once, by `hierfl.topology.load`, from a TOML file
that has been checked completely; code that receives a `Topology` trusts it.

The rules for every scalar field (type, default, allowed range) live here, in
`FEDERATION_FIELDS`, `DATA_FIELDS` and `PLANT_SHIFT`, so the loader and
`Topology.with_federation` apply exactly the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

PARTITIONS = ("dirichlet", "iid", "quantity")
"""How a line's data is split over its devices: uniformly, Dirichlet label skew, lognormal size skew."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Plant, line and device names: they become path segments of device ids, so no '/' or spaces."""

NAME_RULE = "use letters, digits, '_', '.', '-', starting with a letter or digit"


class TopologyError(ValueError):
    """A topology is invalid. Carries every problem found, not just the first.

    Attributes:
      problems: one line per problem, each `<path>: <why>`, e.g.
        `plants[1].lines[0].devices: must be >= 1, got 0` (0-based indices, dotted keys).
      source: the file, preset or `<string>` the topology came from.
    """

    def __init__(self, problems: Iterable[str], source: str = "<string>"):
        problems = tuple(problems)
        super().__init__(problems, source)
        self.problems = problems
        self.source = source

    def __str__(self) -> str:
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"invalid topology {self.source}: {count} {noun}"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


class _Required:
    """Marks a field that has no default and must be present."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def describe(value: object) -> str:
    """`str '5'`, `bool True`: the type and a short repr of a value, for error messages."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def unknown_key(path: str, key: str, allowed: Collection[str]) -> str:
    """The problem line for a key that is not part of the format, with a spelling hint."""
    message = f"{path}: unknown key (allowed: {', '.join(sorted(allowed))})"
    close = difflib.get_close_matches(key, list(allowed), n=1)
    if close:
        message += f"; did you mean '{close[0]}'?"
    return message


def unknown_value(value: object, allowed: Collection[str]) -> str:
    """The reason for a string outside its allowed set."""
    return f"unknown value {value!r} (choose from: {', '.join(sorted(allowed))})"


def check_choices(choices: Mapping[str, Collection[str]] | None) -> Mapping[str, Collection[str]]:
    """`choices` itself, after checking it only names string fields of `[federation]`.

    A caller's mistake (a misspelled key would silently check nothing), so it raises
    ValueError/TypeError rather than TopologyError.
    """
    if choices is None:
        return {}
    supported = sorted(f"federation.{key}" for key, field in FEDERATION_FIELDS.items() if field.kind is str)
    for path, allowed in choices.items():
        if path not in supported:
            raise ValueError(f"choices: unsupported field {path!r} (supported: {', '.join(supported)})")
        if isinstance(allowed, str):
            raise TypeError(f"choices[{path!r}]: expected a collection of strings, got the string {allowed!r}")
    return choices


@dataclasses.dataclass(frozen=True)
class Field:
    """The rule for one scalar field: its type, its default and the values it may take.

    `kind` is `str`, `int` or `float`. Booleans are never accepted as numbers; a `float`
    field accepts an int and converts it. `default` is `REQUIRED` or the value used when the
    key is absent (`None` makes the field optional). `low`/`high` bound numbers (inclusive
    unless `*_open`); `options` and `pattern` restrict strings.
    """

    kind: type
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    options: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None

    def check(self, value: object, choices: Collection[str] | None = None) -> tuple[Any, str | None]:
        """Returns `(normalized value, None)` if `value` is allowed, else `(None, reason)`.

        `choices`, when given, further restricts a string field to those values.
        """
        if value is None and self.default is None:
            return None, None
        if self.kind is str:
            return self._check_string(value, choices)
        return self._check_number(value)

    def _check_string(self, value: object, choices: Collection[str] | None) -> tuple[Any, str | None]:
        if not isinstance(value, str):
            return None, f"expected a string, got {describe(value)}"
        if not value:
            return None, "must not be empty"
        if self.options and value not in self.options:
            return None, unknown_value(value, self.options)
        if choices is not None and value not in choices:
            return None, unknown_value(value, choices)
        if self.pattern is not None and not self.pattern.fullmatch(value):
            return None, f"invalid name {value!r} ({NAME_RULE})"
        return value, None

    def _check_number(self, value: object) -> tuple[Any, str | None]:
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return None, f"expected an integer, got {describe(value)}"
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None, f"expected a number, got {describe(value)}"
            value = float(value)
            if not math.isfinite(value):
                return None, f"must be finite, got {value}"
        if not self._in_range(value):
            return None, f"must be {self._range_text()}, got {value}"
        return value, None

    def _in_range(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def _range_text(self) -> str:
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'<' if self.high_open else '<='} {self.high}"


FEDERATION_FIELDS: Mapping[str, Field] = {
    "name": Field(str),
    "task": Field(str),
    "model": Field(str, default=None),
    "algorithm": Field(str, default="fedavg"),
    "cloud_rounds": Field(int, low=1),
    "edge_rounds": Field(int, default=1, low=1),
    "local_steps": Field(int, default=1, low=1),
    "batch_size": Field(int, default=32, low=1),
    "learning_rate": Field(float, low=0, low_open=True),
    "server_learning_rate": Field(float, default=1.0, low=0, low_open=True),
    "seed": Field(int, default=0, low=0),
}
"""The `[federation]` table: the task and the training plan."""

DATA_FIELDS: Mapping[str, Field] = {
    "partition": Field(str, default="iid", options=PARTITIONS),
    "alpha": Field(float, default=0.5, low=0, low_open=True),
    "sigma": Field(float, default=1.0, low=0, low_open=True),
    "samples_per_device": Field(int, default=None, low=1),
    "test_fraction": Field(float, default=0.2, low=0, high=1, low_open=True, high_open=True),
}
"""The `[data]` table. A line's `[plants.lines.data]` may override all but `test_fraction`."""

LINE_DATA_KEYS = ("partition", "alpha", "sigma", "samples_per_device")

NAME = Field(str, pattern=NAME_PATTERN)
"""A plant, line or device name."""

PLANT_SHIFT = Field(float, default=0.0, low=0, high=1)
"""A plant's feature-shift severity: 0 = the task's clean data, 1 = the strongest shift."""

PLANT_CLASS = Field(str)
"""One entry of a plant's `classes` list: a class (or fault type) name of the task, which
the plan checks against the task (the topology does not know the task's names)."""

LINKS = ("device_to_edge", "edge_to_cloud")
"""The upward links whose updates can be compressed, as named in `[compression.<link>]`."""

CODECS = ("none", "float16", "bfloat16", "int8", "topk")
"""Update codecs (implemented by `hierfl.kernels.compression`, which must offer the same names)."""

LINK_FIELDS: Mapping[str, Field] = {
    "codec": Field(str, default="none", options=CODECS),
    "block_size": Field(int, default=256, low=1, high=1 << 20),
    "fraction": Field(float, default=0.01, low=0, high=1, low_open=True),
}
"""A `[compression.<link>]` table. `block_size` is for int8, `fraction` for topk."""

CODEC_PARAMETERS: Mapping[str, tuple[str, ...]] = {"int8": ("block_size",), "topk": ("fraction",)}
"""Which `LINK_FIELDS` besides `codec` each codec takes; setting another one is an error."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """How a line's share of the task's data is split over its devices.

    `partition` is one of `PARTITIONS`; `alpha` is the Dirichlet concentration (used by
    "dirichlet", smaller = more label skew); `sigma` is the lognormal sigma of sample counts
    (used by "quantity"); `samples_per_device` is the training samples each device gets, or
    None to split the available data evenly.
    """

    partition: str = "iid"
    alpha: float = 0.5
    sigma: float = 1.0
    samples_per_device: int | None = None


@dataclasses.dataclass(frozen=True)
class Device:
    """One device. `id` is `plant/line/name`, unique in the federation and stable across runs;
    `index` is its 0-based position in the federation-wide order (plants, lines, devices in
    file order), i.e. its row on the simulator's device axis."""

    id: str
    name: str
    plant: str
    line: str
    index: int


@dataclasses.dataclass(frozen=True)
class Line:
    """A production line: its devices and how its data is assigned (the federation's `[data]`
    defaults merged with the line's own overrides)."""

    name: str
    devices: tuple[Device, ...]
    data: DataSpec

    @property
    def num_devices(self) -> int:
        return len(self.devices)


@dataclasses.dataclass(frozen=True)
class Plant:
    """A plant: one edge server at `address`, aggregating the devices of its lines.

    `shift` (in [0, 1]) is the severity of the feature shift applied to this plant's data,
    modelling different machines, sensors or lighting between sites. `classes` limits the
    plant's data to some of the task's classes (e.g. the fault types its machines develop),
    None for all of them.
    """

    name: str
    address: str
    lines: tuple[Line, ...]
    shift: float = 0.0
    classes: tuple[str, ...] | None = None

    @property
    def devices(self) -> tuple[Device, ...]:
        """All devices of this plant, line by line, in federation order."""
        return tuple(device for line in self.lines for device in line.devices)

    @property
    def num_devices(self) -> int:
        return sum(line.num_devices for line in self.lines)


@dataclasses.dataclass(frozen=True)
class Federation:
    """The task and the training plan.

    One cloud round is `edge_rounds` (kappa2) edge rounds; one edge round is `local_steps`
    (kappa1) SGD steps of `batch_size` examples on every device, then an edge aggregation.
    `model` None means the task's default model. See `FEDERATION_FIELDS` for the ranges.
    """

    name: str
    task: str
    model: str | None
    algorithm: str
    cloud_rounds: int
    edge_rounds: int
    local_steps: int
    batch_size: int
    learning_rate: float
    server_learning_rate: float
    seed: int


@dataclasses.dataclass(frozen=True)
class LinkCompression:
    """How updates are encoded on one upward link: a codec of `CODECS` and its parameters.

    `block_size`: parameters per int8 scale; `fraction`: share of parameters topk sends.
    """

    codec: str = "none"
    block_size: int = 256
    fraction: float = 0.01


@dataclasses.dataclass(frozen=True)
class Compression:
    """The codec of each upward link: device -> edge and edge -> cloud (downlinks send float32)."""

    device_to_edge: LinkCompression = LinkCompression()
    edge_to_cloud: LinkCompression = LinkCompression()


@dataclasses.dataclass(frozen=True)
class Cloud:
    """The cloud server: where the edges send their summaries."""

    address: str


@dataclasses.dataclass(frozen=True)
class Topology:
    """A whole federation: plan, cloud, plants (-> lines -> devices) and data assignment.

    `data` is the federation-wide `[data]` defaults (each line carries its merged `DataSpec`);
    `test_fraction` is the share of the task's data held out for the global test set;
    `compression` is the codec of each upward link;
    `source` says where it was loaded from (for messages).
    """

    federation: Federation
    cloud: Cloud
    plants: tuple[Plant, ...]
    data: DataSpec = DataSpec()
    test_fraction: float = 0.2
    compression: Compression = Compression()
    source: str = "<string>"

    @functools.cached_property
    def devices(self) -> tuple[Device, ...]:
        """All devices, in federation order: `devices[i].index == i`."""
        return tuple(device for plant in self.plants for device in plant.devices)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def plant_names(self) -> tuple[str, ...]:
        return tuple(plant.name for plant in self.plants)

    def plant(self, name: str) -> Plant:
        """The plant called `name`; KeyError naming the known plants if there is none."""
        for plant in self.plants:
            if plant.name == name:
                return plant
        raise KeyError(f"no plant {name!r} in topology {self.source} (plants: {', '.join(self.plant_names)})")

    @functools.cached_property
    def _devices_by_id(self) -> Mapping[str, Device]:
        return {device.id: device for device in self.devices}

    def device(self, id: str) -> Device:
        """The device with id `plant/line/name`; KeyError if the topology has none."""
        try:
            return self._devices_by_id[id]
        except KeyError:
            raise KeyError(f"no device {id!r} in topology {self.source} (ids are 'plant/line/device')") from None

    def with_federation(self, *, choices: Mapping[str, Collection[str]] | None = None, **overrides: Any) -> Topology:
        """A copy with some `[federation]` fields replaced, e.g. `with_federation(cloud_rounds=3)`.

        The new values are checked with the loader's rules (and against `choices`, keyed
        `federation.<field>` as in `load_topology`); TopologyError lists every bad one.
        """
        choices = check_choices(choices)
        values: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in overrides.items():
            path = f"federation.{key}"
            field = FEDERATION_FIELDS.get(key)
            if field is None:
                problems.append(unknown_key(path, key, FEDERATION_FIELDS))
                continue
            values[key], reason = field.check(value, choices.get(path))
            if reason is not None:
                problems.append(f"{path}: {reason}")
        if problems:
            raise TopologyError(problems, self.source)
        return dataclasses.replace(self, federation=dataclasses.replace(self.federation, **values))
