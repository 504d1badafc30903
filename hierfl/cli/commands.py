"""The `hierfl` command line: simulate, inspect topologies, report on runs, export and serve models.

A thin shell: it parses arguments, calls the library, and prints with rich. Every user
error (bad topology, missing run directory, data the task cannot supply) ends with a
clear message on stderr and exit status 2, never a traceback; the message is printed as
plain text, unwrapped, so a shape like `[n, 8]` or a long path survives as written. Text
the user wrote (names, paths, addresses) that goes into rich markup elsewhere is escaped
(`rich.markup.escape`), so a name like `[/bold]` is printed as written.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from hierfl import __version__
from hierfl.cli.summary import summary_table
from hierfl.errors import HierflError, TopologyError

EPILOG = """\
examples:
  hierfl new my_plants --template tabular  a starter: your own data and model, per device
  hierfl simulate demo                     train the bundled demo federation (digits, 24 devices)
  hierfl simulate my_plants.toml --rounds 5 --out runs/try1
  hierfl simulate my_plants.toml --coordinator host0:5710 --num-processes 2 --process-id 0
                                           one simulation over 2 hosts (process 1 on the other)
  hierfl topology show bearing             print a topology as a tree
  hierfl topology validate my_plants.toml  check a file; every problem is listed
  hierfl report runs/try1                  plots (PNG) and a markdown summary of a run
  hierfl export runs/try1 --out model.hfl  compile the trained model into one versioned file
  hierfl serve model.hfl --bind tcp://127.0.0.1:5600 --control ipc://$XDG_RUNTIME_DIR/hfl/control
                                           edge inference server; rollback on the control socket
  hierfl predict tcp://127.0.0.1:5600 readings.csv        one example per row; or --random 4
  hierfl launch demo --out runs/rt1        the same federation as processes over ZeroMQ
  hierfl dashboard runs/rt1                a live web page of the run: http://127.0.0.1:8470/
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.uses_jax:
        from hierfl.sim.host_devices import request_cpu_devices

        request_cpu_devices()  # before JAX starts: the simulator shards devices over all cores
    err = Console(stderr=True)
    try:
        return args.handler(args)
    except (TopologyError, HierflError) as e:
        err.print(Text("error: ", style="bold red") + Text(str(e)), soft_wrap=True)
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
    parser.set_defaults(uses_jax=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    new = commands.add_parser(
        "new", help="write a starter project: a topology, a task module and per-device data"
    )
    new.add_argument("directory", type=Path, help="the project folder to create (new or empty)")
    new.add_argument(
        "--template",
        choices=("tabular", "images", "timeseries"),
        default="tabular",
        help="tabular: press failure from CSV files; images: surface defects from image "
        "folders; timeseries: next-hour energy from CSV windows (default: tabular)",
    )
    new.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the data")
    new.set_defaults(handler=run_new)

    sim = commands.add_parser(
        "simulate",
        help="train a federation in one process, or one over several hosts (vectorized simulator)",
    )
    sim.add_argument("topology", help="topology file (TOML) or preset name (demo, bearing, large)")
    sim.add_argument(
        "--rounds",
        type=_positive_int,
        help="cloud rounds to run (default: the file's cloud_rounds)",
    )
    sim.add_argument("--seed", type=_non_negative_int, help="override federation.seed")
    sim.add_argument("--out", type=Path, help="run directory (default: runs/<name>-<time>)")
    sim.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=512,
        help="devices trained at once (bounds memory; default 512)",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    processes = sim.add_argument_group(
        "several processes (hosts)",
        "one simulation over the JAX devices of several processes, one command per host, "
        "each with all three options and its own --process-id; process 0 serves the "
        "coordinator and writes the run directory",
    )
    processes.add_argument(
        "--coordinator",
        type=_coordinator,
        metavar="HOST:PORT",
        help="process 0's host and a free port there, the same on every host",
    )
    processes.add_argument(
        "--num-processes", type=_positive_int, metavar="N", help="how many processes in all"
    )
    processes.add_argument(
        "--process-id", type=_non_negative_int, metavar="I", help="this one's number, 0..N-1"
    )
    processes.add_argument(
        "--join-timeout",
        type=_positive_int,
        default=300,
        metavar="S",
        help="seconds to wait for every process to join before giving up (default 300)",
    )
    sim.set_defaults(handler=run_simulate)

    topo = commands.add_parser("topology", help="inspect and check topology files")
    topo_commands = topo.add_subparsers(dest="topology_command", required=True, metavar="ACTION")
    show = topo_commands.add_parser(
        "show", help="print the plants, lines, devices, data and addresses as a tree"
    )
    show.add_argument("topology", help="topology file (TOML) or preset name")
    show.add_argument(
        "--devices", action="store_true", help="list every device with its number of examples"
    )
    show.set_defaults(handler=run_topology_show)
    validate = topo_commands.add_parser(
        "validate", help="check a topology file; exit 2 listing every problem"
    )
    validate.add_argument("topology", help="topology file (TOML) or preset name")
    validate.set_defaults(handler=run_topology_validate)
    presets = topo_commands.add_parser("presets", help="list the bundled presets")
    presets.set_defaults(handler=run_topology_presets)

    report = commands.add_parser(
        "report", help="write PNG plots and a markdown summary of a run directory"
    )
    report.add_argument("run_dir", type=Path)
    report.set_defaults(handler=run_report)

    dashboard = commands.add_parser(
        "dashboard",
        help="a live web page of a run directory (simulate, launch or cloud), and /metrics for Prometheus",
    )
    dashboard.add_argument("run_dir", type=Path, help="the run directory to follow")
    dashboard.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDR",
        help="HOST or HOST:PORT to listen on (default 127.0.0.1:8470; port 0: any free one); "
        "on any address but loopback every request needs the token",
    )
    dashboard.add_argument(
        "--token",
        help="the token requests must carry (default: none on loopback, a fresh one otherwise, printed in the URL)",
    )
    dashboard.set_defaults(handler=run_dashboard, uses_jax=False)

    export = commands.add_parser(
        "export", help="compile a run's trained model into a versioned .hfl file (jax.export)"
    )
    export.add_argument("run_dir", type=Path)
    export.add_argument(
        "--out",
        type=Path,
        help="model file to write (default: RUN_DIR/model.hfl, or RUN_DIR/model-PLANT.hfl)",
    )
    export.add_argument(
        "--plant",
        metavar="NAME",
        help="export plant NAME's own model (its personalized model with [personalization])",
    )
    export.add_argument(
        "--platforms",
        type=_platforms,
        default=("cpu", "cuda"),
        help="comma-separated jax.export platforms (default: cpu,cuda)",
    )
    export.set_defaults(handler=run_export)

    serve = commands.add_parser(
        "serve", help="serve a .hfl model over ZeroMQ with dynamic batching and hot swap"
    )
    serve.add_argument("model", type=Path, help="model file written by `hierfl export`")
    serve.add_argument(
        "--bind",
        required=True,
        help="address to listen on: tcp://HOST:PORT (PORT * for any), ipc://PATH",
    )
    serve.add_argument(
        "--control",
        metavar="ADDR",
        help="control socket for `hierfl rollback`: ipc://PATH in a folder only you can enter "
        "(made 0700 if missing); without it the server takes no control commands",
    )
    serve.add_argument(
        "--max-batch",
        type=_positive_int,
        default=32,
        help="most rows per model call and per request (default 32)",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=_wait_ms,
        default=0.0,
        help="longest a request waits for others to fill a batch, at most 600000 (default 0: batch what arrived while the last batch ran)",
    )
    serve.add_argument(
        "--subscribe",
        metavar="ADDR",
        help="take new versions from a model publisher (`hierfl publish`, the cloud)",
    )
    serve.add_argument(
        "--watch",
        type=Path,
        metavar="DIR",
        help="take new versions from .hfl files appearing in DIR",
    )
    serve.add_argument(
        "--keep",
        type=_positive_int,
        default=3,
        help="versions held for rollback, the served one included (default 3)",
    )
    serve.add_argument(
        "--status",
        type=Path,
        metavar="DIR",
        help="write the version served, each second, to DIR/serve-NAME.json for `hierfl dashboard` "
        "(RUN_DIR/status on the cloud's machine, or a folder synced there)",
    )
    serve.add_argument(
        "--name",
        type=_file_name,
        default="server",
        help="this server's name on the dashboard, e.g. plant-a-line-1 (default: server)",
    )
    serve.set_defaults(handler=run_serve)

    predict = commands.add_parser(
        "predict", help="send examples to an inference server and print its answers"
    )
    predict.add_argument("address", help="the server's address, as given to `hierfl serve --bind`")
    predict.add_argument(
        "input",
        nargs="?",
        type=Path,
        help="examples: a .npy array [n, *input_shape] (or one example), or a CSV file with one "
        "example per row (numbers in C order, optional header row); more rows than the server's "
        "max batch are sent in batches; a NaN or infinite value is refused before sending, naming its row",
    )
    predict.add_argument(
        "--random", type=_positive_int, metavar="N", help="send N random examples instead of a file"
    )
    predict.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of --random (default 0)"
    )
    predict.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        help="seconds to wait for each reply (default 10)",
    )
    predict.set_defaults(handler=run_predict)

    rollback = commands.add_parser(
        "rollback", help="make an inference server serve its previous model version again"
    )
    rollback.add_argument(
        "address", help="the server's control socket, as given to `hierfl serve --control`"
    )
    rollback.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        help="seconds to wait for the reply (default 10)",
    )
    rollback.set_defaults(handler=run_rollback)

    publish = commands.add_parser(
        "publish", help="announce a .hfl model to subscribed inference servers (PUB socket)"
    )
    publish.add_argument("model", type=Path, help="model file to publish")
    publish.add_argument(
        "--bind", required=True, help="address servers subscribe to (`hierfl serve --subscribe`)"
    )
    publish.add_argument(
        "--every",
        type=_positive_float,
        default=2.0,
        help="seconds between repeats, for servers that join late (default 2)",
    )
    publish.add_argument(
        "--count",
        type=_non_negative_int,
        default=0,
        help="publications before exiting; 0 = until interrupted (default)",
    )
    publish.set_defaults(handler=run_publish)

    from hierfl.cli.runtime import add_runtime_commands

    add_runtime_commands(commands)
    return parser


