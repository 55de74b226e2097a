"""Rectangle: area = length * width."""

import os

from .common import simulate


def run(params, out):
    """Compute the area, spend the simulated time, and write area.txt."""
    area = float(params["length"]) * float(params["width"])
    simulate(params)
    with open(os.path.join(out, "area.txt"), "w", encoding="utf-8") as f:
        f.write(f"{area}\n")
    print(f"rectangle {params['length']}x{params['width']} area={area}", flush=True)
    return area
