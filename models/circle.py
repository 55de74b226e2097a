"""Circle: area = pi * radius^2."""

import math
import os

from .common import sim_time, simulate
from .metrics import write_metrics


def run(params, out):
    """Compute the area, spend the simulated time, and write area.txt and metrics.json."""
    radius = float(params["radius"])
    area = math.pi * radius ** 2
    simulate(params)
    with open(os.path.join(out, "area.txt"), "w", encoding="utf-8") as f:
        f.write(f"{area}\n")
    write_metrics(out, {"area": area, "circumference": 2 * math.pi * radius,
                        "time": {"sim_seconds": sim_time(params)}})
    print(f"circle radius={params['radius']} area={area}", flush=True)
    return area
