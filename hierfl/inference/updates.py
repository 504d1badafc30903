"""Where a server's new model versions come from, and how they are made ready off the serving path.

An `UpdateLoader` thread listens to a model publisher (SUB socket) and/or watches a
directory for `.hfl` files. For each artifact it has not seen before (by checksum) it
checks the file, checks that it is compatible with what the server serves (same input
signature and classes, so clients need not change), compiles and warms it up, and only
then hands the ready `CompiledModel` to the serving thread through `updates`. The serving
thread swaps it in between two batches; it never waits for a load.

A server started with a plant's own model (`hierfl export --plant`) takes only that plant's
later models, and a server of the global model only global ones (`incompatibility`).

A watched directory's files present when the server starts are taken as already known:
the server serves the model it was started with. Later, new or changed `.hfl` files are
tried newest first, and the first that loads is swapped in. A file that fails its checksum (still being copied in) is tried again when
it changes; writing with `write_artifact` (temporary file + rename) avoids that.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import NamedTuple

import zmq

from hierfl.errors import ArtifactError, ProtocolError
from hierfl.inference.artifact import (
    SUFFIX,
    ArtifactMeta,
    decode_artifact,
    file_checksum,
    read_header,
)
from hierfl.inference.compiled import CompiledModel, compile_artifact
from hierfl.inference.publisher import MAX_ARTIFACT_BYTES, decode_publication, subscribe

log = logging.getLogger("hierfl.inference")

FileStamp = tuple[int, int]
"""(mtime in ns, size in bytes): a file counts as changed when either does."""


class Update(NamedTuple):
    """What the loader hands the serving thread: a ready `model`, or the `error` that kept one out."""

    source: str
    model: CompiledModel | None = None
    error: str | None = None


def scan_directory(directory: Path) -> dict[Path, FileStamp]:
    """{path: (mtime_ns, size)} of the visible `.hfl` files directly in `directory` ({} if it is missing)."""
    stamps = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return {}
    for entry in entries:
        if entry.name.endswith(SUFFIX) and not entry.name.startswith(".") and entry.is_file():
            stat = entry.stat()
            stamps[Path(entry.path)] = (stat.st_mtime_ns, stat.st_size)
    return stamps


def changed_files(before: dict[Path, FileStamp], after: dict[Path, FileStamp]) -> list[Path]:
    """Files in `after` that are new or changed since `before`, newest first."""
    changed = [path for path, stamp in after.items() if before.get(path) != stamp]
    return sorted(changed, key=lambda path: (after[path][0], str(path)), reverse=True)


def plant_of(meta: ArtifactMeta) -> str | None:
    """The plant whose own model `meta` describes (`hierfl export --plant`, a plant's edge
    publishing), None for a global model."""
    plant = meta.run.get("plant")
    return plant if isinstance(plant, str) else None


def describe_owner(plant: str | None) -> str:
    return "the global model" if plant is None else f"plant {plant!r}'s own model"


def incompatibility(served: ArtifactMeta, new: ArtifactMeta) -> str | None:
    """Why `new` cannot replace `served` under the same clients, or None if it can: other
    inputs or classes, or another plant's model (a plant's server serves that plant's models
    only; a server of the global model, global models only)."""
    if plant_of(new) != plant_of(served):
        return (
            f"it is {describe_owner(plant_of(new))}, this server serves "
            f"{describe_owner(plant_of(served))}"
        )
    if (new.input_shape, new.input_dtype) != (served.input_shape, served.input_dtype):
        return (
            f"it takes inputs [n, {', '.join(map(str, new.input_shape))}] {new.input_dtype}, "
            f"the served model [n, {', '.join(map(str, served.input_shape))}] {served.input_dtype}"
        )
    if new.class_names != served.class_names:
        return f"its classes {list(new.class_names)} differ from the served model's {list(served.class_names)}"
    return None


class UpdateLoader:
    """A thread that turns publications and new files into ready models on the `updates` queue.

    `first` is the model the server starts with: the reference for compatibility and the
    first candidate for sharing compiled executables. `stop()` ends the thread within
    about `poll_interval` seconds.
    """

    def __init__(
        self,
        context: zmq.Context,
        first: CompiledModel,
        *,
        max_batch: int,
        subscribe_to: str | None = None,
        watch: str | os.PathLike | None = None,
        watch_interval: float = 0.5,
        poll_interval: float = 0.1,
        max_artifact_bytes: int = MAX_ARTIFACT_BYTES,
    ):
        self.updates: queue.Queue[Update] = queue.Queue()
        self._context = context
        self._reference = first
        self._last = first
        self._seen = {first.checksum}
        self._max_batch = max_batch
        self._subscribe_to = subscribe_to
        self._watch = Path(watch) if watch is not None else None
        self._watch_interval = watch_interval
        self._poll_interval = poll_interval
        self._max_bytes = max_artifact_bytes
        self._stopping = threading.Event()
        self._known_files = scan_directory(self._watch) if self._watch is not None else {}
        self._thread = threading.Thread(target=self._run, name="hierfl-model-updates", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        socket = (
            subscribe(self._context, self._subscribe_to, self._max_bytes)
            if self._subscribe_to
            else None
        )
        next_scan = time.monotonic() + self._watch_interval
        try:
            while not self._stopping.is_set():
                if socket is not None:
                    if socket.poll(self._poll_interval * 1000):
                        self._receive(socket)
                else:
                    self._stopping.wait(self._poll_interval)
                if self._watch is not None and time.monotonic() >= next_scan:
                    self._scan()
                    next_scan = time.monotonic() + self._watch_interval
        finally:
            if socket is not None:
                socket.close(linger=0)

    def _receive(self, socket: zmq.Socket) -> None:
        frames = socket.recv_multipart(copy=False)
        source = f"publisher {self._subscribe_to}"
        try:
            publication = decode_publication(frames, self._max_bytes)
        except ProtocolError as err:
            self.updates.put(Update(source, error=f"bad publication: {err}"))
            return
        self._consider(publication.data, f"{source} (version {publication.header.get('version')})")

    def _scan(self) -> None:
        files = scan_directory(self._watch)
        changed = changed_files(self._known_files, files)
        self._known_files = files
        for (
            path
        ) in changed:  # newest first; once one loads, older ones would only be swapped out again
            try:
                data = path.read_bytes()
            except OSError as err:
                self.updates.put(Update(str(path), error=f"cannot read: {err.strerror or err}"))
                continue
            if self._consider(data, str(path)):
                return

    def _consider(self, data, source: str) -> bool:
        """Checks, compiles and warms up one artifact, unless it was seen before; posts the outcome.

        True if a new model was posted.
        """
        try:
            read_header(data, source)  # magic, format version and checksum before anything else
            checksum = file_checksum(data)
            if checksum in self._seen:
                return False
            self._seen.add(checksum)
            artifact = decode_artifact(data, source)
            reason = incompatibility(self._reference.meta, artifact.meta)
            if reason is not None:
                raise ArtifactError(f"{source}: cannot replace the served model: {reason}")
            log.info(
                "loading %s %s version %d from %s",
                artifact.meta.task,
                artifact.meta.model,
                artifact.meta.version,
                source,
            )
            model = compile_artifact(
                artifact, checksum=checksum, max_batch=self._max_batch, reuse=self._last
            )
        except ArtifactError as err:
            self.updates.put(Update(source, error=str(err)))
            return False
        except (
            Exception
        ) as err:  # a failure in XLA must not end the thread; it is logged and reported
            log.exception("loading a model from %s failed", source)
            self.updates.put(Update(source, error=f"{type(err).__name__}: {err}"))
            return False
        self._last = model
        self.updates.put(Update(source, model=model))
        return True
