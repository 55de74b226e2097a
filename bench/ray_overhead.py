"""Dispatch overhead per task: the Ray executor next to the local one, on this machine.

Both runs go through the real Engine, in this one script: N tasks whose command is
``true`` (so nearly all the time is slotrun's own: queue, start, watch, exit, record), on
S simulated GPUs with one slot each. The Ray run uses a one-node Ray cluster started here
(``ray.init(num_gpus=S)`` declares the GPUs), once with the workspace shipped to the node
(the default) and once with ``ray_shared_fs`` on. A warm-up batch first pays the one-off
costs (Ray's agent start, the workspace bundle) outside the timing.

A batch counts as finished when every task's end is written down in the store (the engine
publishes an end, refills the slot, and records the end right after), and every task must
have succeeded.

Usage: python bench/ray_overhead.py [--tasks 200] [--slots 4] [--repeat 1] [--json FILE]
Prints the wall time per task of each executor, and what Ray adds per task over the local
executor (the median over the repetitions when ``--repeat`` is more than 1).
"""

import argparse
import json
import os
import shutil
import statistics
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


def wait_written(store, batch_id, tasks, timeout=60):
    """Wait until every task of a batch has its end written down; return the counts."""
    deadline = time.monotonic() + timeout
    while True:
        counts = store.get_batch(batch_id)["counts"]
        if sum(n for state, n in counts.items() if state in FINAL) >= tasks:
            return counts
        if time.monotonic() > deadline:
            raise SystemExit(f"the ends were not written down within {timeout} s: {counts}")
        time.sleep(0.002)


def run_engine(ws, inventory, executor, devices, tasks, extra=None, repeat=1):
    """Run a warm-up batch, then ``repeat`` batches of ``tasks`` tasks of `true`; return the
    wall seconds of each, from the submit until every end is written down."""
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
        wait_written(store, warm["id"], len(warm["tasks"]))
        walls = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            b = eng.submit(configs[:tasks], "bench", command="true", overwrite=True)
            done.expect(t["id"] for t in b["tasks"])
            if not done.event.wait(600):
                raise SystemExit("the timed batch did not finish")
            counts = wait_written(store, b["id"], tasks)
            walls.append(time.perf_counter() - t0)
            if counts != {"succeeded": tasks}:
                raise SystemExit(f"not every task succeeded: {counts}")
        return walls
    finally:
        eng.stop()
        store.close()


def main(argv=None):
    """Measure and print the per-task wall time of the local and the Ray executor."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1, help="timed batches per executor")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    args = p.parse_args(argv)
    n, slots, repeat = args.tasks, args.slots, max(1, args.repeat)
    base = tempfile.mkdtemp(prefix="slotrun-ray-bench-")
    # The simulated GPUs' memory files: this run's own, never a folder someone else uses.
    os.environ["SLOTRUN_FAKE_GPU_DIR"] = os.path.join(base, "fakegpu")
    results = {"tasks": n, "slots": slots, "repeat": repeat, "cpus": os.cpu_count()}
    try:
        from app.devices import SimulatedInventory
        from app.executors.local import LocalExecutor

        ws = make_workspace(os.path.join(base, "local"), n)
        results["local"] = run_engine(ws, SimulatedInventory(slots), LocalExecutor(None),
                                      [f"gpu{i}" for i in range(slots)], n, repeat=repeat)

        import ray

        from app import settings as settings_mod
        from app.executors.ray import RayExecutor
        from app.executors.ray_inventory import make_inventory

        t0 = time.perf_counter()
        # address="local": a fresh one-node cluster of our own, never one started by others.
        ray.init(address="local", num_cpus=1, num_gpus=slots, include_dashboard=False,
                 log_to_driver=False, logging_level="warning")
        results["ray_init"] = time.perf_counter() - t0
        results["ray_version"] = ray.__version__
        address = ray.get_runtime_context().gcs_address
        for shared in (False, True):
            ws = make_workspace(os.path.join(base, f"ray-{'shared' if shared else 'shipped'}"), n)
            s = settings_mod.load({"workspace": ws, "executor": "ray", "ray_address": address,
                                   "ray_shared_fs": shared})
            inv = make_inventory(s)
            gpus = [d.id for d in inv.snapshot() if d.kind == "gpu"][:slots]
            results["ray_shared_fs" if shared else "ray"] = run_engine(
                ws, inv, RayExecutor(None, s), gpus, n,
                {"executor": "ray", "ray_address": address, "ray_shared_fs": shared},
                repeat=repeat)
        ray.shutdown()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    per_task = {k: statistics.median(results[k]) / n * 1000
                for k in ("local", "ray", "ray_shared_fs")}
    results["per_task_ms"] = per_task
    print(f"{n} tasks of `true` on {slots} slots ({os.cpu_count()} CPUs), through the Engine, "
          f"{repeat} timed batch(es) each:")
    for key, label in (("local", "local executor"), ("ray", "Ray executor (workspace shipped)"),
                       ("ray_shared_fs", "Ray executor (shared filesystem)")):
        walls = results[key]
        spread = "" if len(walls) == 1 else \
            f"   (batches {min(walls) / n * 1000:.1f}-{max(walls) / n * 1000:.1f} ms)"
        print(f"  {label:34s} wall {statistics.median(walls):7.2f} s   "
              f"per task {per_task[key]:6.1f} ms{spread}")
    extra = {k: per_task[k] - per_task["local"] for k in ("ray", "ray_shared_fs")}
    results["ray_adds_ms"] = extra
    print(f"  Ray adds per task: {extra['ray']:+.1f} ms with the workspace shipped, "
          f"{extra['ray_shared_fs']:+.1f} ms with a shared filesystem")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
