"""What the dashboard shows of a run directory, read from its files only.

`RunReader.read()` takes `run.json`, the new lines of `metrics.jsonl` and the live status
files (`hierfl.runs.live`) as they are now; a missing or half-written one becomes a
problem to show, never an error. `run_view(files, now)` turns them into the page's state
(pure): the round in progress and its deadline, each node of the tree (cloud, plants,
lines, devices) with its state and why, rejected messages, privacy and model versions.
A `simulate` run has no live status: its tree comes from `run.json` and its rounds from
`metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hierfl.dashboard.follow import MetricsFollower, finite
from hierfl.runs.live import STATUS_DIR, read_status
from hierfl.runs.metrics import METRICS_FILE, RUN_INFO_FILE

ANSWERED, WAITING, LATE, REFUSED = "answered", "waiting", "late", "refused"
OUT, SILENT, ALIVE, OFFLINE = "out", "not answering", "alive", "offline"
UNKNOWN, STOPPED, DONE, SIMULATED = "unknown", "stopped", "done", "simulated"

REFUSAL_SHOWN = 30.0
"""Seconds a refused message marks its sender as refused."""

STATUS_MARGIN = 3.0
"""Seconds past the heartbeat timeout a running node's status may be late before it counts as gone."""


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """A run directory's files as read now: problems to show, and what could be read."""

    run_dir: str
    problems: tuple[str, ...]
    info: dict[str, Any] | None
    points: list[dict[str, Any]]
    last: dict[str, Any] | None
    cloud: dict[str, Any] | None
    edges: dict[str, dict[str, Any]]
    servers: dict[str, dict[str, Any]]


class RunReader:
    """Reads `run_dir` on each `read()`, following `metrics.jsonl` incrementally."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.metrics = MetricsFollower(self.run_dir / METRICS_FILE)

    def read(self) -> RunFiles:
        problems: list[str] = []
        info = self._info(problems)
        self.metrics.read()
        problems += self.metrics.skipped[-3:]
        if info is not None and not (self.run_dir / METRICS_FILE).exists():
            problems.append("no finished round yet (metrics.jsonl is written after each round)")
        statuses = {}
        for path in sorted((self.run_dir / STATUS_DIR).glob("*.json")):
            status = read_status(path)
            if status is not None and isinstance(status.get("written"), int | float):
                statuses[path.stem] = status
        return RunFiles(
            str(self.run_dir),
            tuple(problems),
            info,
            self.metrics.points,
            self.metrics.last,
            statuses.get("cloud"),
            {k[len("edge-") :]: v for k, v in statuses.items() if k.startswith("edge-")},
            {k[len("serve-") :]: v for k, v in statuses.items() if k.startswith("serve-")},
        )

    def _info(self, problems: list[str]) -> dict[str, Any] | None:
        if not self.run_dir.is_dir():
            problems.append(f"{self.run_dir} does not exist (yet); waiting for the run to start")
            return None
        try:
            info = json.loads((self.run_dir / RUN_INFO_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            problems.append(f"{self.run_dir} has no run.json (yet): is it a hierfl run directory?")
            return None
        except (OSError, ValueError) as error:
            problems.append(f"run.json cannot be read ({error}); waiting for a complete one")
            return None
        if not isinstance(info, dict):
            problems.append("run.json is not a JSON object")
            return None
        return info


def _age(status: dict[str, Any], now: float) -> float:
    """Seconds since `status` was written; 0 for a node that stopped (its last word holds)."""
    return max(0.0, now - status["written"]) if status.get("running", True) else 0.0


def _gone(status: dict[str, Any], now: float) -> float | None:
    """How long a running node's status is overdue (its writer is gone), or None."""
    age = _age(status, now)
    return age if age > status.get("heartbeat_timeout", 10.0) + STATUS_MARGIN else None


def _silence(silent_for: float | None, status: dict[str, Any], now: float) -> float | None:
    return None if silent_for is None else silent_for + _age(status, now)


def _refusal(status: dict[str, Any], sender: str, now: float) -> dict[str, Any] | None:
    """The last message from `sender` that `status`'s node refused in the last REFUSAL_SHOWN s."""
    for refusal in reversed(status.get("refusals", [])):
        if refusal.get("sender") == sender and now - refusal.get("at", 0) <= REFUSAL_SHOWN:
            return refusal
    return None


def _in_round(entry: dict[str, Any], collecting: bool, where: str) -> tuple[str, str]:
    """A live peer's part in the round: answered, waiting for it, late, or none asked."""
    if not entry.get("expected"):
        return ALIVE, "connected; not asked in this round"
    if entry.get("answered"):
        return ANSWERED, f"answered {where}"
    if collecting:
        return WAITING, f"training: not answered {where} yet"
    return LATE, f"did not answer {where} before the deadline"


