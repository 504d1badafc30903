"""Tasks by name: the registry the topology's `federation.task` and `federation.model` refer to."""

from __future__ import annotations

from hierfl.data.tasks import bearing, bearing_rul, digits, energy, steel_defects
from hierfl.data.tasks.base import PlantData, PlantRequest, Task

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        digits.TASK,
        bearing.TASK,
        bearing_rul.TASK,
        steel_defects.TASK,
        energy.FORECAST,
        energy.APPLIANCES,
    )
}


def get_task(name: str) -> Task:
    """The task called `name`; KeyError listing the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})") from None


__all__ = ["TASKS", "PlantData", "PlantRequest", "Task", "get_task"]