def run_dashboard(args: argparse.Namespace) -> int:
    from hierfl.dashboard.app import dashboard_token, parse_bind, serve

    host, port = parse_bind(args.bind, DASHBOARD_PORT)
    serve(args.run_dir, host, port, dashboard_token(host, args.token))
    return 0


DASHBOARD_PORT = 8470


def run_new(args: argparse.Namespace) -> int:
    from hierfl.starters import write_starter

    written = write_starter(args.directory, args.template, args.seed)
    data = [path for path in written if "data" in path.relative_to(args.directory).parts]
    topology = args.directory / "topology.toml"
    console = Console()
    console.print(
        f"wrote {escape(str(args.directory))}: {len(written) - len(data)} project files and "
        f"{len(data)} data files ({args.template} starter)",
        highlight=False,
    )
    for path in written:
        if path not in data:
            console.print(f"  {escape(str(path))}", highlight=False)
    console.print(
        f"next: hierfl simulate {escape(str(topology))}   (or: hierfl launch {escape(str(topology))})",
        highlight=False,
    )
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from hierfl.sim import processes

    group = processes.process_group(args.coordinator, args.num_processes, args.process_id)
    from hierfl.data.loading import load_topology
    from hierfl.sim.engine import simulate

    topology = load_topology(args.topology)
    if args.seed is not None:
        topology = topology.with_federation(seed=args.seed)
    console = Console()
    if group is not None:
        processes.join(group, args.join_timeout)
        console.print(_joined(group))
        if group.process_id != 0:
            result = simulate(topology, rounds=args.rounds, chunk_size=args.chunk_size)
            console.print(f"done: {len(result.history)} rounds; process 0 wrote the run directory")
            return 0
    out = args.out or Path("runs") / f"{topology.federation.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(
        f"[bold]{escape(topology.federation.name)}[/]: task {topology.federation.task}, "
        f"{len(topology.plants)} plants, {topology.num_devices} devices -> {escape(str(out))}"
    )
    result = simulate(
        topology, rounds=args.rounds, out=out, chunk_size=args.chunk_size, progress=not args.quiet
    )
    console.print(summary_table(result.history, topology.plant_names, result.plan.task.metric))
    dropped = result.plan.rows_dropped
    if dropped:
        console.print(
            f'on_bad_rows = "drop" dropped {sum(dropped.values())} bad rows of '
            f"{len(dropped)} files (by device and test set in run.json's rows_dropped)"
        )
    console.print(f"run directory: {escape(str(out))}   (plots: hierfl report {escape(str(out))})")
    return 0


