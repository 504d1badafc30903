"""Accuracy against epsilon: differential privacy at the device (local) versus at the edge (central).

    python benchmarks/dp_utility.py                 # digits and bearing-fault, about 10 minutes on 2 CPU cores
    python benchmarks/dp_utility.py --quick         # digits only, fewer rounds (about 1 minute)
    python benchmarks/dp_utility.py --out docs      # also write docs/dp-utility.{md,json,png}

For each task, one federation of many small devices (user-level DP needs many users):
digits with 4 plants x 5 lines x 10 devices (about 7 examples each), bearing-fault with
4 plants x 5 lines x 10 devices of 24 generated windows. Each is trained without DP and
with DP at the device and at the edge for target epsilons {1, 4, 8} at delta = 1e-5: the
noise multiplier is calibrated (bisection on `hierfl.privacy.epsilon`) so the whole run
spends exactly the target. Edge DP samples devices (Poisson, rate 0.25) and counts the
amplification; device DP gets none (the edge sees who sent), so it needs far more noise
for the same epsilon. One edge round per cloud round, clip norm 1, same seed everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from hierfl import simulate
from hierfl.privacy import epsilon
from hierfl.topology import Privacy, parse_topology

TARGETS = (1.0, 4.0, 8.0)
PLACES = ("device", "edge")
SAMPLE_RATE = {"device": 1.0, "edge": 0.25}


@dataclasses.dataclass(frozen=True)
class Setting:
    task: str
    model: str
    rounds: int
    local_steps: int
    batch_size: int
    learning_rate: float
    samples_per_device: int | None


SETTINGS = {
    "digits": Setting("digits", "mlp", 40, 5, 8, 0.1, None),
    "bearing-fault": Setting("bearing-fault", "cnn1d", 40, 10, 12, 0.1, 24),
}


def topology_text(setting: Setting, rounds: int, privacy: str) -> str:
    samples = (
        f"samples_per_device = {setting.samples_per_device}\n" if setting.samples_per_device else ""
    )
    text = f"""
[federation]
name = "dp-utility"
task = "{setting.task}"
model = "{setting.model}"
cloud_rounds = {rounds}
edge_rounds = 1
local_steps = {setting.local_steps}
batch_size = {setting.batch_size}
learning_rate = {setting.learning_rate}
seed = 0

[data]
partition = "iid"
{samples}
{privacy}

[cloud]
address = "tcp://127.0.0.1:5550"
"""
    for p in range(4):
        text += f'\n[[plants]]\nname = "plant-{p}"\naddress = "tcp://127.0.0.1:{5560 + p}"\n'
        for line in range(5):
            text += f'[[plants.lines]]\nname = "line-{line}"\ndevices = 10\n'
    return text


def calibrate(place: str, target: float, rounds: int) -> float:
    """The noise multiplier whose run of `rounds` cloud rounds spends exactly `target` epsilon."""
    low, high = 0.05, 200.0
    for _ in range(60):
        middle = (low * high) ** 0.5
        spent = epsilon(
            Privacy(dp=place, noise_multiplier=middle, sample_rate=SAMPLE_RATE[place]), 1, rounds
        )
        low, high = (middle, high) if spent > target else (low, middle)
    return high


def privacy_table(place: str, noise: float) -> str:
    return f'[privacy]\ndp = "{place}"\nclip_norm = 1.0\nnoise_multiplier = {noise:.6f}\nsample_rate = {SAMPLE_RATE[place]}\n'


def run(task: str, rounds: int) -> list[dict]:
    setting = SETTINGS[task]
    rows = []
    cases = [("none", None, "")] + [
        (place, target, privacy_table(place, calibrate(place, target, rounds)))
        for place in PLACES
        for target in TARGETS
    ]
    for place, target, privacy in cases:
        started = time.perf_counter()
        history = simulate(
            parse_topology(topology_text(setting, rounds, privacy), f"dp-utility-{task}")
        ).history
        last = history[-1]
        noise = float(privacy.split("noise_multiplier = ")[1].split("\n")[0]) if privacy else 0.0
        row = {
            "task": task,
            "dp": place,
            "target_epsilon": target,
            "epsilon": last.get("epsilon"),
            "noise_multiplier": noise,
            "accuracy": last["accuracy"],
            "best_accuracy": max(r["accuracy"] for r in history),
            "rounds": len(history),
            "seconds": time.perf_counter() - started,
        }
        rows.append(row)
        spent = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        print(
            f"{task:14s} dp={place:6s} target={target or '-'!s:5s} eps={spent:6s} z={noise:8.3f} acc={row['accuracy']:.4f}",
            flush=True,
        )
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# Accuracy against epsilon: DP at the device vs at the edge",
        "",
        f"Made by `{command}` (`benchmarks/dp_utility.py`; settings in its docstring).",
        "epsilon at delta = 1e-5 for one device's whole data, spent over the whole run.",
        "",
        "| task | DP | target epsilon | noise multiplier | final accuracy | best accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "no DP" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
        lines.append(
            f"| {r['task']} | {r['dp']} | {target} | {r['noise_multiplier']:.3f} | {r['accuracy']:.3f} | {r['best_accuracy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        clean = next(r["accuracy"] for r in rows if r["task"] == task and r["dp"] == "none")
        axis.axhline(clean, color="gray", linestyle="--", label="no DP")
        for place in PLACES:
            points = [
                (r["target_epsilon"], r["accuracy"])
                for r in rows
                if r["task"] == task and r["dp"] == place
            ]
            axis.plot(*zip(*points), marker="o", label=f"DP at the {place}")
        axis.set(
            title=task,
            xlabel="epsilon (delta = 1e-5)",
            ylabel="test accuracy",
            xscale="log",
            ylim=(0, 1),
        )
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, 15 rounds")
    parser.add_argument("--out", type=Path, help="directory for dp-utility.md/.json/.png")
    args = parser.parse_args(argv)
    rows = run("digits", 15 if args.quick else SETTINGS["digits"].rounds)
    if not args.quick:
        rows += run("bearing-fault", SETTINGS["bearing-fault"].rounds)
    command = (
        "python benchmarks/dp_utility.py"
        + (" --quick" if args.quick else "")
        + (f" --out {args.out}" if args.out else "")
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "dp-utility.md").write_text(markdown(rows, command))
        (args.out / "dp-utility.json").write_text(json.dumps(rows, indent=1))
        plot(rows, args.out / "dp-utility.png")
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
