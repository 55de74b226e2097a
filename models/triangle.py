"""Triangle: area = base * height / 2."""

import os

from .common import simulate


def run(params, out):
    """Compute the area, spend the simulated time, and write area.txt."""
    area = float(params["base"]) * float(params["height"]) / 2
    simulate(params)
    with open(os.path.join(out, "area.txt"), "w", encoding="utf-8") as f:
        f.write(f"{area}\n")
    print(f"triangle base={params['base']} height={params['height']} area={area}", flush=True)
    return area
