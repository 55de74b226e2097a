"""Circle: area = pi * radius^2."""

import math
import os

from .common import simulate


def run(params, out):
    """Compute the area, spend the simulated time, and write area.txt."""
    area = math.pi * float(params["radius"]) ** 2
    simulate(params)
    with open(os.path.join(out, "area.txt"), "w", encoding="utf-8") as f:
        f.write(f"{area}\n")
    print(f"circle radius={params['radius']} area={area}", flush=True)
    return area
