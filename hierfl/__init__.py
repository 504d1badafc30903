"""hierfl: hierarchical (cloud-edge-device) federated learning for industrial AI.

Devices train locally with JIT-compiled JAX, edge servers aggregate their plant's devices,
and the cloud aggregates the edges' summaries into one global model (HierFAVG). The same
pure functions (`hierfl.core.algorithms`) serve the in-process simulator and the runtime.

    import hierfl
    topology = hierfl.load_topology("demo")          # or a path to your TOML file
    result = hierfl.simulate(topology, out="runs/demo")
    print(result.history[-1]["accuracy"])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "simulate": "hierfl.sim.engine",
    "SimulationResult": "hierfl.sim.engine",
    "load_topology": "hierfl.data.loading",
    "make_plan": "hierfl.data.plan",
    "write_report": "hierfl.runs.report",
}


def __getattr__(name: str) -> Any:
    # Lazy, so `import hierfl` (and the CLI's --help) does not pay for importing JAX.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hierfl' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]
