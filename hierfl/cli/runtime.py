"""The runtime's commands: `hierfl launch`, `hierfl cloud|edge|device|devices` and `hierfl keys generate|ckks`.

`add_runtime_commands` adds them to the main parser (`hierfl.cli.commands`); every handler loads
and checks the topology first, so a bad file exits 2 naming each problem before any
process or socket starts.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hierfl.errors import HierflError
from hierfl.runtime.node_start import START_METHODS, default_start_method

if TYPE_CHECKING:
    from hierfl.topology import Topology


def add_runtime_commands(commands: argparse._SubParsersAction) -> None:
    launch = commands.add_parser(
        "launch", help="run the topology as local processes: cloud, edges, devices (ZeroMQ)"
    )
    launch.add_argument("topology", help="topology file (TOML) or preset name")
    launch.add_argument(
        "--out",
        type=Path,
        help="run directory: metrics, model, checkpoints, logs/ (default: runs/<name>-<time>)",
    )
    launch.add_argument(
        "--rounds",
        type=_positive_int,
        help="cloud rounds to run (default: the file's cloud_rounds)",
    )
    launch.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    launch.add_argument(
        "--publish",
        metavar="ADDR",
        help="publish every new global model to inference servers at ADDR (PUB socket)",
    )
    launch.add_argument(
        "--emulate-speeds",
        action="store_true",
        help="each edge holds its summary until its plant's declared cycle time (seconds_per_step, "
        "latency, bandwidth) has passed: real wall-clock for plants at different speeds on one machine",
    )
    launch.add_argument(
        "--start-method",
        choices=START_METHODS,
        default=default_start_method(),
        help="fork: nodes forked from one process that has imported them (Linux, the default "
        "there); exec: every node a fresh Python that imports them itself",
    )
    launch.add_argument("--quiet", action="store_true", help="no progress bar")
    launch.set_defaults(handler=run_launch)

    cloud = commands.add_parser(
        "cloud", help="run the cloud node of a topology (binds cloud.address)"
    )
    cloud.add_argument("topology", help="topology file (TOML) or preset name")
    cloud.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run directory for metrics.jsonl, model.npz, checkpoints",
    )
    cloud.add_argument(
        "--rounds",
        type=_positive_int,
        help="cloud rounds to run (default: the file's cloud_rounds)",
    )
    cloud.add_argument(
        "--bind", help="address to bind instead of cloud.address (e.g. tcp://*:5550 on a server)"
    )
    cloud.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --out"
    )
    cloud.add_argument(
        "--key",
        type=Path,
        help="this node's secret key file (`hierfl keys generate`), for CurveZMQ",
    )
    cloud.add_argument(
        "--publish",
        metavar="ADDR",
        help="publish every new global model to inference servers at ADDR (PUB socket)",
    )
    cloud.add_argument(
        "--he-context",
        type=Path,
        metavar="FILE",
        help="with [privacy] homomorphic: the plants' public CKKS context (ckks-public.bin, `hierfl keys ckks`)",
    )
    cloud.set_defaults(handler=run_cloud)

    edge = commands.add_parser(
        "edge", help="run one plant's edge node (binds the plant's address, dials the cloud)"
    )
    edge.add_argument("topology", help="topology file (TOML) or preset name")
    edge.add_argument("--plant", required=True, help="the plant this edge serves")
    edge.add_argument(
        "--bind", help="address to bind instead of the plant's address (e.g. tcp://*:5560)"
    )
    edge.add_argument(
        "--state", type=Path, help="directory for the edge's checkpoint (needed for --resume)"
    )
    edge.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --state"
    )
    edge.add_argument("--key", type=Path, help="this node's secret key file, for CurveZMQ")
    edge.add_argument(
        "--he-context",
        type=Path,
        metavar="FILE",
        help="with [privacy] homomorphic: the plants' secret CKKS context (ckks-secret.bin; never give it to the cloud)",
    )
    edge.add_argument(
        "--model-out",
        type=Path,
        metavar="FILE",
        help="with [privacy] homomorphic: where this edge writes the final global model (.npz; the cloud "
        "holds none); with [personalization]: where it writes its plant's personalized model",
    )
    edge.add_argument(
        "--status",
        type=Path,
        metavar="DIR",
        help="write the edge's live status to DIR/edge-PLANT.json for `hierfl dashboard` "
        "(RUN_DIR/status when the cloud's run directory is shared; `hierfl launch` does this)",
    )
    edge.add_argument(
        "--emulate-speeds",
        action="store_true",
        help="hold each summary until the plant's declared cycle time has passed (see launch)",
    )
    edge.set_defaults(handler=run_edge)

    device = commands.add_parser("device", help="run one device node (dials its plant's edge)")
    device.add_argument("topology", help="topology file (TOML) or preset name")
    device.add_argument(
        "--id", required=True, dest="device_id", help="the device's id, plant/line/device"
    )
    device.add_argument("--key", type=Path, help="this node's secret key file, for CurveZMQ")
    device.add_argument(
        "--state", type=Path, help="directory for the device's state (SCAFFOLD's control variate)"
    )
    device.add_argument("--resume", action="store_true", help="continue with the state in --state")
    device.add_argument("--data", metavar="PATH", help=DATA_HELP)
    device.set_defaults(handler=run_device)

    devices = commands.add_parser(
        "devices", help="run many devices of one plant in one process (a device host)"
    )
    devices.add_argument("topology", help="topology file (TOML) or preset name")
    devices.add_argument(
        "--plant",
        required=True,
        help="the plant whose devices this process runs (all of them by default)",
    )
    devices.add_argument("--line", help="only the devices of this line of the plant")
    devices.add_argument(
        "--ids", nargs="+", metavar="ID", help="only these devices, by id plant/line/device"
    )
    devices.add_argument(
        "--key", type=Path, help="the host's secret key file, for CurveZMQ (all its devices use it)"
    )
    devices.add_argument(
        "--state", type=Path, help="directory for the devices' state (SCAFFOLD's control variates)"
    )
    devices.add_argument("--resume", action="store_true", help="continue with the state in --state")
    devices.add_argument("--data", metavar="PATH", help=DATA_HELP)
    devices.set_defaults(handler=run_devices)

    keys = commands.add_parser(
        "keys", help="CurveZMQ key pairs for encrypted links; CKKS keys for homomorphic summaries"
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys_commands.add_parser(
        "generate", help="write NAME.key (public) and NAME.key_secret into DIR"
    )
    generate.add_argument("directory", type=Path)
    generate.add_argument(
        "names",
        nargs="+",
        type=_key_name,
        help="one key pair per name (cloud, plant names, device names): plain names, no paths",
    )
    generate.set_defaults(handler=run_keys_generate)
    ckks = keys_commands.add_parser(
        "ckks",
        help="write ckks-secret.bin (every plant's edge) and ckks-public.bin (the cloud) into DIR",
    )
    ckks.add_argument("directory", type=Path)
    ckks.add_argument(
        "--topology",
        help="take he_poly_modulus_degree and he_scale_bits from this topology's [privacy] (default 8192, 40)",
    )
    ckks.set_defaults(handler=run_keys_ckks)


DATA_HELP = (
    "where this machine keeps the device's data, instead of the topology's [data] path; "
    "a template over {plant}, {line} and {device} for several devices"
)


def _load(source: str):
    """The topology, checked, and refused if the runtime cannot run it."""
    from hierfl.data.loading import load_topology
    from hierfl.runtime.node import runtime_problem

    topology = load_topology(source)
    problem = runtime_problem(topology)
    if problem is not None:
        raise HierflError(problem)
    return topology


def _node_setup(source: str):
    """The topology, checked, and the shared compilation cache every node process uses."""
    from hierfl.runtime.node import enable_compilation_cache

    topology = _load(source)
    enable_compilation_cache()
    return topology


def _stop_on_signals(node) -> None:
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())


def run_launch(args: argparse.Namespace) -> int:
    from hierfl.data.loading import topology_task
    from hierfl.runtime.launch import Launch, LaunchProgress, device_groups

    topology = _load(args.topology)
    source = str(Path(args.topology).absolute()) if Path(args.topology).exists() else args.topology
    if args.resume and args.out is None:
        raise HierflError("--resume needs --out, the run directory to continue")
    if args.publish and topology.privacy.homomorphic:
        raise HierflError(
            "--publish: with privacy.homomorphic the cloud holds no plaintext model to publish; the plants hold it"
        )
    out = args.out or Path("runs") / f"{topology.federation.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console()
    console.print(
        f"[bold]{escape(topology.federation.name)}[/]: launching 1 cloud, {len(topology.plants)} edges, "
        f"{topology.num_devices} devices in {len(device_groups(topology))} processes -> {escape(str(out))} "
        f"(logs in {escape(str(out / 'logs'))})"
    )
    launch = Launch(
        topology,
        source,
        out,
        rounds=args.rounds,
        resume=args.resume,
        publish=args.publish,
        emulate_speeds=args.emulate_speeds,
        start_method=args.start_method,
    )
    metric = topology_task(topology).metric
    launch.start()
    try:
        with LaunchProgress(
            launch.rounds, escape(topology.federation.name), enabled=not args.quiet, metric=metric
        ) as progress:
            history = launch.wait(progress.update)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted: stopping every node[/]")
        launch.stop(grace=0)
        return 130
    except BaseException:
        launch.stop(grace=0)
        raise
    if history:
        from hierfl.cli.summary import summary_table

        console.print(summary_table(history, topology.plant_names, metric))
        console.print(runtime_table(history))
    for reason in launch.stayed_out():
        console.print(f"[yellow]stayed out:[/] {escape(reason)}", highlight=False)
    note = " (decrypted at its plant; the cloud holds none)" if topology.privacy.homomorphic else ""
    for model in launch.final_models():
        console.print(f"final model{note}: {escape(str(model))}")
    console.print(f"run directory: {escape(str(out))}")
    return 0


def runtime_table(history: list[dict]) -> Table:
    """What the runtime adds to the summary: answers, refused messages, late updates, stale summaries."""
    last = history[-1]
    table = Table(title="runtime", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for plant, expected in last.get("devices_expected", {}).items():
        answered = [min(r["devices_answered"].get(plant) or [0]) for r in history]
        table.add_row(
            f"devices answered {plant} (min / mean per round)",
            f"{min(answered)} / {sum(answered) / len(answered):.1f} of {expected}",
        )
    full = sum(
        len(r.get("edges_answered", [])) == len(r.get("devices_expected", {})) for r in history
    )
    table.add_row("rounds with every edge", f"{full} of {len(history)}")
    refused: dict[str, int] = {}
    for node, reasons in last.get("rejected_messages", {}).items():
        for reason, count in reasons.items():
            refused[reason] = refused.get(reason, 0) + count
    table.add_row(
        "refused messages (last counts)",
        ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "0",
    )
    table.add_row("late updates", str(last.get("late_updates", 0)))
    table.add_row("stale summaries", str(sum(len(r.get("stale_summaries", {})) for r in history)))
    return table


def _keys(path: Path | None):
    if path is None:
        return None
    from hierfl.runtime.curve import load_keys

    return load_keys(path)


def _check_address(source: str, address: Callable[[Topology], str | None]) -> None:
    """Fails at once (BindError) if the server's address is held, before JAX is imported."""
    from hierfl.runtime.ports import check_bindable
    from hierfl.topology import load_topology

    chosen = address(load_topology(source))
    if chosen is not None:
        check_bindable(chosen)


