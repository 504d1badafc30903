"""The dashboard without a browser: the run directory read as it grows or breaks, node states
from live status, the token, and `/metrics` parsed by prometheus_client's own parser.

The app runs for real in-process (Starlette's TestClient); the run directories are real
files written by the same writers the nodes use.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from hierfl.dashboard.app import create_app, dashboard_token, parse_bind
from hierfl.dashboard.follow import MetricsFollower
from hierfl.dashboard.view import device_state
from hierfl.errors import HierflError
from hierfl.runs.live import LiveStatus, read_status, status_path
from hierfl.runs.metrics import BYTE_TIERS, MetricsWriter, write_run_info
from hierfl.runs.records import federation_tree

INFO = {
    "name": "unit",
    "task": "digits",
    "cloud_rounds": 5,
    "metric": {"name": "accuracy"},
    "privacy": {"dp": "device", "target_epsilon": 8.0, "delta": 1e-5},
    "runtime": {},
    "tree": {"plant-a": {"line-1": ["dev-001", "dev-002"]}, "plant-b": {"line-1": ["dev-001"]}},
}


def record(round: int, accuracy: float) -> dict:
    return {
        "round": round,
        "loss": 1.0 / round,
        "test_loss": float("nan"),
        "accuracy": accuracy,
        "plant_accuracy": {"plant-a": accuracy, "plant-b": None},
        "bytes": {tier: 100 * round for tier in BYTE_TIERS},
        "round_seconds": 0.5,
        "elapsed_seconds": round * 0.5,
        "devices": 3,
        "devices_answered": {"plant-a": [2], "plant-b": [1]},
        "devices_expected": {"plant-a": 2, "plant-b": 1},
        "rejected_messages": {"cloud": {}, "plant-a": {"malformed": 2}},
        "epsilon": 1.5 * round,
    }


def edge_status(now: float, **device) -> dict:
    entry = {"silent_for": 0.5, "expected": True, "answered": True, **device}
    return {
        "node": "edge-plant-a",
        "running": True,
        "phase": "collecting",
        "round": 3,
        "edge_round": 0,
        "heartbeat_timeout": 2.0,
        "devices": {"plant-a/line-1/dev-001": entry},
        "out": {},
        "rejected": {"malformed": 1},
        "refusals": [],
        "written": now,
    }


def state(client: TestClient, since: int = 0) -> dict:
    reply = client.get(f"/api/state?since={since}")
    assert reply.status_code == 200
    return reply.json()


def test_a_missing_then_half_written_run_directory_is_reported_and_served(tmp_path):
    run_dir = tmp_path / "run"
    client = TestClient(create_app(run_dir))
    assert "does not exist" in state(client)["view"]["problems"][0]
    assert client.get("/").status_code == 200  # the page itself is served all along

    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"name": "unit", "task"')  # cut short
    assert "cannot be read" in state(client)["view"]["problems"][0]

    write_run_info(run_dir, INFO)
    with MetricsWriter(run_dir) as writer:
        writer.write(record(1, 0.5))
    with open(run_dir / "metrics.jsonl", "a") as file:
        file.write('{"round": 2, "loss"')  # a line still being written
    body = state(client)
    assert body["view"]["problems"] == [] and body["view"]["state"] == "training"
    assert [p["round"] for p in body["points"]] == [1]
    assert body["points"][0]["global"]["test_loss"] is None  # NaN: no JSON for it


def test_state_pages_through_the_points_and_starts_over_when_the_file_is_rewritten(tmp_path):
    write_run_info(tmp_path, INFO)
    with MetricsWriter(tmp_path) as writer:
        for r in (1, 2, 3):
            writer.write(record(r, 0.1 * r))
    client = TestClient(create_app(tmp_path))
    assert [p["round"] for p in state(client, since=2)["points"]] == [3]
    # A resumed cloud rewrites metrics.jsonl (a new file renamed over the old one).
    tmp = tmp_path / "metrics.jsonl.tmp"
    tmp.write_text(json.dumps(record(1, 0.1)) + "\n")
    os.replace(tmp, tmp_path / "metrics.jsonl")
    body = state(client, since=3)
    assert body["since"] == 0 and [p["round"] for p in body["points"]] == [1]


def test_the_follower_skips_a_line_that_is_not_a_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(record(1, 0.5)) + "\n\x00\x01 not json\n")
    follower = MetricsFollower(path)
    follower.read()
    assert [p["round"] for p in follower.points] == [1]
    assert follower.skipped == ["metrics.jsonl:2: not a round record; skipped"]


@pytest.mark.parametrize(
    "device, out, expected",
    [
        ({}, {}, "answered"),
        ({"answered": False}, {}, "waiting"),
        ({"silent_for": 2.5}, {}, "not answering"),
        ({"silent_for": None}, {}, "never heard"),
        ({}, {"plant-a/line-1/dev-001": "no data"}, "stays out: no data"),
    ],
)
def test_a_device_state_says_why(device, out, expected):
    now = time.time()
    state_, reason = device_state("plant-a/line-1/dev-001", edge_status(now, **device), out, now)
    assert expected in (state_, reason) or expected in reason


def test_a_device_goes_silent_as_its_edges_status_ages_and_refusals_name_their_reason():
    now = time.time()
    edge = edge_status(now - 1.8)  # heard 0.5 s before a status written 1.8 s ago: 2.3 s > 2 s
    assert device_state("plant-a/line-1/dev-001", edge, {}, now)[0] == "not answering"
    edge = edge_status(now)
    edge["refusals"] = [
        {"sender": "plant-a/line-1/dev-001", "reason": "stale-round", "detail": "late", "at": now}
    ]
    assert device_state("plant-a/line-1/dev-001", edge, {}, now) == (
        "refused",
        "stale-round: late",
    )
    edge["written"] = now - 30  # the edge itself is gone: its devices' state is unknown
    assert device_state("plant-a/line-1/dev-001", edge, {}, now)[0] == "unknown"


def test_metrics_parse_with_prometheus_clients_parser(tmp_path):
    write_run_info(tmp_path, INFO)
    with MetricsWriter(tmp_path) as writer:
        writer.write(record(1, 0.5))
        writer.write(record(2, 0.75))
    now = time.time()
    live = LiveStatus(status_path(tmp_path / "status", "edge-plant-a"), lambda: edge_status(now))
    live.write()
    text = TestClient(create_app(tmp_path)).get("/metrics").text
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    value = lambda name, **labels: next(  # noqa: E731
        s.value for s in families[name] if all(s.labels.get(k) == v for k, v in labels.items())
    )
    assert value("hierfl_rounds_finished") == 2
    assert value("hierfl_plant_score", metric="accuracy", plant="plant-a") == 0.75
    assert value("hierfl_bytes", tier="edge_to_cloud") == 300
    assert value("hierfl_devices_answered", plant="plant-a") == 2
    assert value("hierfl_rejected_messages", node="plant-a", reason="malformed") == 1  # live
    assert value("hierfl_epsilon") == 3.0 and value("hierfl_epsilon_target") == 8.0
    assert value("hierfl_nodes", tier="device", plant="plant-a", state="answered") == 1
    assert value("hierfl_nodes", tier="device", plant="plant-a", state="not answering") == 1


def test_a_token_guards_every_route_and_opening_its_url_sets_the_cookie(tmp_path):
    client = TestClient(create_app(tmp_path, token="s3cret"), follow_redirects=False)
    for path in ("/", "/dashboard.js", "/api/state", "/metrics"):
        assert client.get(path).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/?token=wrong").status_code == 401
    opened = client.get("/?token=s3cret")
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    assert client.get("/api/state").status_code == 200  # the cookie now
    assert client.get("/etc/passwd").status_code == 404  # fixed routes only


def test_any_address_but_loopback_gets_a_token():
    assert dashboard_token("127.0.0.1", None) is None
    assert dashboard_token("::1", None) is None
    assert len(dashboard_token("0.0.0.0", None)) >= 24
    assert dashboard_token("10.0.0.5", "mine") == "mine"
    assert parse_bind("0.0.0.0:9000", 8470) == ("0.0.0.0", 9000)
    assert parse_bind("[::1]:9000", 8470) == ("::1", 9000)
    assert parse_bind("localhost", 8470) == ("localhost", 8470)
    with pytest.raises(HierflError, match="HOST:PORT"):
        parse_bind("host:port", 8470)


def test_a_status_is_replaced_whole_and_names_every_device(tmp_path, make_topology):
    path = status_path(tmp_path, "cloud")
    live = LiveStatus(path, lambda: {"round": 1})
    live.update()
    live.describe = lambda: {"round": 2}
    live.update()  # within a second of the last write: nothing written
    assert read_status(path)["round"] == 1
    live.write()
    assert read_status(path)["round"] == 2 and list(tmp_path.iterdir()) == [path]
    tree = federation_tree(make_topology(plants=[[2, 1], [1]]))
    assert tree == {
        "plant-0": {"line-0": ["dev-001", "dev-002"], "line-1": ["dev-001"]},
        "plant-1": {"line-0": ["dev-001"]},
    }
