"""The exception hierarchy of hierfl.

Every error a user can cause derives from `HierflError`, so a caller can catch ours
without catching programming errors. Topology errors live in `hierfl.topology` (which
depends on nothing of ours) and are re-exported here.
"""

from hierfl.topology import TopologyError
from hierfl.topology.errors import HierflError


class DataError(HierflError, ValueError):
    """A task cannot provide the data the topology asks for (too few samples, bad split)."""


class RunDirError(HierflError, ValueError):
    """A run directory is missing, incomplete or from an incompatible version."""


class ArtifactError(HierflError, ValueError):
    """A model file (.hfl) is corrupt, truncated, of an unknown format version, or cannot run here."""


class ProtocolError(HierflError, ValueError):
    """A message on the wire breaks the protocol (bad header, shape, dtype, size).

    `request_id` is the id the sender gave the message, when it could be read, so an
    error reply can name the request it answers.
    """

    def __init__(self, message: str, *, request_id: int | None = None):
        super().__init__(message)
        self.request_id = request_id


class InferenceError(HierflError):
    """An inference server refused a request, did not answer in time, or cannot do what was asked."""


class SecAggError(HierflError):
    """A secure-aggregation round cannot go on safely (inconsistent request, bad reconstruction)."""


class ThresholdError(SecAggError):
    """Fewer than `threshold` devices answered a secure-aggregation step, so it cannot finish.

    `stage` names the step, `received` how many usable answers came, `threshold` how many
    were needed. Nothing about any single device's update has been revealed.
    """

    def __init__(self, stage: str, received: int, threshold: int, detail: str = ""):
        message = f"secure aggregation failed at {stage}: {received} usable answers, below the threshold t = {threshold}"
        super().__init__(message + (f" ({detail})" if detail else ""))
        self.stage, self.received, self.threshold = stage, received, threshold


class ShareTamperedError(SecAggError):
    """An encrypted Shamir share failed authentication (altered, misrouted or replayed); `sender` sent it."""

    def __init__(self, message: str, *, sender: str):
        super().__init__(message)
        self.sender = sender


class HomomorphicError(HierflError):
    """A homomorphic-encryption step got the wrong key material or mismatched ciphertexts."""


__all__ = [
    "ArtifactError",
    "DataError",
    "HierflError",
    "HomomorphicError",
    "InferenceError",
    "ProtocolError",
    "RunDirError",
    "SecAggError",
    "ShareTamperedError",
    "ThresholdError",
    "TopologyError",
]