def run_cloud(args: argparse.Namespace) -> int:
    _check_address(args.topology, lambda topology: args.bind or topology.cloud.address)
    from hierfl.runtime.cloud import CloudNode

    topology = _node_setup(args.topology)
    node = CloudNode(
        topology,
        args.out,
        rounds=args.rounds,
        bind=args.bind,
        resume=args.resume,
        keys=_keys(args.key),
        publish=args.publish,
        he_context=args.he_context,
    )
    _stop_on_signals(node)
    node.run()
    return 0


def run_edge(args: argparse.Namespace) -> int:
    _check_address(
        args.topology, lambda topology: args.bind or _plant_address(topology, args.plant)
    )
    from hierfl.runtime.edge import EdgeNode

    topology = _node_setup(args.topology)
    if args.plant not in topology.plant_names:
        raise HierflError(
            f"no plant {args.plant!r} in {topology.source} (plants: {', '.join(topology.plant_names)})"
        )
    if args.resume and args.state is None:
        raise HierflError("--resume needs --state, the directory holding the edge's checkpoint")
    node = EdgeNode(
        topology,
        args.plant,
        bind=args.bind,
        state_dir=args.state,
        resume=args.resume,
        keys=_keys(args.key),
        he_context=args.he_context,
        model_out=args.model_out,
        status_dir=args.status,
        emulate_speeds=args.emulate_speeds,
    )
    _stop_on_signals(node)
    node.run()
    return 0


