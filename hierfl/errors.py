"""The exception hierarchy of hierfl.

Every error a user can cause derives from `HierflError`, so a caller can catch ours
without catching programming errors. Topology errors live in `hierfl.topology` (which
depends on nothing of ours) and are re-exported here.
"""

from hierfl.topology import TopologyError


class HierflError(Exception):
    """Base class of the errors hierfl raises for bad input or bad state."""


class DataError(HierflError, ValueError):
    """A task cannot provide the data the topology asks for (too few samples, bad split)."""


class RunDirError(HierflError, ValueError):
    """A run directory is missing, incomplete or from an incompatible version."""


__all__ = ["HierflError", "DataError", "RunDirError", "TopologyError"]
