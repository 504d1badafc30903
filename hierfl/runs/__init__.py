"""Run records (run.json, metrics.jsonl, model.npz) written once for both engines, progress
and reports."""