def _plant_address(topology: Topology, plant: str) -> str | None:
    return topology.plant(plant).address if plant in topology.plant_names else None


def run_device(args: argparse.Namespace) -> int:
    from hierfl.data.loading import topology_task
    from hierfl.errors import DataError
    from hierfl.privacy.config import DpConfig
    from hierfl.runtime.device import STAYED_OUT, DeviceNode, build_setup, stay_out
    from hierfl.runtime.device_data import device_data_source

    topology = _node_setup(args.topology)
    try:
        topology.device(args.device_id)
    except KeyError as err:
        raise HierflError(err.args[0]) from None
    if args.resume and args.state is None:
        raise HierflError("--resume needs --state, the directory holding the device's state")
    device = topology.device(args.device_id)
    source = device_data_source(
        topology, topology_task(topology), device.plant, _data_template(topology, args.data)
    )
    try:  # before the model is built: a device whose data cannot be used says so at once
        examples = source.examples(device)
    except DataError as error:
        stay_out(topology, args.device_id, str(error), keys=_keys(args.key))
        return STAYED_OUT
    node = DeviceNode(
        topology,
        args.device_id,
        keys=_keys(args.key),
        state_dir=args.state,
        resume=args.resume,
        setup=build_setup(topology, source, DpConfig.of(topology), counts=source.counts),
        examples=examples,
    )
    _stop_on_signals(node)
    node.run()
    return 0