def _joined(group) -> str:
    """What a process of a multi-process simulation says once every process has joined."""
    import jax

    return (
        f"process {group.process_id} of {group.num_processes} joined "
        f"{escape(group.coordinator)}: {jax.local_device_count()} of the run's "
        f"{jax.device_count()} JAX devices here"
    )


def run_topology_show(args: argparse.Namespace) -> int:
    from hierfl.data.loading import load_topology
    from hierfl.data.plan import make_plan

    topology = load_topology(args.topology)
    Console().print(
        topology_tree(topology, make_plan(topology).shards.counts, list_devices=args.devices)
    )
    return 0


def topology_tree(topology, counts, *, list_devices: bool = False) -> Tree:
    """A rich tree: cloud, plants (edge address, shift), lines (devices, partition, examples per device)."""
    f = topology.federation
    root = Tree(
        f"[bold]{escape(f.name)}[/]  task={f.task} model={f.model or 'default'} algorithm={f.algorithm}  "
        f"cloud_rounds={f.cloud_rounds} edge_rounds={f.edge_rounds} local_steps={f.local_steps} "
        f"batch_size={f.batch_size} lr={f.learning_rate} seed={f.seed}"
    )
    cloud = root.add(f"[bold cyan]cloud[/]  {escape(topology.cloud.address)}")
    for plant in topology.plants:
        plant_counts = [int(counts[d.index]) for d in plant.devices]
        node = cloud.add(
            f"[bold green]{escape(plant.name)}[/]  edge {escape(plant.address)}  shift={plant.shift:g}  "
            f"{plant.num_devices} devices, {sum(plant_counts)} examples"
        )
        for line in plant.lines:
            line_counts = [int(counts[d.index]) for d in line.devices]
            line_node = node.add(
                f"[yellow]{escape(line.name)}[/]  {len(line.devices)} devices  partition={_describe_partition(line.data)}  "
                f"examples/device min {min(line_counts)} mean {sum(line_counts) / len(line_counts):.1f} max {max(line_counts)}"
            )
            if list_devices:
                for device, n in zip(line.devices, line_counts):
                    line_node.add(f"{escape(device.id)}  {n} examples")
    return root


