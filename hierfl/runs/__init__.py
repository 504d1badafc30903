"""Run records (run.json, metrics.jsonl, model.npz), scoring, progress and reports."""
