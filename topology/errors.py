"""The root of hierfl's exception hierarchy.

It lives here, in the lowest layer, because `hierfl.topology` depends on nothing else of
hierfl and its `TopologyError` must still be a `HierflError`; `hierfl.errors` re-exports it.
"""


class HierflError(Exception):
    """Base class of the errors hierfl raises for bad input or bad state."""
