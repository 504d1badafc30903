"""Tasks (model, loss, metrics, data), partitioning, the data plan and evaluation."""
