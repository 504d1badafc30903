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
import string
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from .errors import HierflError

PARTITIONS = ("dirichlet", "iid", "quantity")
"""How a line's data is split over its devices: uniformly, Dirichlet label skew, lognormal size skew."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Plant, line and device names: they become path segments of device ids, so no '/' or spaces."""

NAME_RULE = "use letters, digits, '_', '.', '-', starting with a letter or digit"


MAX_PRINTED_PROBLEMS = 50
"""A topology's message lists this many problems, then counts the rest (fix the first, run again)."""


class TopologyError(HierflError, ValueError):
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
        lines += [f"  - {problem}" for problem in self.problems[:MAX_PRINTED_PROBLEMS]]
        if count > MAX_PRINTED_PROBLEMS:  # `problems` keeps them all
            lines.append(f"  ... and {count - MAX_PRINTED_PROBLEMS} more")
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
    supported = sorted(
        f"federation.{key}" for key, field in FEDERATION_FIELDS.items() if field.kind is str
    )
    for path, allowed in choices.items():
        if path not in supported:
            raise ValueError(
                f"choices: unsupported field {path!r} (supported: {', '.join(supported)})"
            )
        if isinstance(allowed, str):
            raise TypeError(
                f"choices[{path!r}]: expected a collection of strings, got the string {allowed!r}"
            )
    return choices


@dataclasses.dataclass(frozen=True)
class Field:
    """The rule for one scalar field: its type, its default and the values it may take.

    `kind` is `str`, `int`, `float` or `bool`. Booleans are never accepted as numbers; a `float`
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

    def check(
        self, value: object, choices: Collection[str] | None = None
    ) -> tuple[Any, str | None]:
        """Returns `(normalized value, None)` if `value` is allowed, else `(None, reason)`.

        `choices`, when given, further restricts a string field to those values.
        """
        if value is None and self.default is None:
            return None, None
        if self.kind is bool:
            return (
                (value, None)
                if isinstance(value, bool)
                else (None, f"expected true or false, got {describe(value)}")
            )
        if self.kind is str:
            return self._check_string(value, choices)
        return self._check_number(value)

    def _check_string(
        self, value: object, choices: Collection[str] | None
    ) -> tuple[Any, str | None]:
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


MAX_SEED = 2**32 - 1
"""JAX's keys take a 32-bit seed: a larger one would give the same run as a smaller one."""

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
    "seed": Field(int, default=0, low=0, high=MAX_SEED),
    "mu": Field(float, default=None, low=0),
}
"""The `[federation]` table: the task, the device algorithm and the training plan."""

ALGORITHM_PARAMETERS: Mapping[str, Mapping[str, Any]] = {"fedprox": {"mu": 0.01}}
"""Which `[federation]` fields only some algorithms take, with their defaults there."""

DATA_FIELDS: Mapping[str, Field] = {
    "partition": Field(str, default="iid", options=PARTITIONS),
    "alpha": Field(float, default=0.5, low=0, low_open=True),
    "sigma": Field(float, default=1.0, low=0, low_open=True),
    "samples_per_device": Field(int, default=None, low=1),
    "test_fraction": Field(float, default=0.2, low=0, high=1, low_open=True, high_open=True),
    "path": Field(str, default=None),
    "test_data": Field(str, default=None),
    "on_bad_rows": Field(str, default="refuse", options=("drop", "refuse")),
}
"""The `[data]` table. A line's `[plants.lines.data]` may override the keys of `LINE_DATA_KEYS`;
a plant may set its own `test_data`."""

LINE_DATA_KEYS = ("partition", "alpha", "sigma", "samples_per_device", "path")

DEVICE_PATH_KEYS = ("plant", "line", "device")
"""What a device's `path` template may name: `data/{plant}/{line}/{device}.csv`."""

TEST_PATH_KEYS = ("plant",)
"""What a plant's `test_data` template may name: `data/{plant}/test.csv`."""


def template_problem(template: str, keys: Collection[str]) -> str | None:
    """Why `template` is not a path template over `keys` (`{plant}`...), or None if it is."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as error:
        return f"invalid path template {template!r}: {error} (write a literal brace as '{{{{' or '}}}}')"
    allowed = ", ".join("{" + key + "}" for key in keys)
    for name, spec, conversion in fields:
        if name not in keys or spec or conversion:
            return f"unknown placeholder {{{name}}} in {template!r} (use {allowed})"
    return None


def fill_template(template: str, **names: str) -> str:
    """The path `template` names for these names (checked by `template_problem` at load)."""
    return template.format(**names)


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

TIERS = ("edge", "cloud")
"""The aggregating tiers, as named in `[aggregation.<tier>]`."""

RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum")
"""How a tier combines the updates it receives (implemented by `hierfl.core.rules`)."""

ROBUST_RULES = ("median", "trimmed_mean", "krum", "multi_krum")

RULE_FIELDS: Mapping[str, Field] = {
    "rule": Field(str, default="mean", options=RULES),
    "beta": Field(float, default=0.1, low=0, high=0.5, high_open=True),
    "byzantine": Field(int, default=1, low=0),
    "select": Field(int, default=None, low=1),
    "clip_norm": Field(float, default=None, low=0, low_open=True),
    "weighting": Field(str, default="examples", options=("examples", "uniform")),
}
"""An `[aggregation.edge]`, `[aggregation.cloud]` or `[plants.aggregation]` table's rule fields."""

RULE_PARAMETERS: Mapping[str, tuple[str, ...]] = {
    "mean": (),
    "median": ("weighting",),
    "trimmed_mean": ("beta", "weighting"),
    "krum": ("byzantine",),
    "multi_krum": ("byzantine", "select", "weighting"),
}
"""Which `RULE_FIELDS` besides `rule` and `clip_norm` (any rule) each rule takes."""

