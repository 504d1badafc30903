"""How many CPU devices JAX shows: set before JAX starts, so this module imports no JAX.

The `hierfl` command calls `request_cpu_devices()` before any subcommand runs; a
subcommand that never computes (a server failing on a held port, the launcher) then
starts in a fraction of a second instead of paying for JAX's import first.
"""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count"


def request_cpu_devices(count: int | None = None) -> None:
    """Asks XLA for `count` (default: all cores) host devices; no-op if the flag is already set.

    Only effective before JAX initialises its backend (the first computation), so call it
    at program start. It changes nothing on GPU machines, whose devices are the GPUs.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG in flags:
        return
    count = count or len(os.sched_getaffinity(0))
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={count}".strip()
