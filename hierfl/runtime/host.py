"""A device host: many devices of one plant in one OS process (`hierfl devices`).

A device process is almost all shared machinery: the Python interpreter, JAX and XLA's
CPU client, the plan and the compiled training step take 300 to 600 MB of memory; the
device's own state (its data shard, its uplink residual, a socket) is well under 1 MB.
One process per device therefore caps a machine at tens of devices, while a host runs a
plant's hundreds in the memory of one. The host builds the `DeviceSetup` once, opens one
ZeroMQ context and runs a `DeviceNode` per device with `device.serve`: each node keeps
its own DEALER socket and routing id (the device id), its heartbeats and its residual,
so the edge and the protocol cannot tell a hosted device from a device process, and each
trains on the same data with the same keys and steps, so the global model is the same.

What a host changes is the failure and compute unit: its devices train one after the
other on one core, and a crash (kill -9) takes all of them down at once; their edges
stop waiting for them once their heartbeats stop, as for a single crashed device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import zmq

from hierfl.errors import DataError, HierflError
from hierfl.runtime.device import DeviceNode, device_setup, serve, stay_out
from hierfl.runtime.node import CurveKeys
from hierfl.topology import Device, Topology

SPARE_SOCKETS = 16
"""ZeroMQ sockets the host's context allows beyond one per device (its default cap is 1,023)."""


def hosted_devices(
    topology: Topology, plant: str, line: str | None = None, ids: Sequence[str] = ()
) -> list[Device]:
    """The devices a host of `plant` runs: all its devices, those of `line`, or those listed by id.

    Raises HierflError naming the plant, line or id that does not fit the topology.
    """
    if plant not in topology.plant_names:
        raise HierflError(
            f"no plant {plant!r} in {topology.source} (plants: {', '.join(topology.plant_names)})"
        )
    chosen = topology.plant(plant)
    devices = list(chosen.devices)
    if line is not None:
        lines = [item.name for item in chosen.lines]
        if line not in lines:
            raise HierflError(f"no line {line!r} in plant {plant!r} (lines: {', '.join(lines)})")
        devices = [device for device in devices if device.line == line]
    if ids:
        by_id = {device.id: device for device in devices}
        outside = [device_id for device_id in ids if device_id not in by_id]
        if outside:
            where = f"line {line!r} of plant {plant!r}" if line is not None else f"plant {plant!r}"
            raise HierflError(
                f"not devices of {where}: {', '.join(outside)} (ids are plant/line/device)"
            )
        devices = [by_id[device_id] for device_id in dict.fromkeys(ids)]
    return devices


class DeviceHost:
    """Runs `devices` (see `hosted_devices`) in this process. `run()` serves until every one is stopped."""

    def __init__(
        self,
        topology: Topology,
        devices: Sequence[Device],
        *,
        keys: CurveKeys | None = None,
        state_dir: Path | None = None,
        resume: bool = False,
        data: str | None = None,
    ):
        self.context = zmq.Context()
        self.context.max_sockets = max(self.context.max_sockets, len(devices) + SPARE_SOCKETS)
        setup = device_setup(topology, devices[0].plant, data)
        self.nodes = []
        for device in devices:
            try:
                node = DeviceNode(
                    topology,
                    device.id,
                    keys=keys,
                    state_dir=state_dir,
                    resume=resume,
                    setup=setup,
                    context=self.context,
                )
            except DataError as error:  # this device stays out; the host runs the others
                stay_out(topology, device.id, str(error), keys=keys, context=self.context)
                continue
            self.nodes.append(node)

    def run(self) -> None:
        try:
            self.nodes[0].warm_up()  # they share one step: compiling it once warms them all
            serve(self.nodes)
        finally:
            self.context.term()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
