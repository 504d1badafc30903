"""hierfl: hierarchical (cloud-edge-device) federated learning for industrial AI.

Devices train locally with JIT-compiled JAX, edge servers aggregate their plant's devices,
and the cloud aggregates the edges' summaries into one global model (HierFAVG). The same
pure functions (`hierfl.core.algorithms`) serve the in-process simulator and the runtime.

    import hierfl
    topology = hierfl.load_topology("demo")          # or a path to your TOML file
    result = hierfl.simulate(topology, out="runs/demo")
    print(result.history[-1]["accuracy"])

Your own data and model: define a task with `hierfl.task(...)` in your module (a model
factory, classes or targets, and a loader such as `hierfl.csv(label="failure")`) and name
it in the topology as `task = "my_module:my_task"`; `hierfl new DIR` writes a starter.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # Your own task: a model, a loss, metrics and how a device's files are read.
    "task": "hierfl.data.tasks.define",
    "InputSpec": "hierfl.data.tasks.define",
    "Task": "hierfl.data.tasks.base",
    "Metric": "hierfl.data.scoring",
    "rmse": "hierfl.data.tasks.base",
    "mae": "hierfl.data.tasks.base",
    "csv": "hierfl.data.files",
    "parquet": "hierfl.data.files",
    "npz": "hierfl.data.files",
    "npy": "hierfl.data.files",
    "image_folder": "hierfl.data.files",
    "Schema": "hierfl.data.files",
    "Examples": "hierfl.data.files",
    # Running a federation.
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