OPTIMIZERS = ("sgd", "momentum", "adam", "yogi", "adagrad")
"""The cloud's server optimizer: FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad (FedOpt)."""

OPTIMIZER_FIELDS: Mapping[str, Field] = {
    "optimizer": Field(str, default="sgd", options=OPTIMIZERS),
    "momentum": Field(float, default=0.9, low=0, high=1, high_open=True),
    "beta1": Field(float, default=0.9, low=0, high=1, high_open=True),
    "beta2": Field(float, default=0.99, low=0, high=1, high_open=True),
    "tau": Field(float, default=1e-3, low=0, low_open=True),
}
"""The cloud table's optimizer fields (its learning rate is `federation.server_learning_rate`)."""

OPTIMIZER_PARAMETERS: Mapping[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("momentum",),
    "adam": ("beta1", "beta2", "tau"),
    "yogi": ("beta1", "beta2", "tau"),
    "adagrad": ("tau",),
}

ATTACKS = ("none", "sign_flip", "gaussian")
"""Simulated misbehaving devices: none, updates negated and scaled, or pure Gaussian noise."""

ATTACK_FIELDS: Mapping[str, Field] = {
    "kind": Field(str, default="none", options=ATTACKS),
    "fraction": Field(float, default=0.0, low=0, high=1, high_open=True),
    "scale": Field(float, default=10.0, low=0, low_open=True),
}
"""The `[attack]` table: which share of each plant's devices misbehaves, and how (simulator only)."""

DP_PLACES = ("none", "device", "edge", "cloud")
"""Where differential-privacy noise is added: nowhere, on each device (local DP), at the
plant's edge (central DP, edge trusted) or at the cloud (central DP, edges and cloud trusted)."""

ACCOUNTANTS = ("rdp", "pld")

NOISE_SOURCES = ("seed", "os")
"""Where DP randomness comes from: the federation seed (reproducible) or each node's OS (secret)."""

PRIVACY_FIELDS: Mapping[str, Field] = {
    "dp": Field(str, default="none", options=DP_PLACES),
    "clip_norm": Field(float, default=1.0, low=0, low_open=True),
    "noise_multiplier": Field(float, default=1.0, low=0),
    "sample_rate": Field(float, default=1.0, low=0, high=1, low_open=True),
    "delta": Field(float, default=1e-5, low=0, high=1, low_open=True, high_open=True),
    "target_epsilon": Field(float, default=None, low=0, low_open=True),
    "accountant": Field(str, default="rdp", options=ACCOUNTANTS),
    "noise_source": Field(str, default="seed", options=NOISE_SOURCES),
    "clip_quantile": Field(float, default=None, low=0, high=1, low_open=True, high_open=True),
    "clip_learning_rate": Field(float, default=0.2, low=0, low_open=True),
    "quantile_noise": Field(float, default=None, low=0, low_open=True),
    "secure_aggregation": Field(bool, default=False),
    "secagg_threshold": Field(float, default=0.6, low=0.5, high=1, low_open=True),
    "secagg_clip": Field(float, default=1.0, low=0, low_open=True),
    "secagg_max_examples": Field(int, default=None, low=1, high=2**31 - 1),
    "homomorphic": Field(bool, default=False),
    "he_poly_modulus_degree": Field(int, default=8192, low=4096, high=32768),
    "he_scale_bits": Field(int, default=40, low=20, high=40),
}
"""The `[privacy]` table (see `Privacy`)."""

HE_MAX_COEFF_BITS: Mapping[int, int] = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
"""The largest total coefficient modulus (bits) SEAL allows per CKKS polynomial degree at 128-bit security."""


def he_coeff_mod_bit_sizes(privacy: Privacy) -> tuple[int, int, int]:
    """The CKKS coefficient moduli: a special prime, one level for the plaintext-weight product, the base prime.

    `(scale + 20, scale, scale + 20)` bits: one rescale after multiplying by the weights,
    and 20 bits above the scale for the integer part of the values (|x| < 2^19).
    """
    bits = privacy.he_scale_bits
    return (bits + 20, bits, bits + 20)


def secagg_threshold(privacy: Privacy, devices: int) -> int:
    """`t` for a plant of `devices` devices: `ceil(secagg_threshold * devices)` (float noise ignored)."""
    return math.ceil(round(privacy.secagg_threshold * devices, 9))


PLANT_SPEED_KEYS = ("seconds_per_step", "latency", "bandwidth")
"""A plant's declared speed (`Plant`): seconds per local step, and its link's latency (seconds)
and bandwidth (bytes per second) to the cloud; each a positive number when given."""

RUNTIME_FIELDS: Mapping[str, Field] = {
    "device_deadline": Field(float, default=30.0, low=0, low_open=True),
    "secagg_deadline": Field(float, default=None, low=0, low_open=True),
    "edge_deadline": Field(float, default=120.0, low=0, low_open=True),
    "min_device_participation": Field(float, default=0.5, low=0, high=1, low_open=True),
    "min_edge_participation": Field(float, default=0.5, low=0, high=1, low_open=True),
    "heartbeat_interval": Field(float, default=1.0, low=0, low_open=True),
    "heartbeat_timeout": Field(float, default=5.0, low=0, low_open=True),
    "start_timeout": Field(float, default=120.0, low=0, low_open=True),
    "max_message_bytes": Field(int, default=1 << 28, low=1024),
}
"""The `[runtime]` table: deadlines, participation and liveness of the distributed runtime (see `Runtime`)."""

