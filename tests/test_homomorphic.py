"""Homomorphic encryption of edge summaries: CKKS aggregate vs plaintext, key separation, topology options."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import tenseal as ts

from conftest import topology_text
from hierfl.errors import HomomorphicError
from hierfl.privacy import homomorphic as he
from hierfl.topology import TopologyError, parse_topology

SIZE = 5_000  # two ciphertexts of 4096 slots: exercises the chunking


@pytest.fixture(scope="module")
def keys():
    secret = he.generate_keys()
    return he.load_context(secret), he.load_context(he.public_context(secret))


def wire(message):
    return msgpack.unpackb(msgpack.packb(message), raw=False)


def summaries(scale, count=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, scale, SIZE).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize(("scale", "tolerance"), [(0.01, 1e-7), (1.0, 5e-6)])
def test_decrypted_aggregate_is_the_plaintext_weighted_aggregate(keys, scale, tolerance):
    plant, cloud = keys
    values = summaries(scale)
    weights = np.array([30.0, 10.0, 20.0, 50.0])
    messages = [wire(he.encrypt_summary(plant, v, w, round=2)) for v, w in zip(values, weights)]
    assert [m["weight"] for m in messages] == list(weights) and len(messages[0]["chunks"]) == 2
    share = [m["weight"] / sum(m["weight"] for m in messages) for m in messages]
    aggregate = wire(he.weighted_sum(cloud, messages, share))
    decrypted = he.decrypt_aggregate(plant, aggregate)
    reference = np.sum([s * v.astype(np.float64) for s, v in zip(share, values)], axis=0)
    assert decrypted.shape == (SIZE,) and decrypted.dtype == np.float32
    np.testing.assert_allclose(decrypted, reference, rtol=0, atol=tolerance)


def test_the_cloud_context_cannot_decrypt(keys):
    plant, cloud = keys
    assert plant.has_secret_key() and not cloud.has_secret_key() and cloud.is_public()
    message = he.encrypt_summary(plant, summaries(0.1, count=1)[0], 1.0, round=0)
    aggregate = he.weighted_sum(cloud, [message], [1.0])
    with pytest.raises(HomomorphicError, match="secret context"):
        he.decrypt_aggregate(cloud, aggregate)
    vector = ts.ckks_vector_from(cloud, aggregate["chunks"][0])
    with pytest.raises(
        ValueError, match="secret_key"
    ):  # TenSEAL itself has nothing to decrypt with
        vector.decrypt()


def test_the_cloud_refuses_a_context_with_the_secret_key(keys):
    plant, _ = keys
    message = he.encrypt_summary(plant, np.zeros(10), 1.0, round=0)
    with pytest.raises(HomomorphicError, match="holds the secret key"):
        he.weighted_sum(plant, [message], [1.0])


def test_what_reaches_the_cloud_holds_no_plaintext(keys):
    plant, cloud = keys
    summary = np.arange(1, SIZE + 1, dtype=np.float32) / SIZE
    message = he.encrypt_summary(plant, summary, 1.0, round=0)
    frame = msgpack.packb(message)
    assert (
        summary.tobytes()[:64] not in frame
        and summary.astype(np.float64).tobytes()[:64] not in frame
    )
    assert set(message) == {"kind", "round", "size", "weight", "chunks"}
    assert len(frame) > 8 * summary.nbytes  # ciphertexts, ~14x the float32 bytes


def test_mismatched_or_foreign_ciphertexts_are_refused(keys):
    plant, cloud = keys
    small = he.encrypt_summary(plant, np.zeros(10), 1.0, round=0)
    large = he.encrypt_summary(plant, np.zeros(SIZE), 1.0, round=0)
    with pytest.raises(HomomorphicError, match="differ in size"):
        he.weighted_sum(cloud, [small, large], [0.5, 0.5])
    with pytest.raises(HomomorphicError, match="one weight per summary"):
        he.weighted_sum(cloud, [small], [0.5, 0.5])
    with pytest.raises(HomomorphicError, match="not a CKKS ciphertext"):
        he.weighted_sum(cloud, [{**small, "chunks": [b"garbage"]}], [1.0])
    with pytest.raises(HomomorphicError, match="not a serialized CKKS context"):
        he.load_context(b"garbage")


def test_parameters_follow_the_topology():
    params = he.CkksParameters(8192, 40)
    assert params.coeff_mod_bit_sizes == (60, 40, 60) and params.slots == 4096
    assert he.chunk_count(SIZE, params) == 2


def he_topology(privacy, extra="", **kwargs):
    text = topology_text(plants=[[3], [3]], **kwargs)
    return parse_topology(
        text.replace("[cloud]", f"[privacy]\n{privacy}\n{extra}\n[cloud]"), "he.toml"
    )


def test_homomorphic_fields_load():
    privacy = he_topology(
        "homomorphic = true\nhe_poly_modulus_degree = 16384\nhe_scale_bits = 30"
    ).privacy
    assert privacy.homomorphic and he.CkksParameters.of(privacy) == he.CkksParameters(16384, 30)


@pytest.mark.parametrize(
    ("privacy", "extra", "expected"),
    [
        (
            "homomorphic = true",
            '[aggregation.cloud]\nrule = "krum"\nbyzantine = 0',
            "aggregation.cloud: rule 'krum' cannot be combined with privacy.homomorphic",
        ),
        (
            "homomorphic = true",
            '[aggregation.cloud]\noptimizer = "adam"',
            "aggregation.cloud.optimizer: 'adam' cannot be combined with privacy.homomorphic",
        ),
        (
            "homomorphic = true",
            '[compression.edge_to_cloud]\ncodec = "float16"',
            "compression.edge_to_cloud.codec: 'float16' cannot be combined",
        ),
        (
            "homomorphic = true\nhe_poly_modulus_degree = 4096",
            "",
            "privacy.he_scale_bits: 40 needs coefficient moduli [60, 40, 60] = 160 bits, above the 109",
        ),
        (
            "homomorphic = true\nhe_poly_modulus_degree = 6000",
            "",
            "privacy.he_poly_modulus_degree: must be one of 4096, 8192, 16384, 32768",
        ),
        (
            'homomorphic = true\ndp = "cloud"\nclip_quantile = 0.5\nquantile_noise = 1.0',
            "",
            "privacy.clip_quantile: adaptive clipping at the cloud",
        ),
    ],
)
def test_meaningless_homomorphic_settings_are_rejected(privacy, extra, expected):
    with pytest.raises(TopologyError) as error:
        he_topology(privacy, extra)
    assert any(p.startswith(expected) for p in error.value.problems), error.value.problems


def test_homomorphic_accepts_the_small_ring_with_a_small_scale():
    privacy = he_topology(
        "homomorphic = true\nhe_poly_modulus_degree = 4096\nhe_scale_bits = 23"
    ).privacy
    assert sum(he.CkksParameters.of(privacy).coeff_mod_bit_sizes) == 109


def test_without_tenseal_the_error_names_the_extra():
    import subprocess
    import sys

    code = "import sys; sys.modules['tenseal'] = None\nimport hierfl.privacy.homomorphic"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert (
        'HomomorphicError: CKKS summaries need TenSEAL: pip install "hierfl[he]"' in result.stderr
    )
