"""The vectorized simulator: the whole tree in one process, over the core's steps."""
