"""`hierfl dashboard`: a live web view of a run directory, and its figures for Prometheus.

A pure reader: it reads `run.json`, `metrics.jsonl` and the live status files the cloud,
the edges and inference servers write (`hierfl.runs.live`), and never talks to a node.
`view` turns the files into the page's state, `prometheus` into `/metrics`, `app` serves
both with the page (`static/`).
"""
