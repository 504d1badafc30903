"""Loading a topology from a TOML file, TOML text, or a bundled preset.

    topology = load_topology("demo")                    # a bundled preset
    topology = load_topology("plants.toml", choices={"federation.task": tasks})

Loading either returns a complete, checked `Topology` or raises one `TopologyError` that
lists every problem in the file. A file is read only if it is a regular file of at most
MAX_FILE_BYTES (a FIFO or a device such as /dev/zero is refused without reading it), and a
document nested deeper than MAX_DEPTH levels is refused before any check walks it.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import pathlib
import stat
import tomllib
from collections.abc import Collection, Mapping
from importlib.resources.abc import Traversable

from .schema import Topology, TopologyError
from .validate import build_topology

_PRESETS = importlib.resources.files(__package__) / "presets"
MAX_FILE_BYTES = 10 << 20
"""The largest topology file read: 10 MiB is a million-device topology with room to spare."""
MAX_DEPTH = 32
"""The deepest nesting of tables and arrays accepted; a topology needs about six levels."""


def preset_names() -> tuple[str, ...]:
    """The names of the bundled presets (`bearing`, `demo`, `large`), sorted."""
    return tuple(
        sorted(
            entry.name.removesuffix(".toml")
            for entry in _PRESETS.iterdir()
            if entry.name.endswith(".toml")
        )
    )


def preset_path(name: str) -> Traversable:
    """The bundled preset file `name` (a `pathlib.Path` when installed as plain files).

    Raises TopologyError if there is no such preset.
    """
    if name not in preset_names():
        raise TopologyError([_not_a_preset(name, "unknown preset")], name)
    return _PRESETS / f"{name}.toml"


def load_topology(
    source: str | os.PathLike[str], *, choices: Mapping[str, Collection[str]] | None = None
) -> Topology:
    """The topology in the TOML file `source`, or else in the bundled preset named `source`.

    An existing path always wins over a preset of the same name. `choices` maps
    `federation.<field>` to its allowed values, e.g. `{"federation.task": {"digits"}}`.
    Raises TopologyError for a missing or unreadable file and for every problem in it.
    """
    path = pathlib.Path(source)
    if path.exists():
        return parse_topology(_read_text(path), str(path), choices=choices)
    name = os.fspath(source)
    if name in preset_names():
        return parse_topology(preset_path(name).read_text(encoding="utf-8"), name, choices=choices)
    raise TopologyError([_not_a_preset(name, "no such file, and no preset of that name")], name)


def parse_topology(
    text: str, source: str = "<string>", *, choices: Mapping[str, Collection[str]] | None = None
) -> Topology:
    """The topology declared by TOML `text`; `source` names it in messages and in `Topology.source`.

    Raises TopologyError for a TOML syntax error (with tomllib's line and column) or for
    every problem in the document.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TopologyError([f"TOML syntax error: {error}"], source) from None
    except RecursionError:  # tomllib parses nested inline tables and arrays recursively
        raise TopologyError(
            [
                f"inline tables or arrays nest too deeply to parse (at most {MAX_DEPTH} levels are accepted)"
            ],
            source,
        ) from None
    too_deep = _too_deep(document)
    if too_deep is not None:
        raise TopologyError(
            [
                f"{too_deep}: nested more than {MAX_DEPTH} tables or arrays deep; a topology needs about six"
            ],
            source,
        )
    return build_topology(document, source, choices)


def _too_deep(document: dict) -> str | None:
    """The path of a value nested more than MAX_DEPTH levels deep in `document`, or None (no recursion)."""
    stack: list[tuple[dict | list, str, int]] = [(document, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return path
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in children:
            if isinstance(child, (dict, list)):  # scalars add no depth: skip them unnamed
                name = f"[{key}]" if isinstance(value, list) else f".{key}" if path else str(key)
                stack.append((child, path + name, depth + 1))
    return None


def _read_text(path: pathlib.Path) -> str:
    """The text of a regular file of at most MAX_FILE_BYTES; TopologyError, without blocking, otherwise."""
    try:
        _check_regular(os.stat(path).st_mode, path)
        # O_NONBLOCK: should a FIFO replace the file after the check, opening it does not wait for a writer
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise TopologyError([f"cannot read file: {error.strerror}"], str(path)) from None
    try:
        info = os.fstat(descriptor)
        _check_regular(info.st_mode, path)
        if info.st_size > MAX_FILE_BYTES:
            raise TopologyError(
                [f"is {info.st_size:,} bytes; a topology file may have at most {MAX_FILE_BYTES:,}"],
                str(path),
            )
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES and (chunk := os.read(descriptor, 1 << 20)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise TopologyError([f"cannot read file: {error.strerror}"], str(path)) from None
    finally:
        os.close(descriptor)
    if size > MAX_FILE_BYTES:  # it grew while being read
        raise TopologyError(
            [f"is more than {MAX_FILE_BYTES:,} bytes, the most a topology file may have"], str(path)
        )
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TopologyError(
            [f"not UTF-8 text: {error.reason} at byte {error.start}"], str(path)
        ) from None


def _check_regular(mode: int, path: pathlib.Path) -> None:
    """TopologyError unless `mode` is a regular file's: a FIFO would block, /dev/zero never end."""
    if stat.S_ISDIR(mode):
        raise TopologyError(["is a directory, expected a TOML file"], str(path))
    if not stat.S_ISREG(mode):
        raise TopologyError(
            [f"is not a regular file (a {_file_kind(mode)}), expected a TOML file"], str(path)
        )


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _not_a_preset(name: str, reason: str) -> str:
    names = preset_names()
    message = f"{reason} (presets: {', '.join(names)})"
    close = difflib.get_close_matches(name, names, n=1)
    return message + (f"; did you mean '{close[0]}'?" if close else "")
