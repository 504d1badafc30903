"""Per-link compression: the `[compression]` tables, the simulated wire, bytes, and training end to end."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hierfl
from conftest import topology_text
from hierfl import kernels
from hierfl.core import links
from hierfl.core.algorithms import LocalResult
from hierfl.topology import CODECS, Compression, LinkCompression, TopologyError, parse_topology


def with_compression(tables: str) -> str:
    return topology_text(plants=[[2]]) + "\n" + tables


def problems_of(tables: str) -> tuple[str, ...]:
    with pytest.raises(TopologyError) as caught:
        parse_topology(with_compression(tables), "c.toml")
    return caught.value.problems


def test_no_compression_table_means_float32_on_every_link():
    topology = parse_topology(topology_text(plants=[[2]]))
    assert topology.compression == Compression(LinkCompression("none"), LinkCompression("none"))


def test_each_link_takes_its_own_codec_and_parameters():
    topology = parse_topology(
        with_compression("""
[compression.device_to_edge]
codec = "int8"
block_size = 64
[compression.edge_to_cloud]
codec = "topk"
fraction = 0.05
""")
    )
    assert topology.compression.device_to_edge == LinkCompression("int8", block_size=64)
    assert topology.compression.edge_to_cloud.codec == "topk"
    assert topology.compression.edge_to_cloud.fraction == 0.05


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            '[compression.device_to_edge]\ncodec = "zip"',
            "compression.device_to_edge.codec: unknown value 'zip'",
        ),
        (
            '[compression.device_to_edge]\ncodec = "float16"\nfraction = 0.1',
            "compression.device_to_edge.fraction: codec 'float16' takes no fraction (only topk does)",
        ),
        (
            '[compression.edge_to_cloud]\ncodec = "topk"\nblock_size = 8',
            "compression.edge_to_cloud.block_size: codec 'topk' takes no block_size (only int8 does)",
        ),
        (
            '[compression.edge_to_cloud]\ncodec = "topk"\nfraction = 0.0',
            "compression.edge_to_cloud.fraction: must be in (0, 1]",
        ),
        (
            '[compression.edge_to_cloud]\ncodec = "topk"\nfraction = 1.5',
            "compression.edge_to_cloud.fraction: must be in (0, 1]",
        ),
        (
            '[compression.device_to_edge]\ncodec = "int8"\nblock_size = 0',
            "compression.device_to_edge.block_size: must be in [1, 1048576]",
        ),
        (
            '[compression.edge_to_device]\ncodec = "int8"',
            "compression.edge_to_device: unknown key (allowed: device_to_edge, edge_to_cloud)",
        ),
        (
            '[compression.device_to_edge]\ncodex = "int8"',
            "compression.device_to_edge.codex: unknown key",
        ),
        (
            '[compression]\ndevice_to_edge = "int8"',
            "compression.device_to_edge: expected a table, got str",
        ),
    ],
)
def test_bad_compression_tables_are_named_precisely(tables, expected):
    problems = problems_of(tables)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


def test_the_file_format_and_the_kernels_offer_the_same_codecs():
    assert tuple(CODECS) == tuple(kernels.CODECS)


def test_tier_bytes_counts_each_codecs_real_payload():
    size = 1000  # int8 with blocks of 256: 1000 int8 values + 4 float32 scales
    codecs = links.LinkCodecs(
        kernels.make_codec("int8", size, block_size=256),
        kernels.make_codec("topk", size, fraction=0.02),
    )
    out = links.tier_bytes(codecs, model_bytes=4000, devices=10, edges=2, edge_rounds=3)
    assert out == {
        "device_to_edge": 10 * 3 * (1000 + 16),
        "edge_to_device": 10 * 3 * 4000,
        "edge_to_cloud": 2 * 20 * 8,  # 20 (value, index) pairs
        "cloud_to_edge": 2 * 4000,
    }


def test_transmit_keeps_the_residual_of_an_update_that_counts_for_nothing():
    codec = kernels.make_codec("topk", 4, fraction=0.25)
    residual = jnp.array([0.0, 0.5, 0.0, 0.0])
    rejected = LocalResult(jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.float32(0.0), jnp.float32(0.0))
    _, after = links.transmit(codec, rejected, residual, jax.random.key(0))
    np.testing.assert_array_equal(after, residual)
    sent, after = links.transmit(
        codec, rejected._replace(weight=jnp.float32(2.0)), residual, jax.random.key(0)
    )
    np.testing.assert_array_equal(sent.delta, [0.0, 0.0, 0.0, 4.0])
    np.testing.assert_array_equal(after, [1.0, 2.5, 3.0, 0.0])


@pytest.fixture(scope="module")
def demo():
    return hierfl.load_topology("demo")


def run(topology, device_to_edge: LinkCompression, edge_to_cloud: LinkCompression):
    return hierfl.simulate(
        dataclasses.replace(topology, compression=Compression(device_to_edge, edge_to_cloud))
    )


@pytest.fixture(scope="module")
def uncompressed(demo):
    return run(demo, LinkCompression("none"), LinkCompression("none"))


def test_int8_on_both_links_keeps_digits_accuracy_within_one_point(demo, uncompressed):
    int8 = run(demo, LinkCompression("int8"), LinkCompression("int8"))
    plain, packed = uncompressed.history[-1], int8.history[-1]
    assert plain["accuracy"] >= 0.9
    assert abs(packed["accuracy"] - plain["accuracy"]) <= 0.01
    # The global model did change: the int8 wire is really in the loop.
    diffs = [
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(uncompressed.params), jax.tree.leaves(int8.params))
    ]
    assert max(diffs) > 0
    size = sum(leaf.size for leaf in jax.tree.leaves(int8.params))
    blocks = math.ceil(size / 256)
    assert packed["bytes"]["device_to_edge"] * (4 * size) == plain["bytes"]["device_to_edge"] * (
        size + 4 * blocks
    )
    assert plain["bytes"]["edge_to_cloud"] / packed["bytes"]["edge_to_cloud"] > 3.9


def test_topk_with_error_feedback_still_trains_and_sends_a_tenth(demo, uncompressed):
    topk = run(demo, LinkCompression("topk", fraction=0.1), LinkCompression("none"))
    assert topk.history[-1]["accuracy"] >= uncompressed.history[-1]["accuracy"] - 0.03
    ratio = (
        uncompressed.history[-1]["bytes"]["device_to_edge"]
        / topk.history[-1]["bytes"]["device_to_edge"]
    )
    assert 4.9 < ratio < 5.1  # a tenth of the values, each with a 4-byte index


def test_compressed_runs_are_deterministic_in_the_seed(demo):
    topology = demo.with_federation(cloud_rounds=2)
    a = run(topology, LinkCompression("int8", block_size=32), LinkCompression("topk", fraction=0.2))
    b = run(topology, LinkCompression("int8", block_size=32), LinkCompression("topk", fraction=0.2))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
