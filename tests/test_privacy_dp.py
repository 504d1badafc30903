"""Differential privacy: the accountant against dp-accounting itself, the noise scale, and DP training."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import dp_event, pld, rdp

from conftest import topology_text
from hierfl import simulate
from hierfl.privacy import (
    adapt_clip_norm,
    epsilon,
    privatize_sum,
    privatize_update,
    rounds_within_budget,
)
from hierfl.topology import Privacy, TopologyError, parse_topology

CENTRAL = Privacy(dp="edge", noise_multiplier=1.1, sample_rate=0.1, delta=1e-5)


def reference_epsilon(noise, rate, steps, delta, accountant=rdp.RdpAccountant):
    event = dp_event.GaussianDpEvent(noise)
    if rate < 1:
        event = dp_event.PoissonSampledDpEvent(rate, event)
    account = accountant()
    account.compose(dp_event.SelfComposedDpEvent(event, steps))
    return account.get_epsilon(delta)


def test_epsilon_is_dp_accountings_for_the_same_mechanism():
    # edge DP: edge_rounds releases per cloud round -> 3 x 20 = 60 sampled Gaussians.
    assert epsilon(CENTRAL, 3, 20) == pytest.approx(reference_epsilon(1.1, 0.1, 60, 1e-5), rel=1e-9)
    cloud = dataclasses.replace(CENTRAL, dp="cloud")
    assert epsilon(cloud, 1, 20) == pytest.approx(reference_epsilon(1.1, 0.1, 20, 1e-5), rel=1e-9)
    # local DP: replace-one (noise multiplier z / 2), no amplification by sampling.
    local = dataclasses.replace(CENTRAL, dp="device")
    assert epsilon(local, 2, 10) == pytest.approx(reference_epsilon(0.55, 1.0, 20, 1e-5), rel=1e-9)
    pld_privacy = dataclasses.replace(CENTRAL, accountant="pld")
    assert epsilon(pld_privacy, 1, 10) == pytest.approx(
        reference_epsilon(1.1, 0.1, 10, 1e-5, pld.PLDAccountant), rel=1e-6
    )


def test_epsilon_moves_the_right_way():
    base = epsilon(CENTRAL, 1, 50)
    assert epsilon(dataclasses.replace(CENTRAL, noise_multiplier=2.0), 1, 50) < base
    assert epsilon(dataclasses.replace(CENTRAL, sample_rate=0.3), 1, 50) > base
    assert epsilon(CENTRAL, 1, 100) > base
    assert epsilon(CENTRAL, 2, 50) > base
    assert epsilon(dataclasses.replace(CENTRAL, delta=1e-3), 1, 50) < base
    assert epsilon(CENTRAL, 1, 0) == 0.0
    assert epsilon(dataclasses.replace(CENTRAL, noise_multiplier=0.0), 1, 1) == math.inf


def test_rounds_within_budget_stops_just_before_the_target():
    target = epsilon(CENTRAL, 1, 40)
    privacy = dataclasses.replace(CENTRAL, target_epsilon=target)
    assert rounds_within_budget(privacy, 1, 1000) == 40
    assert rounds_within_budget(privacy, 1, 25) == 25
    assert rounds_within_budget(dataclasses.replace(privacy, target_epsilon=1e-6), 1, 10) == 0


def test_noise_has_the_configured_scale_and_clipping_bounds_the_update():
    size = 200_000
    update, norm = privatize_update(jnp.full((size,), 0.01), jax.random.key(1), 0.5, 0.0)
    assert float(norm) == pytest.approx(0.01 * math.sqrt(size), rel=1e-5)
    assert float(jnp.linalg.norm(update)) == pytest.approx(0.5, rel=1e-5)
    noised, _ = privatize_update(jnp.zeros(size), jax.random.key(2), 0.5, 0.7)
    assert float(jnp.std(noised)) == pytest.approx(0.7, rel=0.01)
    assert abs(float(jnp.mean(noised))) < 0.01
    total = privatize_sum(jnp.ones(size), jax.random.key(3), 2.0)
    assert float(jnp.std(total - 1.0)) == pytest.approx(2.0, rel=0.01)


def test_adaptive_clip_moves_towards_the_quantile():
    # All updates above the clip (fraction 0) -> grow by exp(0.2 * 0.5); all below -> shrink.
    assert float(
        adapt_clip_norm(jnp.float32(1.0), jnp.float32(0.0), 10.0, 0.5, 0.2)
    ) == pytest.approx(math.exp(0.1))
    assert float(
        adapt_clip_norm(jnp.float32(1.0), jnp.float32(10.0), 10.0, 0.5, 0.2)
    ) == pytest.approx(math.exp(-0.1))


def dp_topology(privacy: str, edge_rounds: int = 2, cloud_rounds: int = 3, **kwargs):
    text = topology_text(
        plants=[[4, 3], [5]],
        edge_rounds=edge_rounds,
        cloud_rounds=cloud_rounds,
        samples_per_device=20,
        **kwargs,
    )
    return parse_topology(text.replace("[cloud]", f"[privacy]\n{privacy}\n[cloud]"), "dp.toml")


def leaves(params):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def test_noiseless_unclipped_central_dp_is_fedavg_with_equal_devices():
    # Every device holds 20 examples, so one vote per device is FedAvg's example weighting.
    plain = simulate(dp_topology("")).params
    for place, edge_rounds in (("edge", 2), ("cloud", 1)):
        dp = simulate(
            dp_topology(
                f'dp = "{place}"\nnoise_multiplier = 0.0\nclip_norm = 1e6', edge_rounds=edge_rounds
            )
        ).params
        reference = plain if edge_rounds == 2 else simulate(dp_topology("", edge_rounds=1)).params
        for a, b in zip(leaves(dp), leaves(reference)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dp_training_is_noisy_deterministic_and_reports_epsilon():
    settings = 'dp = "edge"\nnoise_multiplier = 0.5\nclip_norm = 1.0'
    first, second = simulate(dp_topology(settings)), simulate(dp_topology(settings))
    for a, b in zip(leaves(first.params), leaves(second.params)):
        np.testing.assert_array_equal(a, b)
    noiseless = simulate(dp_topology('dp = "edge"\nnoise_multiplier = 0.0\nclip_norm = 1.0')).params
    assert any(not np.allclose(a, b) for a, b in zip(leaves(first.params), leaves(noiseless)))
    privacy = dp_topology(settings).privacy
    assert [r["epsilon"] for r in first.history] == [epsilon(privacy, 2, r) for r in (1, 2, 3)]
    assert first.history[-1]["delta"] == 1e-5


def test_os_noise_is_secret_so_runs_differ():
    settings = 'dp = "edge"\nnoise_multiplier = 0.5\nclip_norm = 1.0\nnoise_source = "os"'
    first, second = (
        simulate(dp_topology(settings, cloud_rounds=1)),
        simulate(dp_topology(settings, cloud_rounds=1)),
    )
    assert any(not np.allclose(a, b) for a, b in zip(leaves(first.params), leaves(second.params)))
    assert first.history[-1]["epsilon"] == second.history[-1]["epsilon"]


def test_target_epsilon_stops_training():
    privacy = Privacy(dp="edge", noise_multiplier=1.0)
    target = (epsilon(privacy, 2, 2) + epsilon(privacy, 2, 3)) / 2
    result = simulate(
        dp_topology(
            f'dp = "edge"\nnoise_multiplier = 1.0\ntarget_epsilon = {target}', cloud_rounds=6
        )
    )
    assert len(result.history) == 2 and result.history[-1]["epsilon"] <= target


def test_adaptive_clipping_grows_a_clip_that_is_too_small():
    settings = 'dp = "edge"\nnoise_multiplier = 0.5\nclip_norm = 0.001\nclip_quantile = 0.5\nquantile_noise = 0.5'
    history = simulate(dp_topology(settings, cloud_rounds=4)).history
    clips = [r["clip_norm"] for r in history]
    assert clips[0] > 0.001 and clips == sorted(clips)


@pytest.mark.parametrize(
    ("privacy", "extra", "expected"),
    [
        (
            'dp = "edge"',
            '[aggregation.edge]\nrule = "median"',
            "aggregation.edge: rule 'median' cannot be combined with privacy.dp = 'edge'",
        ),
        ('dp = "cloud"', "", "privacy.dp: 'cloud' needs federation.edge_rounds = 1"),
        (
            'dp = "device"\nclip_quantile = 0.5',
            "",
            "privacy.clip_quantile: adaptive clipping needs a trusted aggregator",
        ),
        (
            'dp = "edge"\nclip_quantile = 0.5\nquantile_noise = 0.4',
            "",
            "privacy.quantile_noise: must be > noise_multiplier / 2 = 0.5",
        ),
        ('dp = "plant"', "", "privacy.dp: unknown value 'plant'"),
        ('dp = "edge"\nsample_rate = 0', "", "privacy.sample_rate: must be in (0, 1], got 0.0"),
    ],
)
def test_meaningless_privacy_settings_are_rejected(privacy, extra, expected):
    text = topology_text(plants=[[4], [4], [4]], edge_rounds=2)
    text = text.replace("[cloud]", f"[privacy]\n{privacy}\n{extra}\n[cloud]")
    with pytest.raises(TopologyError) as error:
        parse_topology(text, "dp.toml")
    assert any(p.startswith(expected) for p in error.value.problems), error.value.problems
