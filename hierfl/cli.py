"""The `hierfl` command line: simulate, inspect topologies, and report on runs.

A thin shell: it parses arguments, calls the library, and prints with rich. Every user
error (bad topology, missing run directory, data the task cannot supply) ends with a
clear message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from hierfl import __version__
from hierfl.errors import HierflError, TopologyError

EPILOG = """\
examples:
  hierfl simulate demo                     train the bundled demo federation (digits, 24 devices)
  hierfl simulate my_plants.toml --rounds 5 --out runs/try1
  hierfl topology show bearing             print a topology as a tree
  hierfl topology validate my_plants.toml  check a file; every problem is listed
  hierfl report runs/try1                  plots (PNG) and a markdown summary of a run
"""


def main(argv: Sequence[str] | None = None) -> int:
    from hierfl.parallel import request_cpu_devices

    request_cpu_devices()  # before JAX starts: the simulator shards devices over all cores
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        return args.handler(args)
    except (TopologyError, HierflError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hierfl",
        description="Hierarchical (cloud-edge-device) federated learning for industrial AI.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hierfl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser("simulate", help="train a federation in one process (vectorized simulator)")
    sim.add_argument("topology", help="topology file (TOML) or preset name (demo, bearing, large)")
    sim.add_argument("--rounds", type=_positive_int, help="cloud rounds to run (default: the file's cloud_rounds)")
    sim.add_argument("--seed", type=_non_negative_int, help="override federation.seed")
    sim.add_argument("--out", type=Path, help="run directory (default: runs/<name>-<time>)")
    sim.add_argument("--chunk-size", type=_positive_int, default=512, help="devices trained at once (bounds memory; default 512)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(handler=run_simulate)

    topo = commands.add_parser("topology", help="inspect and check topology files")
    topo_commands = topo.add_subparsers(dest="topology_command", required=True, metavar="ACTION")
    show = topo_commands.add_parser("show", help="print the plants, lines, devices, data and addresses as a tree")
    show.add_argument("topology", help="topology file (TOML) or preset name")
    show.add_argument("--devices", action="store_true", help="list every device with its number of examples")
    show.set_defaults(handler=run_topology_show)
    validate = topo_commands.add_parser("validate", help="check a topology file; exit 2 listing every problem")
    validate.add_argument("topology", help="topology file (TOML) or preset name")
    validate.set_defaults(handler=run_topology_validate)
    presets = topo_commands.add_parser("presets", help="list the bundled presets")
    presets.set_defaults(handler=run_topology_presets)

    report = commands.add_parser("report", help="write PNG plots and a markdown summary of a run directory")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(handler=run_report)
    return parser


def run_simulate(args: argparse.Namespace) -> int:
    from hierfl.loading import load_topology
    from hierfl.simulator import simulate

    topology = load_topology(args.topology)
    if args.seed is not None:
        topology = topology.with_federation(seed=args.seed)
    out = args.out or Path("runs") / f"{topology.federation.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console()
    console.print(
        f"[bold]{topology.federation.name}[/]: task {topology.federation.task}, "
        f"{len(topology.plants)} plants, {topology.num_devices} devices -> {out}"
    )
    result = simulate(topology, rounds=args.rounds, out=out, chunk_size=args.chunk_size, progress=not args.quiet)
    console.print(summary_table(result.history, topology.plant_names))
    console.print(f"run directory: {out}   (plots: hierfl report {out})")
    return 0


def summary_table(history: list[dict], plant_names: Sequence[str]) -> Table:
    """The end-of-run table: final and best accuracy, per-plant accuracy, bytes per tier, time."""
    last = history[-1]
    best = max(history, key=lambda r: r["accuracy"])
    table = Table(title="simulation summary", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("cloud rounds", str(last["round"]))
    table.add_row("final test accuracy", f"{last['accuracy']:.4f}")
    table.add_row("best test accuracy", f"{best['accuracy']:.4f} (round {best['round']})")
    table.add_row("final train / test loss", f"{last['loss']:.4f} / {last['test_loss']:.4f}")
    for plant in plant_names:
        table.add_row(f"  accuracy {plant}", f"{last['plant_accuracy'][plant]:.4f}")
    for tier in ("device_to_edge", "edge_to_cloud", "cloud_to_edge"):
        total = sum(r["bytes"][tier] for r in history)
        table.add_row(f"bytes {tier.replace('_to_', ' -> ').replace('_', ' ')}", f"{total / 1e6:,.2f} MB")
    table.add_row("rejected updates (non-finite)", str(sum(r.get("rejected_updates", 0) for r in history)))
    table.add_row("wall time", f"{last['elapsed_seconds']:.1f} s")
    return table


def run_topology_show(args: argparse.Namespace) -> int:
    from hierfl.loading import load_topology
    from hierfl.plan import make_plan

    topology = load_topology(args.topology)
    Console().print(topology_tree(topology, make_plan(topology).shards.counts, list_devices=args.devices))
    return 0


def topology_tree(topology, counts, *, list_devices: bool = False) -> Tree:
    """A rich tree: cloud, plants (edge address, shift), lines (devices, partition, examples per device)."""
    f = topology.federation
    root = Tree(
        f"[bold]{f.name}[/]  task={f.task} model={f.model or 'default'} algorithm={f.algorithm}  "
        f"cloud_rounds={f.cloud_rounds} edge_rounds={f.edge_rounds} local_steps={f.local_steps} "
        f"batch_size={f.batch_size} lr={f.learning_rate} seed={f.seed}"
    )
    cloud = root.add(f"[bold cyan]cloud[/]  {topology.cloud.address}")
    for plant in topology.plants:
        plant_counts = [int(counts[d.index]) for d in plant.devices]
        node = cloud.add(
            f"[bold green]{plant.name}[/]  edge {plant.address}  shift={plant.shift:g}  "
            f"{plant.num_devices} devices, {sum(plant_counts)} examples"
        )
        for line in plant.lines:
            line_counts = [int(counts[d.index]) for d in line.devices]
            line_node = node.add(
                f"[yellow]{line.name}[/]  {len(line.devices)} devices  partition={_describe_partition(line.data)}  "
                f"examples/device min {min(line_counts)} mean {sum(line_counts) / len(line_counts):.1f} max {max(line_counts)}"
            )
            if list_devices:
                for device, n in zip(line.devices, line_counts):
                    line_node.add(f"{device.id}  {n} examples")
    return root


def _describe_partition(data) -> str:
    if data.partition == "dirichlet":
        return f"dirichlet(alpha={data.alpha:g})"
    if data.partition == "quantity":
        return f"quantity(sigma={data.sigma:g})"
    return data.partition


def run_topology_validate(args: argparse.Namespace) -> int:
    from hierfl.loading import load_topology

    topology = load_topology(args.topology)
    Console().print(f"[green]ok[/]: {topology.source}: {len(topology.plants)} plants, {topology.num_devices} devices")
    return 0


def run_topology_presets(args: argparse.Namespace) -> int:
    from hierfl.loading import load_topology
    from hierfl.topology import preset_names

    for name in preset_names():
        t = load_topology(name)
        print(f"{name:10s} task={t.federation.task:14s} plants={len(t.plants):3d} devices={t.num_devices}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from hierfl.report import write_report

    for path in write_report(args.run_dir):
        print(path)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