def run_devices(args: argparse.Namespace) -> int:
    from hierfl.runtime.device import STAYED_OUT
    from hierfl.runtime.host import DeviceHost, hosted_devices

    topology = _node_setup(args.topology)
    devices = hosted_devices(topology, args.plant, args.line, args.ids or ())
    if args.resume and args.state is None:
        raise HierflError("--resume needs --state, the directory holding the devices' state")
    node = DeviceHost(
        topology,
        devices,
        keys=_keys(args.key),
        state_dir=args.state,
        resume=args.resume,
        data=_data_template(topology, args.data),
    )
    if not node.nodes:
        return STAYED_OUT
    _stop_on_signals(node)
    node.run()
    return 0


def run_keys_generate(args: argparse.Namespace) -> int:
    from hierfl.runtime.curve import generate_keys

    for name in args.names:
        public, secret = generate_keys(args.directory, name)
        print(
            f"{name}: public key {_public_text(public)}  ({public}; secret {secret}, keep it private)"
        )
    return 0


def run_keys_ckks(args: argparse.Namespace) -> int:
    from hierfl.privacy.homomorphic import CkksParameters
    from hierfl.runtime.encrypted import write_key_files

    parameters = (
        CkksParameters.of(_load(args.topology).privacy) if args.topology else CkksParameters()
    )
    secret, public = write_key_files(args.directory, parameters)
    print(f"CKKS degree {parameters.poly_modulus_degree}, scale 2^{parameters.scale_bits}:")
    print(
        f"  {secret}: the plants' secret context; copy it to every plant's edge (--he-context) out of band, never to the cloud"
    )
    print(f"  {public}: the public context; give it to the cloud (--he-context)")
    return 0


def _data_template(topology, data: str | None) -> str | None:
    """`--data`, checked: a path template over {plant}, {line}, {device}, for a task that reads files."""
    from hierfl.data.loading import topology_task
    from hierfl.topology import DEVICE_PATH_KEYS, template_problem

    if data is None:
        return None
    task = topology_task(topology)
    if not task.reads_files:
        raise HierflError(
            f"--data: task {task.name!r} generates its data; --data is for a task that reads files"
        )
    problem = template_problem(data, DEVICE_PATH_KEYS)
    if problem is not None:
        raise HierflError(f"--data: {problem}")
    return data


def _public_text(path: Path) -> str:
    from hierfl.runtime.curve import load_public_key

    return load_public_key(path)


def _key_name(text: str) -> str:
    """A key pair's name: a plain file name (as plant and device names are), so its files stay in DIR."""
    from hierfl.topology.schema import NAME_PATTERN, NAME_RULE

    if not NAME_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain name ({NAME_RULE}); the key files are written into DIR"
        )
    return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
