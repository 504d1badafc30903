"""Finding the task a topology names: a bundled task's name, or the user's `module:attribute`.

`task = "my_plants.tasks:press_failure"` imports `my_plants.tasks` (from `sys.path`, with
the topology file's folder put first, so a task module beside the topology is found the
same way by every command and process) and takes its attribute `press_failure`, which
must be a `Task` (built with `hierfl.task`). Every failure is a `TaskImportError` that
says which of these steps went wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

from hierfl.data.tasks import TASKS
from hierfl.data.tasks.base import Task
from hierfl.errors import HierflError

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class TaskImportError(HierflError, ValueError):
    """The topology's `task` names no bundled task and no importable `Task`."""


def resolve_task(name: str, folder: Path | None = None) -> Task:
    """The bundled task `name`, or the `Task` at import string `module:attribute`.

    `folder` (the topology file's folder) is searched before `sys.path`.
    """
    if name in TASKS:
        return TASKS[name]
    if ":" not in name:
        raise TaskImportError(
            f"unknown task {name!r}: name a bundled task ({', '.join(sorted(TASKS))}) or your "
            "own as 'module:attribute', e.g. 'my_plants.tasks:press_failure'"
        )
    module_name, _, attribute = name.partition(":")
    for part, what in ((module_name, "module"), (attribute, "attribute")):
        if not _DOTTED.fullmatch(part):
            raise TaskImportError(
                f"task {name!r}: {part!r} is not a {what} name (dotted Python identifiers)"
            )
    module = _import(module_name, folder)
    value = module
    for step in attribute.split("."):
        if not hasattr(value, step):
            raise TaskImportError(
                f"task {name!r}: module {module_name!r} ({_origin(module)}) has no attribute "
                f"{attribute!r}"
            )
        value = getattr(value, step)
    if not isinstance(value, Task):
        raise TaskImportError(
            f"task {name!r} is a {type(value).__name__}, not a task; build one with hierfl.task(...)"
        )
    return value


def topology_folder(source: str) -> Path | None:
    """The folder of the topology file `source` (a path), None for a preset or a string."""
    path = Path(source)
    return path.resolve().parent if path.is_file() else None


def _import(module_name: str, folder: Path | None):
    if folder is not None and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        beside = _module_beside(module_name, folder)
        if beside is not None:
            return _load_file(module_name, beside)
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            where = f"{folder} and sys.path" if folder else "sys.path"
            raise TaskImportError(
                f"task module {module_name!r} not found (looked in {where})"
            ) from None
        raise TaskImportError(
            f"importing task module {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    except Exception as error:  # the user's module raised while importing: say what and where
        raise TaskImportError(
            f"importing task module {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None


def _module_beside(module_name: str, folder: Path | None) -> Path | None:
    """`folder/<module_name>.py` if it exists: a task module kept beside its topology."""
    if folder is None or "." in module_name:
        return None
    path = folder / f"{module_name}.py"
    return path.resolve() if path.is_file() else None


def _load_file(module_name: str, path: Path):
    """The module in `path`, imported as `module_name`, unless that module is already this
    file: two topologies in one process (a notebook, tests) may each have a `tasks.py`."""
    existing = sys.modules.get(module_name)
    if existing is not None and getattr(existing, "__file__", None):
        if Path(existing.__file__).resolve() == path:
            return existing
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _origin(module) -> str:
    return getattr(module, "__file__", None) or "built-in"
