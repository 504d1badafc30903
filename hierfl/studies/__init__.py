"""Comparison studies the examples and benchmarks run (federated vs local-only vs pooled,
flat baselines). Built on the public API; nothing in the library's core imports it."""