DEVICE_GROUPINGS = ("auto", "line", "plant")
"""The named values of `[runtime] devices_per_process`; the other kind is an integer >= 1."""

CURVE_KEY_PATTERN = re.compile(r"[0-9A-Za-z.:+=^!/*?&<>()\[\]{}@%$#-]{40}")
"""A CurveZMQ public key in Z85 text: 40 characters (what `hierfl keys generate` writes)."""


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
    path: str | None = None
    """Where each device's data is, as a template over `DEVICE_PATH_KEYS`; None for a task
    that generates its data. Relative paths are relative to the topology file's folder."""


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
    data: str | None = None
    """Where this device's data is, when it says so itself (`{ name = ..., data = ... }` in
    its line's `devices`); else its line's `path` template applies."""


@dataclasses.dataclass(frozen=True)
class Line:
    """A production line: its devices, how its data is assigned (the federation's `[data]`
    defaults merged with the line's own overrides) and its devices' compute budget:
    `local_steps` per edge round, or None for the federation's `local_steps`."""

    name: str
    devices: tuple[Device, ...]
    data: DataSpec
    local_steps: int | None = None

    @property
    def num_devices(self) -> int:
        return len(self.devices)


@dataclasses.dataclass(frozen=True)
class TierRule:
    """How an aggregating tier combines what it receives (see `RULE_FIELDS`).

    `rule` is one of `RULES`; `beta` is the share trimmed from each end (trimmed_mean);
    `byzantine` the number of faulty senders tolerated and `select` how many updates are
    averaged (krum, multi_krum; `select` None = all but `byzantine`); `clip_norm` clips
    every received update's L2 norm first (any rule); `weighting` says whether example
    counts weigh in ("examples") or each sender counts once ("uniform").
    """

    rule: str = "mean"
    beta: float = 0.1
    byzantine: int = 1
    select: int | None = None
    clip_norm: float | None = None
    weighting: str = "examples"

    @property
    def robust(self) -> bool:
        return self.rule in ROBUST_RULES


@dataclasses.dataclass(frozen=True)
class ServerOptimizer:
    """The cloud's optax step on the aggregated update (`OPTIMIZERS`; see `OPTIMIZER_FIELDS`)."""

    optimizer: str = "sgd"
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """The rule of each tier and the cloud's optimizer: `[aggregation.edge]`, `[aggregation.cloud]`.

    A plant's own `[plants.aggregation]` table replaces `edge` for that plant's edge.
    """

    edge: TierRule = TierRule()
    cloud: TierRule = TierRule()
    optimizer: ServerOptimizer = ServerOptimizer()


PERSONALIZATION_METHODS = ("none", "plant-layers", "fine-tune")
"""How plants get a model of their own: not at all (one global model), FedPer-style per-plant
layers (the named layers stay with each plant's edge; the cloud averages the rest), or
fine-tuning (the last `rounds` cloud rounds each plant trains the global model on its own)."""

PERSONALIZATION_FIELDS: Mapping[str, Field] = {
    "method": Field(str, default="none", options=PERSONALIZATION_METHODS),
    "rounds": Field(int, default=None, low=1),
}
"""The `[personalization]` table's scalar fields (its `layers` list is read beside them)."""


@dataclasses.dataclass(frozen=True)
class Personalization:
    """`[personalization]`: `method`; for "plant-layers" the `layers` that stay per plant, for
    "fine-tune" the layers each plant adapts (all when empty) and its `rounds`: the last
    `rounds` of `cloud_rounds`, in which each plant trains alone from the global model. Layers
    are names or '/'-separated prefixes of the model's parameter paths (e.g. "head" for
    `head/kernel` and `head/bias`), checked against the model when the task is known."""

    method: str = "none"
    layers: tuple[str, ...] = ()
    rounds: int = 0

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def keeps_layers(self) -> bool:
        """Per-plant layers trained while the shared ones are federated ("plant-layers")."""
        return self.method == "plant-layers"

    @property
    def fine_tunes(self) -> bool:
        """The global model adapted per plant in the last `rounds` rounds ("fine-tune")."""
        return self.method == "fine-tune"

    def federated_rounds(self, cloud_rounds: int) -> int:
        """The cloud rounds of `cloud_rounds` in which the cloud aggregates (the rest fine-tune)."""
        return cloud_rounds - self.rounds if self.fine_tunes else cloud_rounds


STALENESS_WEIGHTINGS = ("polynomial", "constant")
"""How a buffered summary's staleness s discounts it: `(1 + s) ** -staleness_exponent`, or not at all."""

ARRIVAL_ORDERS = ("arrival", "declared")
"""In which order the runtime's cloud takes buffered summaries: as they arrive, or in the order
the plants' declared speeds give (the simulator's schedule; reproducible, for tests)."""

BUFFERED_FIELDS: Mapping[str, Field] = {
    "buffer_size": Field(int, low=1),
    "staleness": Field(str, default="polynomial", options=STALENESS_WEIGHTINGS),
    "staleness_exponent": Field(float, default=0.5, low=0),
    "order": Field(str, default="arrival", options=ARRIVAL_ORDERS),
}
"""The `[buffered_aggregation]` table (see `BufferedAggregation`)."""


@dataclasses.dataclass(frozen=True)
class BufferedAggregation:
    """`[buffered_aggregation]`: the cloud applies its server step as soon as `buffer_size`
    summaries are buffered (FedBuff, Nguyen et al. 2022) instead of once per round of every
    plant; each summary counts `(1 + s) ** -staleness_exponent` (`staleness = "polynomial"`;
    "constant": 1), s being how many global models were made since the one it was trained
    from. `order`: `ARRIVAL_ORDERS`. Absent table: synchronous cloud rounds."""

    buffer_size: int
    staleness: str = "polynomial"
    staleness_exponent: float = 0.5
    order: str = "arrival"


