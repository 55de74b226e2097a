"""Dispatch overhead per task: the Ray executor next to the local one, on this machine.

Both runs go through the real Engine, in this one script: N tasks whose command is
``true`` (so nearly all the time is slotrun's own: queue, start, watch, exit, record), on
S simulated GPUs with one slot each. The Ray run uses a one-node Ray cluster started here
(``ray.init(num_gpus=S)`` declares the GPUs), once with the workspace shipped to the node
(the default) and once with ``ray_shared_fs`` on. A warm-up batch first pays the one-off
costs (Ray's agent start, the workspace bundle) outside the timing.

Usage: python bench/ray_overhead.py [--tasks 200] [--slots 4] [--json FILE]
Prints the wall time per task and per task per slot (the dispatch overhead of one slot).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


class Done:
    """Counts final task events published by the engine; set when ``n`` have ended."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ended = set()
        self.want = None
        self.event = threading.Event()

    def expect(self, ids):
        """Wait (through ``event``) for these task ids to end."""
        with self.lock:
            self.want = set(ids)
            self.event.clear()
            if self.want <= self.ended:
                self.event.set()

    def __call__(self, event, payload):
        if event == "task" and payload.get("state") in FINAL:
            with self.lock:
                self.ended.add(payload["id"])
                if self.want is not None and self.want <= self.ended:
                    self.event.set()


def make_workspace(path, n):
    """Create a workspace with ``n`` trivial configs."""
    os.makedirs(os.path.join(path, "configs", "bench"), exist_ok=True)
    for i in range(n):
        with open(os.path.join(path, "configs", "bench", f"t-{i:04d}.yaml"), "w",
                  encoding="utf-8") as f:
            f.write(f"model_params:\n  name: circle\n  radius: {i}\n")
    with open(os.path.join(path, "run.py"), "w", encoding="utf-8") as f:
        f.write("# the benchmark's tasks run `true`\n")
    return path


def run_engine(ws, inventory, executor, devices, tasks, extra=None):
    """Run a warm-up batch, then ``tasks`` tasks of `true`; return the timed wall seconds."""
    from app import settings as settings_mod
    from app.scheduler import Engine, state_dir
    from app.store import Store

    s = settings_mod.load({"workspace": ws, **(extra or {})})
    store = Store(os.path.join(state_dir(ws), "state.db"))
    done = Done()
    limits = {d: 1 for d in devices}
    eng = Engine(s, store, inventory, publish=done, executor=executor, limits=limits).start()
    configs = sorted(f"configs/bench/{n}" for n in os.listdir(os.path.join(ws, "configs", "bench")))
    try:
        warm = eng.submit(configs[:len(devices) * 2], "bench", command="true", overwrite=True)
        done.expect(t["id"] for t in warm["tasks"])
        if not done.event.wait(120):
            raise SystemExit("the warm-up batch did not finish")
        t0 = time.perf_counter()
        b = eng.submit(configs[:tasks], "bench", command="true", overwrite=True)
        done.expect(t["id"] for t in b["tasks"])
        if not done.event.wait(600):
            raise SystemExit("the timed batch did not finish")
        wall = time.perf_counter() - t0
        counts = store.get_batch(b["id"])["counts"]
        if counts != {"succeeded": tasks}:
            raise SystemExit(f"not every task succeeded: {counts}")
        return wall
    finally:
        eng.stop()
        store.close()


def main(argv=None):
    """Measure and print the per-task wall time of the local and the Ray executor."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    args = p.parse_args(argv)
    n, slots = args.tasks, args.slots
    base = tempfile.mkdtemp(prefix="slotrun-ray-bench-")
    results = {"tasks": n, "slots": slots, "cpus": os.cpu_count()}
    try:
        from app.devices import SimulatedInventory
        from app.executors.local import LocalExecutor

        ws = make_workspace(os.path.join(base, "local"), n)
        wall = run_engine(ws, SimulatedInventory(slots), LocalExecutor(None),
                          [f"gpu{i}" for i in range(slots)], n)
        results["local"] = wall

        import ray

        from app.executors.ray import RayExecutor
        from app.executors.ray_inventory import make_inventory

        t0 = time.perf_counter()
        ray.init(num_cpus=1, num_gpus=slots, include_dashboard=False, log_to_driver=False,
                 logging_level="warning")
        results["ray_init"] = time.perf_counter() - t0
        address = ray.get_runtime_context().gcs_address
        for shared in (False, True):
            ws = make_workspace(os.path.join(base, f"ray-{'shared' if shared else 'shipped'}"), n)
            from app import settings as settings_mod

            s = settings_mod.load({"workspace": ws, "executor": "ray", "ray_address": address,
                                   "ray_shared_fs": shared})
            inv = make_inventory(s)
            gpus = [d.id for d in inv.snapshot() if d.kind == "gpu"][:slots]
            wall = run_engine(ws, inv, RayExecutor(None, s), gpus, n,
                              {"executor": "ray", "ray_address": address, "ray_shared_fs": shared})
            results["ray_shared_fs" if shared else "ray"] = wall
        ray.shutdown()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{n} tasks of `true` on {slots} slots ({os.cpu_count()} CPUs), through the Engine:")
    for key, label in (("local", "local executor"), ("ray", "Ray executor (workspace shipped)"),
                       ("ray_shared_fs", "Ray executor (shared filesystem)")):
        wall = results[key]
        print(f"  {label:34s} wall {wall:7.2f} s   per task {wall / n * 1000:7.1f} ms   "
              f"per task per slot {wall / n * slots * 1000:7.1f} ms")
    extra = {k: (results[k] - results["local"]) / n * slots * 1000
             for k in ("ray", "ray_shared_fs")}
    print(f"  Ray overhead over local, per task per slot: {extra['ray']:+.1f} ms "
          f"(shared filesystem: {extra['ray_shared_fs']:+.1f} ms)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