def _describe_partition(data) -> str:
    if data.partition == "dirichlet":
        return f"dirichlet(alpha={data.alpha:g})"
    if data.partition == "quantity":
        return f"quantity(sigma={data.sigma:g})"
    return data.partition


def run_topology_validate(args: argparse.Namespace) -> int:
    from hierfl.data.loading import load_topology

    topology = load_topology(args.topology)
    Console().print(
        f"[green]ok[/]: {escape(topology.source)}: {len(topology.plants)} plants, {topology.num_devices} devices"
    )
    return 0


def run_topology_presets(args: argparse.Namespace) -> int:
    from hierfl.data.loading import load_topology
    from hierfl.topology import preset_names

    for name in preset_names():
        t = load_topology(name)
        print(
            f"{name:10s} task={t.federation.task:14s} plants={len(t.plants):3d} devices={t.num_devices}"
        )
    return 0


def run_report(args: argparse.Namespace) -> int:
    from hierfl.runs.report import write_report

    for path in write_report(args.run_dir):
        print(path)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from hierfl.data.scoring import run_metric
    from hierfl.inference.artifact import write_artifact
    from hierfl.inference.export import export_run
    from hierfl.runs.metrics import read_run_info

    artifact = export_run(args.run_dir, platforms=args.platforms, plant=args.plant)
    default = "model.hfl" if args.plant is None else f"model-{args.plant}.hfl"
    path = write_artifact(args.out or args.run_dir / default, artifact)
    meta = artifact.meta
    metric = run_metric(read_run_info(args.run_dir)).name  # accuracy, or the task's deciding metric
    value = meta.metrics.get(metric)
    if args.plant is not None:  # the plant's own model, scored on the plant's test data
        metric = f"{args.plant} personal {metric}"
        value = meta.metrics.get(f"plant_personal_{metric.rsplit(' ', 1)[-1]}", {}).get(args.plant)
    scored = f" (test {metric} {value:.4f})" if isinstance(value, float) else ""
    print(
        f"exported {meta.task} {meta.model} version {meta.version}{scored} for {', '.join(meta.platforms)} "
        f"-> {path} ({path.stat().st_size:,} bytes)"
    )
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from hierfl.inference.server import InferenceServer, ServerConfig

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger("hierfl.inference")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    config = ServerConfig(
        bind=args.bind,
        control=args.control,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        keep_versions=args.keep,
        subscribe=args.subscribe,
        watch=args.watch,
    )
    server = InferenceServer(args.model, config)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    if args.status is not None:
        _report_serving(server, args.status, args.name)
    meta = server.model.meta
    sources = "".join(
        f", {name} {value}"
        for name, value in (
            ("control", args.control),
            ("subscribed to", args.subscribe),
            ("watching", args.watch),
        )
        if value
    )
    print(
        f"serving {meta.task} {meta.model} version {meta.version} on {server.endpoint} "
        f"({server.info()['platform']}; max batch {config.max_batch}, max wait {config.max_wait_ms:g} ms{sources})",
        flush=True,
    )
    server.serve_forever()
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from hierfl.cli.inputs import read_examples
    from hierfl.inference.client import Client

    with Client(args.address, timeout=args.timeout) as client:
        info = client.info()
        if args.input is not None:
            x = read_examples(args.input, info.input_shape, info.input_dtype, info.features)
        elif args.random is not None:
            rng = np.random.default_rng(args.seed)
            x = rng.standard_normal((args.random, *info.input_shape)).astype(info.input_dtype)
        else:
            raise HierflError("give a .npy or CSV file of examples, or --random N")
        predictions = [
            client.predict(x[start : start + info.max_batch])
            for start in range(0, len(x), info.max_batch)
        ]
    logits = np.concatenate([p.logits for p in predictions])
    versions = np.concatenate([np.full(len(p.logits), p.version) for p in predictions])
    answered = sorted(set(versions.tolist()))
    console = Console()
    console.print(
        f"{info.task} {info.model} version{'s' if len(answered) > 1 else ''} "
        f"{', '.join(map(str, answered))} on {args.address} ({info.platform})",
        highlight=False,
        markup=False,
    )
    table = Table()
    table.add_column("example", justify="right")
    if len(answered) > 1:  # a new version was swapped in between two batches
        table.add_column("version", justify="right")

    def first_cells(i: int) -> list[str]:
        return [str(i), str(versions[i])] if len(answered) > 1 else [str(i)]

    if not info.class_names:  # a regression model: print its outputs, named if the model names them
        names = info.output_names or tuple(f"output {j}" for j in range(logits.shape[-1]))
        for name in names:
            table.add_column(escape(name), justify="right")
        for i, row in enumerate(logits.reshape(len(logits), -1)):
            table.add_row(*first_cells(i), *(f"{v:.4g}" for v in row))
        console.print(table)
        return 0
    table.add_column("class")
    table.add_column("probability", justify="right")
    prediction = predictions[0]._replace(logits=logits)
    probabilities = prediction.probabilities
    for i, (k, label) in enumerate(zip(prediction.classes, prediction.labels)):
        table.add_row(*first_cells(i), escape(label), f"{probabilities[i, k]:.3f}")
    console.print(table)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from hierfl.inference.client import Client

    with Client(args.address, timeout=args.timeout) as client:
        info = client.rollback()
    print(
        f"{args.address} now serves {info.task} {info.model} version {info.version} (held: {', '.join(map(str, info.versions))})"
    )
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from hierfl.inference.publisher import ModelPublisher

    with ModelPublisher(args.bind) as publisher:
        sent = 0
        while True:
            header = publisher.publish(args.model)
            sent += 1
            print(
                f"published {header['task']} {header['model']} version {header['version']} on {publisher.endpoint}",
                flush=True,
            )
            if args.count and sent >= args.count:
                return 0
            time.sleep(args.every)