@dataclasses.dataclass(frozen=True)
class Attack:
    """Simulated faulty devices: in every plant, `floor(fraction * devices)` of them (chosen by
    the seed) send `-scale * update` (sign_flip) or Gaussian noise of std `scale` (gaussian)."""

    kind: str = "none"
    fraction: float = 0.0
    scale: float = 10.0


@dataclasses.dataclass(frozen=True)
class Privacy:
    """Differential privacy of device updates (`[privacy]`); the privacy unit is one device's data.

    `dp` is where noise is added (`DP_PLACES`). Every device update is clipped to L2 norm
    `clip_norm` and Gaussian noise of std `noise_multiplier * clip_norm` is added per
    device (`device`), to each edge round's sum (`edge`) or to each cloud round's sum
    (`cloud`). Each device takes part in an edge round with probability `sample_rate`
    (Poisson sampling). epsilon at `delta` is tracked by the `accountant`; with
    `target_epsilon`, training stops before a round would exceed it. `clip_quantile`
    turns on adaptive clipping (the clip norm follows that quantile of the update norms,
    with step `clip_learning_rate` and count noise `quantile_noise`, default devices/20).
    `noise_source = "seed"` derives the noise and the sampling from the federation seed, so
    a run is reproducible (the simulator and the runtime add the same noise); `"os"` salts
    them with a secret each process draws from the OS, as a deployment whose seed is not
    secret needs (whoever knows the seed could otherwise subtract the noise).

    `secure_aggregation` masks device updates so each edge learns only their sum
    (`hierfl.privacy.secagg`): a round survives dropouts while `t = ceil(secagg_threshold *
    devices in the plant)` devices remain; each coordinate a device sends is clipped to
    `[-secagg_clip, secagg_clip]` and fixed-point encoded mod 2^32, its weight (example
    count) as a fraction of the plant's largest: `secagg_max_examples` declares that bound
    (required in the runtime for a task that reads files, whose counts only the devices
    know; a device holding more stays out). `homomorphic` encrypts
    each edge summary with CKKS (`hierfl.privacy.homomorphic`) so the cloud adds
    ciphertexts it cannot read; `he_poly_modulus_degree` and `he_scale_bits` set the
    ring and the scale (coefficient moduli from `he_coeff_mod_bit_sizes`).
    """

    dp: str = "none"
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    sample_rate: float = 1.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    accountant: str = "rdp"
    noise_source: str = "seed"
    clip_quantile: float | None = None
    clip_learning_rate: float = 0.2
    quantile_noise: float | None = None
    secure_aggregation: bool = False
    secagg_threshold: float = 0.6
    secagg_clip: float = 1.0
    secagg_max_examples: int | None = None
    homomorphic: bool = False
    he_poly_modulus_degree: int = 8192
    he_scale_bits: int = 40

    @property
    def enabled(self) -> bool:
        return self.dp != "none"


