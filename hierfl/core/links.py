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


def traffic(
    codecs: LinkCodecs,
    model_bytes: int,
    *,
    updates: int,
    summaries: int,
    models_sent: int,
    variates: bool = False,
) -> dict[str, int]:
    """Bytes of payload each tier sends for the messages of one cloud round.

    `updates` device updates go up (each answering a model its edge sent down),
    `summaries` edge summaries go up and `models_sent` global models go down. Uplinks carry
    their codec's `payload_bytes`, downlinks the float32 model; with control `variates`
    (SCAFFOLD) every one of these messages also carries a float32 variate (a change up, the
    cloud's `c` down). Both engines count with this: the simulator from the plan, the cloud
    from what its edges report.
    """
    variate = model_bytes if variates else 0
    return {
        "device_to_edge": updates * (codecs.device_to_edge.payload_bytes + variate),
        "edge_to_device": updates * (model_bytes + variate),
        "edge_to_cloud": summaries * (codecs.edge_to_cloud.payload_bytes + variate),
        "cloud_to_edge": models_sent * (model_bytes + variate),
    }


def tier_bytes(
    codecs: LinkCodecs,
    model_bytes: int,
    devices: int,
    edges: int,
    edge_rounds: int,
    *,
    variates: bool = False,
) -> dict[str, int]:
    """`traffic` of a cloud round in which every one of `devices` answers each of its
    `edge_rounds` and every one of `edges` sends its summary."""
    updates = devices * edge_rounds
    return traffic(
        codecs, model_bytes, updates=updates, summaries=edges, models_sent=edges, variates=variates
    )
