"""The cloud's pure decisions: resuming metrics, stale-summary weights, when a server stops waiting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hierfl.core.steps import aligned_zeros
from hierfl.runs.records import reconcile_metrics
from hierfl.runtime.checkpoints import CloudCheckpoints
from hierfl.runtime.cloud_summaries import staleness_discount
from hierfl.runtime.node import start_waiting_over


def test_resume_keeps_each_checkpointed_round_exactly_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"round": r, "accuracy": r / 10}) for r in (1, 2, 3, 4)]
    path.write_text(
        "\n".join(lines) + "\n" + '{"round": 5, "accur'
    )  # round 5 was being written when the cloud died
    reconcile_metrics(path, 3, {"round": 3, "accuracy": 0.33})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"round": 1, "accuracy": 0.1},
        {"round": 2, "accuracy": 0.2},
        {"round": 3, "accuracy": 0.33},
    ]
    # A crash between the checkpoint and the metrics line: the checkpoint's record fills the gap.
    reconcile_metrics(path, 4, {"round": 4, "accuracy": 0.4})
    assert [json.loads(line)["round"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_stale_summaries_count_less_the_older_their_model():
    assert staleness_discount(0) == 1.0
    assert staleness_discount(1) == 0.5
    assert staleness_discount(3) == 0.25


def test_servers_wait_for_everyone_unless_resumed_with_enough_back():
    wait = dict(start_timeout=100.0, grace=5.0)
    assert start_waiting_over(4, 4, 2, 0.0, resumed=False, **wait)
    assert not start_waiting_over(3, 4, 2, 50.0, resumed=False, **wait)
    assert start_waiting_over(0, 4, 2, 100.0, resumed=False, **wait)
    assert not start_waiting_over(3, 4, 2, 1.0, resumed=True, **wait)
    assert start_waiting_over(3, 4, 2, 6.0, resumed=True, **wait)
    assert not start_waiting_over(1, 4, 2, 6.0, resumed=True, **wait)


@pytest.mark.parametrize("size", [0, 4], ids=["no-variate", "scaffold-variate"])
def test_cloud_checkpoints_restore_params_server_state_variate_and_record(tmp_path, size):
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}
    server_state = (np.float32(0.5), {"momentum": np.ones(3, np.float32)})
    variate = np.zeros(size, np.float32)
    checkpoints = CloudCheckpoints(tmp_path / "ck")
    assert checkpoints.latest(params, server_state, variate) is None
    for r in (1, 2, 3):
        checkpoints.save(
            r, {k: v + r for k, v in params.items()}, server_state, {"round": r}, variate - r
        )
    checkpoints.close()
    state = CloudCheckpoints(tmp_path / "ck").latest(params, server_state, variate)
    assert state.round == 3 and state.record == {"round": 3}
    np.testing.assert_array_equal(state.params["w"], params["w"] + 3)
    np.testing.assert_array_equal(state.server_state[1]["momentum"], np.ones(3))
    np.testing.assert_array_equal(state.variate, variate - 3)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["2", "3"]


def test_aligned_stacks():
    stack = aligned_zeros((3, 1001))
    assert (
        stack.ctypes.data % 64 == 0
        and stack.shape == (3, 1001)
        and stack.dtype == np.float32
        and not stack.any()
    )