def _report_serving(server, folder: Path, name: str) -> None:
    """Writes the versions `server` holds to `folder`/serve-`name`.json each second, from a daemon thread."""
    import threading

    from hierfl.runs.live import LiveStatus, status_path

    def describe() -> dict:
        return {"version": server.model.meta.version, "versions": server.info()["versions"]}

    live = LiveStatus(status_path(folder, f"serve-{name}"), describe)

    def loop() -> None:
        while True:
            live.write()
            time.sleep(live.every)

    threading.Thread(target=loop, name="serve-status", daemon=True).start()


def _file_name(text: str) -> str:
    if not text or not all(c.isalnum() or c in "._-" for c in text) or text.startswith("."):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_' and '-' only")
    return text


def _coordinator(text: str) -> str:
    from hierfl.sim.processes import coordinator_address

    try:
        return coordinator_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _platforms(text: str) -> tuple[str, ...]:
    platforms = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in platforms if p not in ("cpu", "cuda", "rocm", "tpu")]
    if not platforms or unknown:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of cpu, cuda, rocm, tpu; got {text!r}"
        )
    return platforms


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def _wait_ms(text: str) -> float:
    """A batching wait in milliseconds: finite, in [0, MAX_WAIT_MS] (`inf` would stall every request)."""
    from hierfl.inference.batching import MAX_WAIT_MS

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0 <= value <= MAX_WAIT_MS:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_WAIT_MS}] ms, got {text}")
    return value


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
