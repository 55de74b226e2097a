"""Write a model's numbers to metrics.json in its results folder (slotrun's results table
reads every number in it; nested keys become dotted names such as time.sim_seconds)."""

import json
import os


def write_metrics(out, metrics):
    """Write ``metrics`` (a mapping of numbers, possibly nested) to out/metrics.json atomically."""
    path = os.path.join(out, "metrics.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, path)  # a reader never sees half a file