def device_state(
    device: str, edge: dict[str, Any] | None, out: dict[str, str], now: float
) -> tuple[str, str]:
    """Device `device`'s state and why, from its edge's status (None: no live status)."""
    if device in out:
        return OUT, f"stays out: {out[device]}"
    if edge is None:
        return UNKNOWN, "no live status from its edge"
    gone = _gone(edge, now)
    if gone is not None:
        return UNKNOWN, f"its edge has written no status for {gone:.0f} s"
    timeout = edge.get("heartbeat_timeout", 10.0)
    entry = edge.get("devices", {}).get(device, {})
    silence = _silence(entry.get("silent_for"), edge, now)
    if silence is None:
        return SILENT, "never heard from"
    if silence > timeout:
        return SILENT, f"silent for {silence:.0f} s (heartbeat timeout {timeout:g} s)"
    refusal = _refusal(edge, device, now)
    if refusal is not None:
        return REFUSED, f"{refusal['reason']}: {refusal['detail']}"
    where = f"edge round {edge.get('round')}.{edge.get('edge_round')}"
    return _in_round(entry, edge.get("phase") == "collecting", where)


def plant_state(
    plant: str, cloud: dict[str, Any] | None, edge: dict[str, Any] | None, now: float
) -> tuple[str, str]:
    """Plant `plant`'s edge: its state and why, from its own status and the cloud's."""
    if edge is not None:
        gone = _gone(edge, now)
        if gone is not None:
            return SILENT, f"its status is {gone:.0f} s old: the edge process is gone"
        if not edge.get("running", True):
            return STOPPED, "the edge stopped"
        if edge.get("offline"):
            return OFFLINE, "the cloud is silent: training offline edge rounds"
    if cloud is None or _gone(cloud, now) is not None:
        return (UNKNOWN, "no live status") if edge is None else (ALIVE, "running")
    entry = cloud.get("edges", {}).get(plant, {})
    silence = _silence(entry.get("silent_for"), cloud, now)
    timeout = cloud.get("heartbeat_timeout", 10.0)
    if silence is None or silence > timeout:
        heard = "never heard from" if silence is None else f"silent for {silence:.0f} s"
        return SILENT, f"the cloud: {heard} (heartbeat timeout {timeout:g} s)"
    refusal = _refusal(cloud, plant, now)
    if refusal is not None:
        return REFUSED, f"{refusal['reason']}: {refusal['detail']}"
    return _in_round(entry, cloud.get("phase") == "collecting", f"cloud round {cloud.get('round')}")


def cloud_state(cloud: dict[str, Any] | None, now: float) -> tuple[str, str]:
    if cloud is None:
        return UNKNOWN, "no live status (a simulate run, or a run from before live status)"
    gone = _gone(cloud, now)
    if gone is not None:
        return SILENT, f"its status is {gone:.0f} s old: the cloud process is gone"
    if cloud.get("phase") == "done":
        return DONE, "trained every round"
    if not cloud.get("running", True):
        return STOPPED, "stopped before the last round"
    return ALIVE, cloud.get("phase", "")


def _device(
    plant: str,
    line: str,
    name: str,
    edge: dict[str, Any] | None,
    out: dict[str, str] | None,
    now: float,
) -> dict[str, str]:
    """A device of the tree; `out` None in a simulate run (no live status, every device trains)."""
    if out is None:
        return {"name": name, "state": SIMULATED, "reason": "trained by `hierfl simulate`"}
    state, reason = device_state(f"{plant}/{line}/{name}", edge, out, now)
    return {"name": name, "state": state, "reason": reason}


def tree_view(files: RunFiles, now: float) -> dict[str, Any]:
    """cloud -> plants -> lines -> devices, each with `state` and `reason`."""
    info, last, cloud = files.info or {}, files.last or {}, files.cloud
    tree = info.get("tree") or {p: {} for p in (last.get("devices_expected") or {})}
    recorded_out = last.get("devices_out") or {}
    simulated = files.info is not None and "runtime" not in info
    plants = []
    for plant, lines in tree.items():
        edge = files.edges.get(plant)
        out = None if simulated else (edge or {}).get("out") or recorded_out.get(plant, {})
        state, reason = (
            (SIMULATED, "simulated in one process")
            if simulated
            else plant_state(plant, cloud, edge, now)
        )
        plants.append(
            {
                "name": plant,
                "state": state,
                "reason": reason,
                "resumed": bool((edge or {}).get("resumed")),
                "lines": [
                    {
                        "name": line,
                        "devices": [_device(plant, line, d, edge, out, now) for d in devices],
                    }
                    for line, devices in lines.items()
                ],
            }
        )
    state, reason = (
        (SIMULATED, "simulated in one process") if simulated else cloud_state(cloud, now)
    )
    resumed = bool((cloud or {}).get("resumed"))
    return {"cloud": {"state": state, "reason": reason, "resumed": resumed}, "plants": plants}