@dataclasses.dataclass(frozen=True)
class Plant:
    """A plant: one edge server at `address`, aggregating the devices of its lines.

    `shift` (in [0, 1]) is the severity of the feature shift applied to this plant's data,
    modelling different machines, sensors or lighting between sites. `aggregation` is the
    plant's own edge rule, or None for the federation's `[aggregation.edge]`. `classes` limits
    the plant's data to some of the task's classes (e.g. the fault types its machines
    develop), None for all of them. `test_data` is where the plant's held-out examples are
    (its own `test_data` or the `[data]` template filled with its name), None for a task
    that generates its data. `publish` is where the plant's edge publishes the plant's own
    model (`[personalization]`) to the plant's inference servers, None for nowhere.

    The plant's speed, for the simulator's clock (`hierfl.core.speeds`; None = not
    simulated): `seconds_per_step` is one local step of its devices, `latency` (seconds)
    and `bandwidth` (bytes per second) its link to the cloud.
    """

    name: str
    address: str
    lines: tuple[Line, ...]
    shift: float = 0.0
    aggregation: TierRule | None = None
    classes: tuple[str, ...] | None = None
    test_data: str | None = None
    seconds_per_step: float | None = None
    latency: float | None = None
    bandwidth: float | None = None
    publish: str | None = None

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
    mu: float | None = None


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
class Runtime:
    """How the distributed runtime (`hierfl launch`, `hierfl cloud|edge|device`) runs rounds.

    `device_deadline`: seconds an edge waits for device updates in one edge round;
    `edge_deadline`: seconds the cloud waits for edge summaries in one cloud round;
    `secagg_deadline`: seconds an edge waits for each of the three crypto phases that
    follow training in a secure-aggregation round (default: `device_deadline`).
    A round closes early once every live peer answered; at its deadline it completes with
    whoever answered if they are at least `min_device_participation` (of the plant's
    devices) or `min_edge_participation` (of the plants), else it leaves the model
    unchanged. Peers send a heartbeat every `heartbeat_interval` seconds and count as gone
    after `heartbeat_timeout` seconds of silence. Before the first round a server waits up
    to `start_timeout` seconds for all its peers. Messages over `max_message_bytes` are
    refused. `cloud_key`, `edge_keys` (plant -> key) and `device_keys` are CurveZMQ
    public keys (Z85); when any is set, links are encrypted and only listed keys connect.

    `devices_per_process` is how `hierfl launch` groups devices into OS processes: an
    integer N (up to N devices of one plant share a device host; 1 = a process per
    device), "line" or "plant" (a host per line or per plant), or "auto" (a process per
    device for small federations, a host per plant above that; see
    `hierfl.runtime.launch.device_groups`). It changes memory, start-up and how fast a
    plant's devices train, not what they compute.
    """

    device_deadline: float = 30.0
    secagg_deadline: float | None = None
    edge_deadline: float = 120.0
    min_device_participation: float = 0.5
    min_edge_participation: float = 0.5
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    start_timeout: float = 120.0
    max_message_bytes: int = 1 << 28
    cloud_key: str | None = None
    edge_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    device_keys: tuple[str, ...] = ()
    device_key_of: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Device id -> its own key, when `[runtime.keys] devices` is a table: then a device's
    messages are taken only over a connection made with its key."""
    devices_per_process: str | int = "auto"

    @property
    def secure(self) -> bool:
        """Whether links use CurveZMQ (the topology lists public keys)."""
        return self.cloud_key is not None


@dataclasses.dataclass(frozen=True)
class Cloud:
    """The cloud server: where the edges send their summaries."""

    address: str


@dataclasses.dataclass(frozen=True)
class Topology:
    """A whole federation: plan, cloud, plants (-> lines -> devices) and data assignment.

    `data` is the federation-wide `[data]` defaults (each line carries its merged `DataSpec`);
    `test_fraction` is the share of the task's data held out for the global test set;
    `compression` is the codec of each upward link; `aggregation` the rule of each tier
    and the cloud's optimizer; `attack` the simulated faulty devices;
    `runtime` is how the distributed runtime runs rounds (deadlines, participation, keys);
    `source` says where it was loaded from (for messages).
    """

    federation: Federation
    cloud: Cloud
    plants: tuple[Plant, ...]
    data: DataSpec = DataSpec()
    test_fraction: float = 0.2
    compression: Compression = Compression()
    aggregation: Aggregation = Aggregation()
    attack: Attack = Attack()
    privacy: Privacy = Privacy()
    personalization: Personalization = Personalization()
    buffered: BufferedAggregation | None = None
    """`[buffered_aggregation]`, or None for synchronous cloud rounds."""
    source: str = "<string>"
    runtime: Runtime = Runtime()
    on_bad_rows: str = "refuse"
    """What a device does with a row of NaN/inf or empty cells in its files: "refuse" the
    data (the default) or "drop" the row and count it."""

    def data_path(self, device: Device) -> str | None:
        """Where `device`'s data is (its line's `path` template filled in), None if generated."""
        template = device.data or self.line_of(device).data.path
        if template is None:
            return None
        return fill_template(template, plant=device.plant, line=device.line, device=device.name)

    def line_of(self, device: Device) -> Line:
        """The line `device` belongs to."""
        plant = self.plant(device.plant)
        return next(line for line in plant.lines if line.name == device.line)

    def edge_rule(self, plant: Plant) -> TierRule:
        """The rule `plant`'s edge aggregates its devices with: its own, or `[aggregation.edge]`."""
        return plant.aggregation or self.aggregation.edge

    @functools.cached_property
    def device_steps(self) -> tuple[int, ...]:
        """Each device's local steps per edge round (its line's, or the federation's), in device order."""
        default = self.federation.local_steps
        return tuple(
            line.local_steps or default
            for plant in self.plants
            for line in plant.lines
            for _ in line.devices
        )

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
        raise KeyError(
            f"no plant {name!r} in topology {self.source} (plants: {', '.join(self.plant_names)})"
        )

    @functools.cached_property
    def _devices_by_id(self) -> Mapping[str, Device]:
        return {device.id: device for device in self.devices}

    def device(self, id: str) -> Device:
        """The device with id `plant/line/name`; KeyError if the topology has none."""
        try:
            return self._devices_by_id[id]
        except KeyError:
            raise KeyError(
                f"no device {id!r} in topology {self.source} (ids are 'plant/line/device')"
            ) from None

    def with_federation(
        self, *, choices: Mapping[str, Collection[str]] | None = None, **overrides: Any
    ) -> Topology:
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
        federation = dataclasses.replace(self.federation, **values)
        if federation.algorithm != self.federation.algorithm:
            # A new algorithm gets its own parameters' defaults, unless they are given too.
            defaults = {
                k: v
                for k, v in ALGORITHM_PARAMETERS.get(federation.algorithm, {}).items()
                if k not in overrides
            }
            dropped = {
                k: None
                for keys in ALGORITHM_PARAMETERS.values()
                for k in keys
                if k not in overrides and k not in defaults
            }
            federation = dataclasses.replace(federation, **dropped, **defaults)
        return self._checked(dataclasses.replace(self, federation=federation))

    def with_aggregation(
        self,
        *,
        edge: TierRule | None = None,
        cloud: TierRule | None = None,
        optimizer: ServerOptimizer | None = None,
    ) -> Topology:
        """A copy with some tiers' rules or the cloud optimizer replaced, checked like a loaded file.

        E.g. `with_aggregation(edge=TierRule("trimmed_mean", beta=0.2))`. Field values are
        checked with `RULE_FIELDS`/`OPTIMIZER_FIELDS` and the combination with the rest of
        the topology with `combination_problems`; TopologyError lists what is wrong.
        """
        problems: list[str] = []
        for path, value, fields in (
            ("aggregation.edge", edge, RULE_FIELDS),
            ("aggregation.cloud", cloud, RULE_FIELDS),
            ("aggregation.cloud", optimizer, OPTIMIZER_FIELDS),
        ):
            if value is not None:
                problems += field_problems(path, dataclasses.asdict(value), fields)
        if problems:
            raise TopologyError(problems, self.source)
        aggregation = Aggregation(
            edge=edge or self.aggregation.edge,
            cloud=cloud or self.aggregation.cloud,
            optimizer=optimizer or self.aggregation.optimizer,
        )
        return self._checked(dataclasses.replace(self, aggregation=aggregation))

    def _checked(self, topology: Topology) -> Topology:
        problems = combination_problems(topology)
        if problems:
            raise TopologyError(problems, self.source)
        return topology


