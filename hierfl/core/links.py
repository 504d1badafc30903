"""What the upward links carry: each link's codec, the simulated wire, and bytes per round.

The topology's `[compression.<link>]` tables pick a codec per upward link (device -> edge,
edge -> cloud); downlinks carry the float32 model. A sender encodes its update's *delta*
(not delta x weight: the weight travels as a number in the message header, and an
error-feedback residual stays in the units of the delta whatever the weight is), the
receiver decodes it and weights it. `transmit` is that exchange as one pure function,
which the simulator calls where the runtime will send and receive real frames.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hierfl.core.algorithms import LocalResult
from hierfl.kernels import Codec, make_codec, roundtrip
from hierfl.topology import Compression, LinkCompression


class LinkCodecs(NamedTuple):
    """The codec of each upward link, built for the model's flat size."""

    device_to_edge: Codec
    edge_to_cloud: Codec


def build_codec(link: LinkCompression, size: int) -> Codec:
    """The codec a `[compression.<link>]` table asks for, for updates of `size` parameters."""
    return make_codec(link.codec, size, block_size=link.block_size, fraction=link.fraction)


def build_link_codecs(compression: Compression, size: int) -> LinkCodecs:
    """Both upward links' codecs for a model of `size` parameters."""
    return LinkCodecs(
        build_codec(compression.device_to_edge, size), build_codec(compression.edge_to_cloud, size)
    )


def transmit(
    codec: Codec, result: LocalResult, residual: jax.Array, key: jax.Array
) -> tuple[LocalResult, jax.Array]:
    """`result` (flat delta `[P]`) as the receiver decodes it, and the sender's next residual.

    A result of weight 0 (a rejected or padding update) is sent as is and leaves the
    residual untouched: it counts for nothing, and its error must not enter the memory.
    vmap it over a stack of senders.
    """
    if codec.name == "none":
        return result, residual
    decoded, new_residual = roundtrip(codec, result.delta, residual, key)
    sent = result.weight > 0
    return result._replace(delta=decoded), jnp.where(sent, new_residual, residual)


def initial_residuals(codec: Codec, leading: tuple[int, ...]) -> jax.Array:
    """Zero error-feedback memory for senders laid out as `leading`: `[*leading, residual_size]`."""
    return jnp.zeros((*leading, codec.residual_size), jnp.float32)


def tier_bytes(
    codecs: LinkCodecs,
    model_bytes: int,
    devices: int,
    edges: int,
    edge_rounds: int,
    *,
    variates: bool = False,
) -> dict[str, int]:
    """Bytes of update payload each tier sends in one cloud round.

    Uplinks send one encoded update per device per edge round and one per edge per cloud
    round (`payload_bytes` of the link's codec); downlinks send the float32 model. With
    control `variates` (SCAFFOLD), every uplink message also carries a float32 variate
    change, and the cloud's variate goes down once per cloud round to every edge and device.
    """
    variate = model_bytes if variates else 0
    return {
        "device_to_edge": devices * edge_rounds * (codecs.device_to_edge.payload_bytes + variate),
        "edge_to_device": devices * (edge_rounds * model_bytes + variate),
        "edge_to_cloud": edges * (codecs.edge_to_cloud.payload_bytes + variate),
        "cloud_to_edge": edges * (model_bytes + variate),
    }
