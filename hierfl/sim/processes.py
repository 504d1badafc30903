"""One simulation over several processes (hosts), on JAX's own multi-process runtime.

Every process runs the same program (`hierfl simulate` with the same topology and code),
each on its own JAX devices; `jax.distributed` connects them through a coordinator that
process 0 serves, and the simulator's mesh (`hierfl.sim.parallel.device_mesh`) then spans
every process's devices. XLA's collectives between the processes are gloo over TCP on
CPUs and NCCL on GPUs. Process 0 writes the run's records; the others write nothing.

This module imports no JAX at import time: the command line validates its options before
JAX starts, and `join` must run before JAX's first computation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import socket
import time

import numpy as np

from hierfl.errors import HierflError

JOIN_TIMEOUT_S = 300
"""How long a process waits for all the others to join before it gives up (JAX's default)."""


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in a multi-process simulation: the coordinator's
    `HOST:PORT` (served by process 0, reached by all), how many processes, which one this is."""

    coordinator: str
    num_processes: int
    process_id: int


def coordinator_address(text: str) -> str:
    """`text` as a coordinator address `HOST:PORT` (an IPv6 host in brackets); ValueError
    saying what is wrong otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or host in ("[", "[]"):
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number in 1..65535, got {port!r} in {text!r}")
    return text


def process_group(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> ProcessGroup | None:
    """The process group the command line's `--coordinator`, `--num-processes` and
    `--process-id` declare, or None (one process) when none is given.

    Raises HierflError naming the option when only some are given or the process id is
    not in `0..num_processes - 1`.
    """
    given = {
        "--coordinator": coordinator,
        "--num-processes": num_processes,
        "--process-id": process_id,
    }
    missing = [name for name, value in given.items() if value is None]
    if len(missing) == len(given):
        return None
    if missing:
        named = ", ".join(name for name in given if name not in missing)
        raise HierflError(
            f"{named} given without {' and '.join(missing)}: a multi-process simulation "
            "needs all three (--coordinator HOST:PORT --num-processes N --process-id I)"
        )
    if not 0 <= process_id < num_processes:
        raise HierflError(
            f"--process-id {process_id} is not one of the {num_processes} processes "
            f"(--num-processes {num_processes}): give 0..{num_processes - 1}, a different "
            "one on each host"
        )
    return ProcessGroup(coordinator, num_processes, process_id)


def join(group: ProcessGroup, timeout_s: int = JOIN_TIMEOUT_S) -> None:
    """Connects this process to the others (`jax.distributed.initialize`); process 0 also
    serves the coordinator. Call before JAX's first computation. Returns when all
    `group.num_processes` have joined. Raises HierflError when process 0 cannot serve
    the coordinator or another finds none within `timeout_s`; when the coordinator is
    up but some process never joins, JAX aborts the waiting ones after `timeout_s`.

    The explicit arguments are the truth: JAX's detection of Slurm or MPI clusters is off,
    so it cannot change the process count or hide some of a host's devices.
    """
    import jax

    deadline = time.monotonic() + timeout_s
    if group.process_id != 0:
        wait_for_coordinator(group, deadline)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            group.coordinator,
            group.num_processes,
            group.process_id,
            cluster_detection_method="deactivate",
            initialization_timeout=max(1, math.ceil(deadline - time.monotonic())),
        )
    except jax.errors.JaxRuntimeError as e:
        raise HierflError(
            f"--coordinator {group.coordinator}: process 0 cannot serve the coordinator "
            f"({str(e).strip()}); it listens on that port on every interface: is it free?"
        ) from None


def wait_for_coordinator(group: ProcessGroup, deadline: float) -> None:
    """Returns once process 0's coordinator accepts a TCP connection; HierflError at
    `deadline` (`time.monotonic()`) if it never does.

    JAX ends a process that cannot reach the coordinator in time with an abort and a C++
    stack trace, not an exception; a process waits here first, so a wrong host or a
    process 0 that never started is an error that says so.
    """
    host, _, port = group.coordinator.rpartition(":")
    address = (host.strip("[]"), int(port))
    problem = "nothing answered"
    while True:
        try:
            with socket.create_connection(address, timeout=1.0):
                return
        except OSError as e:
            problem = e.strerror or str(e)
        if time.monotonic() >= deadline:
            raise HierflError(
                f"--coordinator {group.coordinator}: process {group.process_id} of "
                f"{group.num_processes} found no coordinator there before --join-timeout "
                f"({problem}); start process 0 (--process-id 0) on that host, and check "
                "that its port is reachable from here"
            )
        time.sleep(0.2)


def check_same_run(description: str) -> None:
    """Raises HierflError unless every process was asked for the same run: `description`
    (the topology and options, as text) compared across processes, in a collective that
    every process calls. Nothing to do in one process.

    Processes started with different files would otherwise train different programs
    together: hang in a collective, or add up updates of different federations.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if jax.process_count() == 1:
        return
    mesh = Mesh(np.array(jax.devices()), ("processes",))
    digest = np.frombuffer(hashlib.sha256(description.encode()).digest(), np.uint32)
    rows = [jax.device_put(digest[None], device) for device in jax.local_devices()]
    split = NamedSharding(mesh, PartitionSpec("processes"))
    digests = jax.make_array_from_single_device_arrays((mesh.size, digest.size), split, rows)
    gather = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))
    every = np.asarray(gather(digests).addressable_data(0))
    differ = sorted(
        {d.process_index for d, row in zip(mesh.devices.flat, every) if (row != digest).any()}
    )
    if differ:
        raise HierflError(
            f"the processes were not started alike: process {jax.process_index()}'s topology "
            f"or options differ from those of process {', '.join(map(str, differ))}; give "
            "every process the same topology file, --rounds, --seed and --chunk-size"
        )


def writes_records() -> bool:
    """Whether this process writes the run's records: process 0 of a multi-process
    simulation, or the only one."""
    import jax

    return jax.process_index() == 0