def field_problems(path: str, values: Mapping[str, Any], fields: Mapping[str, Field]) -> list[str]:
    """`<path>.<key>: <why>` for each value that its `Field` rejects (keys without a Field ignored)."""
    problems = []
    for key, value in values.items():
        if key in fields:
            _, reason = fields[key].check(value)
            if reason is not None:
                problems.append(f"{path}.{key}: {reason}")
    return problems


def combination_problems(topology: Topology) -> list[str]:
    """What is meaningless about how the algorithm, the tier rules and the tree combine.

    Field values are already valid one by one; this checks them against each other and
    against the tree: a robust rule needs enough senders to be robust (median and trimmed
    mean at least 3, (multi-)Krum with f byzantine senders at least 2f + 3), multi-Krum
    cannot select more than the senders it trusts, SCAFFOLD's control variates are
    weighted means of a subtree and so need the mean rule at every tier, FedSGD takes
    exactly one full-batch step so lines cannot set their own `local_steps`.
    """
    problems: list[str] = [
        f'runtime.keys.devices."{device_id}": no device of that id in the topology'
        for device_id in topology.runtime.device_key_of
        if device_id not in topology._devices_by_id
    ]
    federation = topology.federation
    senders = [("aggregation.cloud", topology.aggregation.cloud, len(topology.plants), "plants")]
    for i, plant in enumerate(topology.plants):
        path = f"plants[{i}].aggregation" if plant.aggregation is not None else "aggregation.edge"
        senders.append(
            (path, topology.edge_rule(plant), plant.num_devices, f"devices in plant {plant.name!r}")
        )
    for path, rule, count, what in senders:
        problems += _rule_problems(path, rule, count, what)
        if rule.robust and federation.algorithm == "scaffold":
            problems.append(
                f"{path}.rule: {rule.rule!r} cannot be combined with algorithm 'scaffold' (its control variates "
                "are weighted means over each subtree, so every tier must use 'mean')"
            )
    for key in ("mu",):
        takers = [name for name, keys in ALGORITHM_PARAMETERS.items() if key in keys]
        if getattr(federation, key) is not None and federation.algorithm not in takers:
            problems.append(
                f"federation.{key}: algorithm {federation.algorithm!r} takes no {key} (only {', '.join(takers)} does)"
            )
        if getattr(federation, key) is None and federation.algorithm in takers:
            problems.append(
                f"federation.{key}: algorithm {federation.algorithm!r} needs {key} (a number)"
            )
    problems += _privacy_problems(topology)
    problems += _crypto_problems(topology)
    problems += _personalization_problems(topology)
    problems += _buffered_problems(topology)
    problems += _plant_publish_problems(topology)
    if federation.algorithm == "fedsgd":
        for i, plant in enumerate(topology.plants):
            for j, line in enumerate(plant.lines):
                if line.local_steps is not None:
                    problems.append(
                        f"plants[{i}].lines[{j}].local_steps: algorithm 'fedsgd' takes exactly one full-batch step "
                        "per edge round; use fedavg or fednova for per-line compute budgets"
                    )
    return list(dict.fromkeys(problems))


def _privacy_problems(topology: Topology) -> list[str]:
    """DP needs the plain mean (its sensitivity is one clipped update), no variates, and for
    noise at the cloud one edge round per cloud round (so the cloud sees sums of clipped updates)."""
    privacy = topology.privacy
    if not privacy.enabled:
        return []
    problems = []
    rules = [("aggregation.cloud", topology.aggregation.cloud)] + [
        (f"plants[{i}].aggregation" if p.aggregation else "aggregation.edge", topology.edge_rule(p))
        for i, p in enumerate(topology.plants)
    ]
    for path, rule in rules:
        if rule.rule != "mean" or rule.clip_norm is not None:
            what = f"rule {rule.rule!r}" if rule.rule != "mean" else "clip_norm"
            problems.append(
                f"{path}: {what} cannot be combined with privacy.dp = {privacy.dp!r} (DP clips with privacy.clip_norm and needs the mean)"
            )
    if topology.federation.algorithm == "scaffold":
        problems.append(
            f"privacy.dp: {privacy.dp!r} cannot be combined with algorithm 'scaffold' (its control variates are not privatized)"
        )
    if privacy.dp == "cloud" and topology.federation.edge_rounds != 1:
        problems.append(
            "privacy.dp: 'cloud' needs federation.edge_rounds = 1 (with more edge rounds the edge's summary is not a sum of "
            f"clipped device updates, so its sensitivity is unbounded), got {topology.federation.edge_rounds}; use 'edge'"
        )
    if privacy.clip_quantile is not None:
        if privacy.dp == "device":
            problems.append(
                "privacy.clip_quantile: adaptive clipping needs a trusted aggregator (dp = 'edge' or 'cloud'), not 'device'"
            )
        elif (
            privacy.noise_multiplier > 0
            and 2 * quantile_noise(privacy, topology) <= privacy.noise_multiplier
        ):
            problems.append(
                f"privacy.quantile_noise: must be > noise_multiplier / 2 = {privacy.noise_multiplier / 2:g} "
                f"for adaptive clipping (got {quantile_noise(privacy, topology):g})"
            )
    return problems


