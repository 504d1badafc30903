"""Compiled edge inference: export a trained model, serve it, hot-swap new versions.

    artifact = export_run("runs/bearing")              # jax.export (StableHLO) for CPU and CUDA
    write_artifact("model.hfl", artifact)              # one versioned file with a checksum
    server = InferenceServer("model.hfl", ServerConfig(bind="tcp://127.0.0.1:5600")).start()
    with Client("tcp://127.0.0.1:5600") as client:
        client.predict(windows).labels

Modules, one concept each: `artifact` (the .hfl file format), `export` (model -> artifact),
`compiled` (artifact -> a model ready on the device), `batching` (dynamic batching rules),
`protocol` (the request/reply wire format), `versions` (served model and rollback),
`publisher` (PUB/SUB announcements of new versions), `updates` (loading new versions
beside the served one), `control` (the private socket rollback is taken on), `server`
(the serving loop), `client`.

Names are imported lazily: `from hierfl.inference import Client` loads neither JAX nor
the exporter, so a client machine needs only numpy and pyzmq.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Artifact": "hierfl.inference.artifact",
    "ArtifactMeta": "hierfl.inference.artifact",
    "read_artifact": "hierfl.inference.artifact",
    "write_artifact": "hierfl.inference.artifact",
    "encode_artifact": "hierfl.inference.artifact",
    "decode_artifact": "hierfl.inference.artifact",
    "export_model": "hierfl.inference.export",
    "export_run": "hierfl.inference.export",
    "CompiledModel": "hierfl.inference.compiled",
    "compile_artifact": "hierfl.inference.compiled",
    "InferenceServer": "hierfl.inference.server",
    "ServerConfig": "hierfl.inference.server",
    "Client": "hierfl.inference.client",
    "Prediction": "hierfl.inference.client",
    "ServerInfo": "hierfl.inference.client",
    "ModelPublisher": "hierfl.inference.publisher",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hierfl.inference' has no attribute {name!r}")


__all__ = list(_LAZY)
