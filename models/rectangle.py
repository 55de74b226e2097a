"""Rectangle: area = length * width."""

import math
import os

from .common import sim_time, simulate
from .metrics import write_metrics


def run(params, out):
    """Compute the area, spend the simulated time, and write area.txt and metrics.json."""
    length, width = float(params["length"]), float(params["width"])
    area = length * width
    simulate(params)
    with open(os.path.join(out, "area.txt"), "w", encoding="utf-8") as f:
        f.write(f"{area}\n")
    write_metrics(out, {"area": area, "perimeter": 2 * (length + width),
                        "diagonal": math.hypot(length, width),
                        "time": {"sim_seconds": sim_time(params)}})
    print(f"rectangle {params['length']}x{params['width']} area={area}", flush=True)
    return area