def _crypto_problems(topology: Topology) -> list[str]:
    """Secure aggregation leaves the edge only the sum of its devices' words, and CKKS leaves
    the cloud only ciphertexts it can add and scale by plaintext weights: whatever needs a
    single update (robust rules, per-update clipping, lossy codecs) or a nonlinear function
    of the aggregate (server optimizers with state) cannot run in that tier."""
    privacy = topology.privacy
    problems = []
    if privacy.secure_aggregation:
        for i, plant in enumerate(topology.plants):
            path = (
                f"plants[{i}].aggregation" if plant.aggregation is not None else "aggregation.edge"
            )
            rule = topology.edge_rule(plant)
            if rule.rule != "mean" or rule.clip_norm is not None:
                what = f"rule {rule.rule!r}" if rule.rule != "mean" else "clip_norm"
                problems.append(
                    f"{path}: {what} cannot be combined with privacy.secure_aggregation (the edge sees only the sum "
                    "of its devices' masked updates, never one update; use 'mean', and clip on the devices with [privacy] dp)"
                )
            t = secagg_threshold(privacy, plant.num_devices)
            if t < 2:
                problems.append(
                    f"privacy.secagg_threshold: plant {plant.name!r} has {plant.num_devices} device, so t = ceil("
                    f"{privacy.secagg_threshold:g} * {plant.num_devices}) = {t}; secure aggregation needs t >= 2 "
                    "(with one device the sum is the update)"
                )
        if privacy.clip_quantile is not None:
            problems.append(
                "privacy.clip_quantile: adaptive clipping cannot be combined with privacy.secure_aggregation (it counts "
                "which devices' updates were clipped, and the edge sees no single device's update)"
            )
        codec = topology.compression.device_to_edge.codec
        if codec != "none":
            problems.append(
                f"compression.device_to_edge.codec: {codec!r} cannot be combined with privacy.secure_aggregation "
                "(masked words are uniform 32-bit integers that a lossy codec would corrupt; the fixed-point "
                "encoding (secagg_clip) sets the precision instead)"
            )
    if privacy.homomorphic:
        cloud = topology.aggregation.cloud
        if cloud.rule != "mean" or cloud.clip_norm is not None:
            what = f"rule {cloud.rule!r}" if cloud.rule != "mean" else "clip_norm"
            problems.append(
                f"aggregation.cloud: {what} cannot be combined with privacy.homomorphic (the cloud only adds "
                "ciphertexts weighted by plaintext scalars; it cannot compare or measure summaries)"
            )
        optimizer = topology.aggregation.optimizer.optimizer
        if optimizer != "sgd":
            problems.append(
                f"aggregation.cloud.optimizer: {optimizer!r} cannot be combined with privacy.homomorphic (its state "
                "is a nonlinear function of the plaintext aggregate, which only the plants can decrypt; use 'sgd' "
                "with federation.server_learning_rate)"
            )
        codec = topology.compression.edge_to_cloud.codec
        if codec != "none":
            problems.append(
                f"compression.edge_to_cloud.codec: {codec!r} cannot be combined with privacy.homomorphic "
                "(a CKKS ciphertext cannot be quantized or sparsified)"
            )
        if privacy.dp == "cloud":
            problems.append(
                "privacy.dp: 'cloud' cannot be combined with privacy.homomorphic (the cloud adds ciphertexts and never "
                "holds the sum it would noise; use dp = 'edge', each plant noising its own summary, or 'device')"
            )
        if privacy.clip_quantile is not None:
            problems.append(
                "privacy.clip_quantile: adaptive clipping at the cloud needs each plant's count of clipped updates "
                "in the clear, which privacy.homomorphic withholds from the cloud"
            )
        degree, bits = privacy.he_poly_modulus_degree, sum(he_coeff_mod_bit_sizes(privacy))
        if degree not in HE_MAX_COEFF_BITS:
            problems.append(
                f"privacy.he_poly_modulus_degree: must be one of {', '.join(map(str, HE_MAX_COEFF_BITS))}, got {degree}"
            )
        elif bits > HE_MAX_COEFF_BITS[degree]:
            problems.append(
                f"privacy.he_scale_bits: {privacy.he_scale_bits} needs coefficient moduli {list(he_coeff_mod_bit_sizes(privacy))} "
                f"= {bits} bits, above the {HE_MAX_COEFF_BITS[degree]} bits degree {degree} allows at 128-bit security"
            )
    if (
        privacy.secure_aggregation or privacy.homomorphic
    ) and topology.federation.algorithm == "scaffold":
        which = "secure_aggregation" if privacy.secure_aggregation else "homomorphic"
        problems.append(
            f"privacy.{which}: cannot be combined with algorithm 'scaffold' (its control variates would cross the "
            "protected link in the clear; masking or encrypting them is not built)"
        )
    return problems


def _personalization_problems(topology: Topology) -> list[str]:
    """Per-plant layers against the rest of the file: a method needs layers (and "none" takes
    none), and the options whose guarantee or arithmetic covers one global model refuse them."""
    personal, privacy = topology.personalization, topology.privacy
    if not personal.enabled:
        if personal.layers or personal.rounds:
            field = "layers" if personal.layers else "rounds"
            return [
                f'personalization.{field}: method "none" makes no model per plant; '
                f'set method = "plant-layers" or "fine-tune", or remove {field}'
            ]
        return []
    problems = _method_problems(personal, topology.federation.cloud_rounds)
    method = f"personalization.method: {personal.method!r}"
    if privacy.dp != "none":
        problems.append(
            f"{method} cannot be combined with privacy.dp (the plants' own models are trained "
            "from updates that never reach the cloud and are released to the plant without the "
            "noise and accounting that cover the global model, so the run's epsilon would not "
            "describe the models it deploys)"
        )
    if privacy.secure_aggregation:
        problems.append(
            f"{method} cannot be combined with privacy.secure_aggregation yet (the masked rounds' "
            "edge path does not keep per-plant layers; not built in this increment)"
        )
    if privacy.homomorphic:
        problems.append(
            f"{method} cannot be combined with privacy.homomorphic (under CKKS each edge applies "
            "the decrypted aggregate to the global model it holds itself, a path that keeps no "
            "per-plant layers; not built in this increment)"
        )
    if topology.federation.algorithm == "scaffold":
        problems.append(
            f"{method} cannot be combined with algorithm 'scaffold' (its control variates pull "
            "every parameter towards the federation's average gradient, per-plant layers and "
            "fine-tuning rounds included)"
        )
    return problems


