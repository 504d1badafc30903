"""`hierfl new DIR --template tabular|images|timeseries`: a runnable starter project.

A starter is what a user's own project looks like: a topology (`topology.toml`), a task
module beside it (a model, the classes or targets, a loader) and each device's data in its
own file or folder, with a held-out test set per plant, so that `hierfl simulate` and
`hierfl launch` work on it as written. The data is synthetic, generated from a seed by the
template's module (`tabular`, `images`, `timeseries`), with plants that differ.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from hierfl.errors import HierflError
from hierfl.starters import images, tabular, timeseries
from hierfl.starters.layout import LAYOUT

TEMPLATES = {"tabular": tabular, "images": images, "timeseries": timeseries}
"""Each template's data writer, by name; its files are in `templates/<name>/`."""


def write_starter(directory: str | Path, template: str, seed: int = 0) -> list[Path]:
    """Writes the starter `template` into `directory` (new or empty); returns the files written.

    Raises HierflError for an unknown template or a folder that already has files.
    """
    if template not in TEMPLATES:
        raise HierflError(
            f"unknown template {template!r} (choose from: {', '.join(sorted(TEMPLATES))})"
        )
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise HierflError(f"{directory}: exists and is not an empty folder; choose a new one")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    source = resources.files("hierfl.starters") / "templates" / template
    for item in sorted(source.iterdir(), key=lambda entry: entry.name):
        if item.name.endswith((".py", ".toml")):
            target = directory / item.name
            with resources.as_file(item) as path:
                shutil.copyfile(path, target)
            written.append(target)
    module = TEMPLATES[template]
    devices = {
        (plant, line): tuple(f"{module.DEVICE}-{i}" for i in (1, 2, 3))
        for plant, lines in LAYOUT.items()
        for line in lines
    }
    written += module.write_data(directory / "data", devices, seed)
    return written
