"""Run the suite's jobs on a local Ray cluster (one cluster for every job, to pay its start once).

Usage: python bench/ray_driver.py PLAN.json RESULT.json

PLAN: {"slots": S_max, "jobs": [{"key": ..., "commands": [[argv], ...], "slots": S}, ...]}.
The cluster declares S_max CPUs and S_max GPUs (``ray.init(num_cpus=S, num_gpus=S)``, which
works on a machine without GPUs); each task asks for S_max/S GPUs, so a job runs at most S
tasks at once, and runs its command with ``subprocess.run`` in a reused worker
(``max_calls=0``; GPU tasks otherwise start a fresh worker process for every task).
RESULT: {"init": s, "warmup": s, "shutdown": s, "jobs": {key: {"wall": s, "rc": ...}}}.
"""

import json
import os
import subprocess
import sys
import time


def main(plan_path, result_path):
    """Start Ray, run every job of the plan in order, write the timings."""
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    smax = int(plan["slots"])
    out = {"jobs": {}}

    def save():
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump(out, f)

    t0 = time.perf_counter()
    import ray

    # address="local": always a fresh cluster of our own, never one another program started.
    ray.init(address="local", num_cpus=smax, num_gpus=smax, include_dashboard=False,
             log_to_driver=False,
             configure_logging=False)
    out["init"] = time.perf_counter() - t0
    out["ray_version"] = ray.__version__

    @ray.remote(max_calls=0)
    def run(argv):
        return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode

    # Warm-up: start the reused workers once (counted as start-up, not per job).
    t0 = time.perf_counter()
    ray.get([run.options(num_gpus=1).remote(["true"]) for _ in range(smax)])
    out["warmup"] = time.perf_counter() - t0
    save()
    for job in plan["jobs"]:
        per_task = smax / int(job["slots"])
        t0 = time.perf_counter()
        refs = [run.options(num_gpus=per_task).remote(argv) for argv in job["commands"]]
        codes = ray.get(refs)
        wall = time.perf_counter() - t0
        bad = sum(1 for c in codes if c != 0)
        out["jobs"][job["key"]] = {"wall": wall, "rc": 0 if not bad else 1, "failed_tasks": bad}
        save()
        print(f"ray {job['key']}: {wall:.3f} s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    ray.shutdown()
    out["shutdown"] = time.perf_counter() - t0
    save()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main(sys.argv[1], sys.argv[2]))
