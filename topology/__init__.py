"""The topology model of a hierarchical federation: cloud -> plants -> lines -> devices.

A TOML file (or a bundled preset: `demo`, `bearing`, `large`) declares the hierarchy, the
addresses, the data assignment and the training plan. `load_topology` checks all of it at
once and returns a frozen `Topology`, or raises one `TopologyError` naming every problem.
This package depends on nothing else of hierfl.
"""

from .load import load_topology, parse_topology, preset_names, preset_path
from .schema import (
    CODECS,
    DEVICE_PATH_KEYS,
    LINKS,
    OPTIMIZERS,
    RULES,
    Aggregation,
    Attack,
    BufferedAggregation,
    Cloud,
    Compression,
    DataSpec,
    Device,
    Federation,
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
    fill_template,
    template_problem,
)

__all__ = [
    "CODECS",
    "DEVICE_PATH_KEYS",
    "LINKS",
    "OPTIMIZERS",
    "RULES",
    "Aggregation",
    "Attack",
    "BufferedAggregation",
    "Cloud",
    "Compression",
    "DataSpec",
    "Device",
    "Federation",
    "Line",
    "LinkCompression",
    "Personalization",
    "Plant",
    "Privacy",
    "Runtime",
    "ServerOptimizer",
    "TierRule",
    "Topology",
    "TopologyError",
    "fill_template",
    "load_topology",
    "parse_topology",
    "preset_names",
    "preset_path",
    "template_problem",
]
