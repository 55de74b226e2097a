"""Compare one memory-hungry batch on simulated GPUs with admission on and off.

16 tasks, each holding 10 GiB of (simulated) GPU memory for 2 s, on 2 simulated 24 GiB GPUs
with 4 slots each: at the configured N_i, 4 x 10 GiB overflows a GPU. Prints, for each mode,
the tasks, the out-of-memory crashes, the failed tasks and the makespan.

    python bench/admission_compare.py [--tasks 16] [--seconds 2]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from app import settings as settings_mod  # noqa: E402
from app.devices import open_inventory  # noqa: E402
from app.scheduler import Engine, state_dir  # noqa: E402
from app.store import Store  # noqa: E402

FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


def run(admission, tasks, seconds, declared):
    ws = tempfile.mkdtemp(prefix="slotrun-admission-")
    try:
        shutil.copy(os.path.join(ROOT, "run.py"), ws)
        shutil.copytree(os.path.join(ROOT, "models"), os.path.join(ws, "models"))
        folder = os.path.join(ws, "configs", "mem")
        os.makedirs(folder)
        key = "gpu_memory" if declared else "sim_gpu_memory"
        for i in range(tasks):
            with open(os.path.join(folder, f"mem-{i}.yaml"), "w") as f:
                f.write(f"model_params:\n  name: circle\n  radius: {i + 1}\n  sim_time: {seconds}\n"
                        f"  {key}: [[0, 1GiB], [0.2, 10GiB]]\n")
        os.environ["SLOTRUN_FAKE_GPUS"] = "2"
        os.environ["SLOTRUN_FAKE_GPU_DIR"] = os.path.join(ws, "fakegpu")
        os.environ.pop("SLOTRUN_SIM_TIME", None)
        s = settings_mod.load({"workspace": ws, "gpu_slots": 4, "cpu_slots": 0,
                               "admission": admission})
        store = Store(os.path.join(state_dir(ws), "state.db"))
        eng = Engine(s, store, open_inventory()).start()
        t0 = time.monotonic()
        b = eng.submit([f"configs/mem/mem-{i}.yaml" for i in range(tasks)], "bench")
        ids = [t["id"] for t in b["tasks"]]
        while not all(store.get_task(i)["state"] in FINAL for i in ids):
            time.sleep(0.05)
        makespan = time.monotonic() - t0
        eng.stop()
        attempts = [a for i in ids for a in store.attempts(i)]
        ooms = sum("out of memory" in (a["message"] or "") for a in attempts)
        failed = sum(store.get_task(i)["state"] != "succeeded" for i in ids)
        return {"tasks": tasks, "oom_crashes": ooms, "failed": failed, "makespan_s": makespan}
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def main():
    """Run the comparison and print a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    rows = []
    for label, admission, declared in (("admission on, need declared", True, True),
                                       ("admission on, need learned", True, False),
                                       ("admission off", False, True)):
        r = run(admission, args.tasks, args.seconds, declared)
        rows.append((label, r))
        print(f"{label:30} tasks={r['tasks']} oom_crashes={r['oom_crashes']} "
              f"failed={r['failed']} makespan={r['makespan_s']:.1f}s", flush=True)


if __name__ == "__main__":
    main()
