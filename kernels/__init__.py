"""hierfl.kernels: pure JAX array kernels for every tier (aggregation, later compression and noise).

Kernels take stacked arrays with a leading update axis and return arrays; they do no I/O
and know nothing of topologies, so the simulator and the runtime call the same code.
"""

from hierfl.kernels.aggregation import segment_weighted_sum, weighted_sum

__all__ = ["segment_weighted_sum", "weighted_sum"]
