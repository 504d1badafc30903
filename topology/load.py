"""Loading a topology from a TOML file, TOML text, or a bundled preset.

    topology = load_topology("demo")                    # a bundled preset
    topology = load_topology("plants.toml", choices={"federation.task": tasks})

Loading either returns a complete, checked `Topology` or raises one `TopologyError` that
lists every problem in the file.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import pathlib
import tomllib
from collections.abc import Collection, Mapping
from importlib.resources.abc import Traversable

from .schema import Topology, TopologyError
from .validate import build_topology

_PRESETS = importlib.resources.files(__package__) / "presets"


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
    return build_topology(document, source, choices)


def _read_text(path: pathlib.Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise TopologyError(["is a directory, expected a TOML file"], str(path)) from None
    except OSError as error:
        raise TopologyError([f"cannot read file: {error.strerror}"], str(path)) from None
    except UnicodeDecodeError as error:
        raise TopologyError(
            [f"not UTF-8 text: {error.reason} at byte {error.start}"], str(path)
        ) from None


def _not_a_preset(name: str, reason: str) -> str:
    names = preset_names()
    message = f"{reason} (presets: {', '.join(names)})"
    close = difflib.get_close_matches(name, names, n=1)
    return message + (f"; did you mean '{close[0]}'?" if close else "")
