"""`/metrics`: the dashboard's figures as Prometheus series, read from the run directory per scrape.

Every series is a gauge of the run as it is now (the last finished round's figures, the
live status's node states), except ``hierfl_bytes_total``, traffic summed over the rounds.
Labels name the plant, the tier or link, the node and the reason, so a plant's Grafana
selects its own (``{plant="plant-a"}``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hierfl.dashboard.view import RunFiles


def _gauge(name: str, doc: str, labels: tuple[str, ...], rows) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        if value is not None:
            family.add_metric(list(values), float(value))
    return family


def round_families(files: RunFiles, view: dict[str, Any]) -> Iterator[Metric]:
    """The rounds, the scores and the traffic."""
    rounds, last = view["round"], files.points[-1] if files.points else None
    run = view["run"]
    info = ("name", "task", "algorithm", "engine", "state")
    values = [str(run.get(k) or "") for k in info[:3]] + [view["engine"], view["state"]]
    yield _gauge("hierfl_run_info", "The run followed (always 1).", info, [(values, 1)])
    yield _gauge("hierfl_rounds_finished", "Cloud rounds recorded.", (), [((), rounds["finished"])])
    yield _gauge("hierfl_rounds_planned", "Cloud rounds to run.", (), [((), rounds["total"])])
    yield _gauge(
        "hierfl_round_in_progress", "The cloud round collecting now.", (), [((), rounds["current"])]
    )
    yield _gauge(
        "hierfl_round_deadline_seconds",
        "Seconds until the round in progress closes.",
        (),
        [((), rounds["deadline_in"])],
    )
    if last is None:
        return
    yield _gauge(
        "hierfl_score",
        "The last round's global scores and losses, by metric.",
        ("metric",),
        [((name,), v) for name, v in last["global"].items()],
    )
    yield _gauge(
        "hierfl_plant_score",
        "The last round's scores per plant, by metric.",
        ("metric", "plant"),
        [
            ((name, plant), v)
            for name, plants in last["plants"].items()
            for plant, v in plants.items()
        ],
    )
    yield _gauge(
        "hierfl_round_bytes",
        "Bytes sent in the last round, by tier and direction.",
        ("tier",),
        [((tier,), n) for tier, n in last["bytes"].items()],
    )
    totals: collections.Counter[str] = collections.Counter()
    for point in files.points:
        totals.update({tier: n or 0 for tier, n in point["bytes"].items()})
    family = CounterMetricFamily(
        "hierfl_bytes", "Bytes sent over the rounds recorded, by tier.", labels=("tier",)
    )
    for tier, n in totals.items():
        family.add_metric([tier], n)
    yield family


def node_families(files: RunFiles, view: dict[str, Any]) -> Iterator[Metric]:
    """Devices answering, node states, rejected messages, privacy and model versions."""
    answered = view["answered"]
    yield _gauge(
        "hierfl_devices_answered",
        "Devices whose update counted in the last round (fewest over its edge rounds), per plant.",
        ("plant",),
        [((p,), min(n) if n else 0) for p, n in (answered["devices"] or {}).items()],
    )
    yield _gauge(
        "hierfl_devices_expected",
        "The plant's devices.",
        ("plant",),
        [((p,), n) for p, n in (answered["expected"] or {}).items()],
    )
    states: collections.Counter[tuple[str, str, str]] = collections.Counter()
    states[("cloud", "", view["tree"]["cloud"]["state"])] += 1
    for plant in view["tree"]["plants"]:
        states[("edge", plant["name"], plant["state"])] += 1
        for line in plant["lines"]:
            states.update(("device", plant["name"], d["state"]) for d in line["devices"])
    yield _gauge(
        "hierfl_nodes",
        "Nodes by tier, plant and state (answered, waiting, late, refused, not answering...).",
        ("tier", "plant", "state"),
        list(states.items()),
    )
    yield _gauge(
        "hierfl_rejected_messages",
        "Messages a node refused since it started, by reason.",
        ("node", "reason"),
        [((r["node"], r["reason"]), r["count"]) for r in view["rejected"]],
    )
    privacy = view["privacy"] or {}
    yield _gauge("hierfl_epsilon", "Privacy budget spent.", (), [((), privacy.get("epsilon"))])
    yield _gauge(
        "hierfl_epsilon_target", "Privacy budget allowed.", (), [((), privacy.get("target"))]
    )
    models = view["models"]
    newest = models["published"][0]["version"] if models["published"] else None
    yield _gauge("hierfl_model_version_published", "Newest model published.", (), [((), newest)])
    yield _gauge(
        "hierfl_model_version_served",
        "The model version each inference server serves.",
        ("server",),
        [((s["name"],), s["version"]) for s in models["servers"]],
    )


class RunCollector(Collector):
    """Yields the run's series; `snapshot()` gives the run's files and view as they are now."""

    def __init__(self, snapshot: Callable[[], tuple[RunFiles, dict[str, Any]]]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        files, view = self.snapshot()
        yield from round_families(files, view)
        yield from node_families(files, view)
