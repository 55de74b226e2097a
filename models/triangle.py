"""Triangle: area = base * height / 2."""

import os

from .common import sim_time, simulate
from .metrics import write_metrics


def run(params, out):
    """Compute the area, spend the simulated time, and write area.txt and metrics.json."""
    base, height = float(params["base"]), float(params["height"])
    area = base * height / 2
    simulate(params)
    with open(os.path.join(out, "area.txt"), "w", encoding="utf-8") as f:
        f.write(f"{area}\n")
    write_metrics(out, {"area": area, "aspect": height / base if base else None,
                        "time": {"sim_seconds": sim_time(params)}})
    print(f"triangle base={params['base']} height={params['height']} area={area}", flush=True)
    return area