def _buffered_problems(topology: Topology) -> list[str]:
    """Buffered aggregation weights each summary by its own staleness and applies a few at a
    time: options whose arithmetic or guarantee assumes one synchronous round of every plant,
    or a cloud that reads each summary, refuse it."""
    buffered = topology.buffered
    if buffered is None:
        return []
    what, problems = "buffered_aggregation", []
    privacy, federation = topology.privacy, topology.federation
    if privacy.homomorphic:
        problems.append(
            f"{what}: cannot be combined with privacy.homomorphic (the cloud holds only ciphertexts "
            "of the plants' summaries, so it has no plaintext summary to weight by its staleness)"
        )
    if privacy.enabled:
        problems.append(
            f"{what}: cannot be combined with privacy.dp = {privacy.dp!r} (the accountant counts "
            "synchronous rounds in which every device takes part at most once; buffered rounds "
            "release a plant's updates at its own pace, which it does not account for)"
        )
    if federation.algorithm == "scaffold":
        problems.append(
            f"{what}: cannot be combined with algorithm 'scaffold' (the cloud's control variate "
            "moves by every device's change once per synchronous round; with summaries of "
            "different ages it would not be the federation's average gradient)"
        )
    if topology.personalization.enabled:
        problems.append(
            f"{what}: cannot be combined with personalization.method "
            f"{topology.personalization.method!r} yet (the buffered schedule keeps no "
            "per-plant model; not built yet)"
        )
    cloud = topology.aggregation.cloud
    if cloud.robust:
        problems.append(
            f"{what}: cannot be combined with aggregation.cloud.rule {cloud.rule!r} (the buffer "
            "keeps a running weighted sum of its summaries, not each one; use 'mean')"
        )
    missing = [i for i, p in enumerate(topology.plants) if p.seconds_per_step is None]
    if missing:
        problems.append(
            f"plants[{missing[0]}].seconds_per_step: buffered aggregation needs every plant's "
            "speed, from which the simulator's schedule (and order = 'declared') is made"
        )
    return problems


def _plant_publish_problems(topology: Topology) -> list[str]:
    """A plant's `publish` address serves the plant's own model, which only personalization
    gives an edge (without it the one global model is the cloud's to publish)."""
    if topology.personalization.enabled:
        return []
    return [
        f"plants[{i}].publish: the plant's edge publishes the plant's own model, which only "
        "[personalization] makes; without it every plant serves the global model: publish "
        "that from the cloud (hierfl launch/cloud --publish)"
        for i, plant in enumerate(topology.plants)
        if plant.publish is not None
    ]


def _method_problems(personal: Personalization, cloud_rounds: int) -> list[str]:
    """What each method needs: per-plant layers need layers and no rounds; fine-tuning needs
    rounds that leave at least one federated round."""
    if personal.keeps_layers:
        problems = []
        if not personal.layers:
            problems.append(
                'personalization.layers: method "plant-layers" needs the layers that stay per '
                'plant, e.g. layers = ["head"]'
            )
        if personal.rounds:
            problems.append(
                'personalization.rounds: method "plant-layers" keeps its layers every round; '
                'rounds is for method "fine-tune"'
            )
        return problems
    if not personal.rounds:
        return [
            'personalization.rounds: method "fine-tune" needs the rounds each plant trains alone '
            "at the end of cloud_rounds, e.g. rounds = 5"
        ]
    if personal.rounds >= cloud_rounds:
        return [
            f"personalization.rounds: {personal.rounds} fine-tuning rounds leave none of "
            f"federation.cloud_rounds = {cloud_rounds} to train the global model (at most "
            f"{cloud_rounds - 1})"
        ]
    return []


def quantile_noise(privacy: Privacy, topology: Topology) -> float:
    """The std of the noise on the count of clipped updates: as set, or expected devices per round / 20."""
    if privacy.quantile_noise is not None:
        return privacy.quantile_noise
    return privacy.sample_rate * topology.num_devices / 20


def _rule_problems(path: str, rule: TierRule, senders: int, what: str) -> list[str]:
    if rule.rule in ("median", "trimmed_mean") and senders < 3:
        return [
            f"{path}.rule: {rule.rule!r} over {senders} {what} is meaningless (needs at least 3)"
        ]
    if rule.rule in ("krum", "multi_krum"):
        needed = 2 * rule.byzantine + 3
        if senders < needed:
            return [
                f"{path}.byzantine: {rule.rule} tolerating {rule.byzantine} byzantine senders needs at least "
                f"2 * {rule.byzantine} + 3 = {needed}, but there are {senders} {what}"
            ]
        if (
            rule.rule == "multi_krum"
            and rule.select is not None
            and rule.select > senders - rule.byzantine
        ):
            return [
                f"{path}.select: multi_krum can average at most {senders} - {rule.byzantine} = "
                f"{senders - rule.byzantine} updates, got select = {rule.select} ({senders} {what})"
            ]
    return []