def round_view(files: RunFiles, now: float) -> dict[str, Any]:
    """The round in progress, its deadline (s from now), the rounds finished and planned."""
    info, cloud = files.info or {}, files.cloud
    finished = files.points[-1]["round"] if files.points else 0
    total = (cloud or {}).get("rounds") or info.get("cloud_rounds") or 0
    view = {"finished": finished, "total": total, "current": None, "deadline_in": None}
    if cloud is not None and cloud.get("running", True) and _gone(cloud, now) is None:
        view["phase"] = cloud.get("phase")
        if cloud.get("phase") == "collecting":
            view["current"] = cloud.get("round")
            deadline = finite(cloud.get("deadline_in"))
            view["deadline_in"] = None if deadline is None else deadline - _age(cloud, now)
    return view


def run_state(files: RunFiles, tree: dict[str, Any], rounds: dict[str, Any]) -> str:
    """One word for the header: waiting, starting, training, finished, stopped, cloud gone."""
    if files.info is None:
        return "waiting for the run"
    cloud = tree["cloud"]["state"]
    if cloud == DONE or (rounds["total"] and rounds["finished"] >= rounds["total"]):
        return "finished"
    if cloud == SILENT:
        return "cloud not answering"
    if cloud == STOPPED:
        return "stopped"
    if files.cloud is not None and files.cloud.get("phase") == "starting":
        return "starting"
    return "training"


def rejected_view(files: RunFiles) -> list[dict[str, Any]]:
    """Rejected messages by node and reason: a node's live count, else the last record's."""
    counts = dict((files.last or {}).get("rejected_messages") or {})
    if files.cloud is not None:
        counts["cloud"] = files.cloud.get("rejected", {})
    for plant, edge in files.edges.items():
        counts[plant] = edge.get("rejected", {})
    return [
        {"node": node, "reason": reason, "count": count}
        for node, reasons in sorted(counts.items())
        for reason, count in sorted(reasons.items())
        if count
    ]


def refusals_view(files: RunFiles, keep: int = 20) -> list[dict[str, Any]]:
    """The latest refused messages of the cloud and the edges, newest first."""
    nodes = {"cloud": files.cloud, **files.edges}
    refusals = [
        {**refusal, "node": node}
        for node, status in nodes.items()
        if status is not None
        for refusal in status.get("refusals", [])
    ]
    return sorted(refusals, key=lambda r: r.get("at", 0), reverse=True)[:keep]


def privacy_view(files: RunFiles) -> dict[str, Any] | None:
    """Epsilon spent (the last round's) against the target, under DP; None without DP."""
    privacy = (files.info or {}).get("privacy") or {}
    if privacy.get("dp") in (None, "none"):
        return None
    return {
        "dp": privacy["dp"],
        "epsilon": finite((files.last or {}).get("epsilon")),
        "target": finite(privacy.get("target_epsilon")),
        "delta": finite(privacy.get("delta")),
    }


def models_view(files: RunFiles, now: float) -> dict[str, Any]:
    """Versions the cloud published (one per recorded round) and those servers serve."""
    publish = (files.cloud or {}).get("publish")
    metric = ((files.info or {}).get("metric") or {}).get("name", "accuracy")
    published = [
        {"version": p["round"], "score": p["global"].get(metric)}
        for p in (files.points[-5:] if publish else [])
    ]
    servers = [
        {
            "name": name,
            "version": status.get("version"),
            "versions": status.get("versions", []),
            "state": SILENT if _gone(status, now) is not None else ALIVE,
        }
        for name, status in sorted(files.servers.items())
    ]
    return {"publish": publish, "published": published[::-1], "servers": servers}


def run_view(files: RunFiles, now: float) -> dict[str, Any]:
    """The page's state (without the chart points, which `points` pages through)."""
    info = files.info or {}
    tree, rounds = tree_view(files, now), round_view(files, now)
    last = files.last or {}
    return {
        "run_dir": files.run_dir,
        "problems": list(files.problems),
        "run": {
            key: info.get(key)
            for key in ("name", "task", "model", "algorithm", "started", "num_devices")
        }
        | {"metric": (info.get("metric") or {}).get("name", "accuracy")},
        "engine": "runtime" if files.cloud is not None or "runtime" in info else "simulate",
        "state": run_state(files, tree, rounds),
        "round": rounds,
        "tree": tree,
        "answered": {
            "devices": last.get("devices_answered"),
            "expected": last.get("devices_expected"),
            "edges": last.get("edges_answered"),
            "late": last.get("late_updates"),
        },
        "rejected": rejected_view(files),
        "refusals": refusals_view(files),
        "privacy": privacy_view(files),
        "models": models_view(files, now),
        "points": len(files.points),
    }
