"""The workloads of the suite (issue 5), at full and smoke sizes, and how their runs are scored."""

import os
import random
import shutil

from .common import PY, REPO, TASKS, clean_env, median, percentile, scratch, remove, timed
from .tools import STAMPS, Job

SEED = 5  # W2 and the slot-gap durations are drawn from this seed, identical for every tool


def w1_job(smoke):
    """W1 dispatch: 1,000 tasks of `true` on 8 slots."""
    n = 16 if smoke else 1000
    return Job("w1", ["true"], [f"t{i:04d}" for i in range(n)], 8)


def w2_job(smoke):
    """W2 utilisation: 160 tasks sleeping 0.05-0.40 s (seeded) on 8 slots."""
    rng = random.Random(SEED)
    n, lo, hi = (16, 0.02, 0.06) if smoke else (160, 0.05, 0.40)
    durations = [round(rng.uniform(lo, hi), 3) for _ in range(n)]
    return Job("w2", ["sleep"], [f"{d:.3f}" for d in durations], 8, durations=durations)


def w3_job(smoke):
    """W3 Python tasks: 120 runs of a small Python program on 4 slots."""
    n = 4 if smoke else 120
    return Job("w3", [PY, os.path.join(TASKS, "small_task.py")], [str(i) for i in range(n)], 4)


def gap_job(smoke):
    """Slot gap: tasks that stamp their own start and end, 4 slots."""
    rng = random.Random(SEED + 1)
    n = 12 if smoke else 200
    durations = [round(rng.uniform(0.02, 0.06), 3) for _ in range(n)]
    return Job("gap", [PY, "-I", "-S", os.path.join(TASKS, "stamp.py"), STAMPS],
               [f"{d:.3f}" for d in durations], 4, durations=durations, stamps=True)


JOBS = {"w1": w1_job, "w2": w2_job, "w3": w3_job, "gap": gap_job}


# -- scoring ----------------------------------------------------------------------------------

def read_stamps(path):
    """Return [(start_ns, end_ns)] from a stamp file."""
    out = []
    with open(path, encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                out.append((int(parts[0]), int(parts[1])))
    return out


def slot_gaps(stamps, slots):
    """Return the exit-to-next-start gaps in ms.

    Every tool starts exactly one queued task per freed slot, so the k-th exit (in time
    order) frees the slot of the (slots + k)-th start: gap_k = start[slots + k] - end[k].
    This needs no slot numbers from the tool, and is never negative while the tool keeps
    its slot limit.
    """
    starts = sorted(s for s, _ in stamps)
    ends = sorted(e for _, e in stamps)
    return [(starts[slots + k] - ends[k]) / 1e6 for k in range(len(starts) - slots)]


def gap_summary(run_dir, job, launched_ns=None):
    """Return the gap figures of one run from its stamp file (and, given the wall-clock time
    the tool was launched, how long after it the first task ran its first statement)."""
    stamps = read_stamps(os.path.join(run_dir, "stamps.txt"))
    if len(stamps) != len(job.params):
        raise RuntimeError(f"{len(stamps)} of {len(job.params)} tasks recorded their stamps")
    gaps = slot_gaps(stamps, job.slots)
    out = {"gap_median_ms": median(gaps), "gap_p95_ms": percentile(gaps, 95),
           "gap_max_ms": max(gaps), "gaps_ms": [round(g, 3) for g in gaps]}
    if launched_ns is not None:
        out["first_start_ms"] = (min(s for s, _ in stamps) - launched_ns) / 1e6
    return out


def efficiency(job, wall):
    """Return (sum of task durations / slots) / wall."""
    return sum(job.durations) / job.slots / wall


# -- the sample model's start-up ----------------------------------------------------------------

def startup(smoke, out_dir):
    """Time `python run.py -c configs/exp-1/exp-1-1.yaml --overwrite True` (SLOTRUN_SIM_TIME=0)
    against bare interpreter starts, in a copy of the shipped workspace (--overwrite True: the
    sample refuses to run a config whose results are complete, as the original tool's did)."""
    n = 3 if smoke else 15
    ws = scratch(out_dir, "startup")
    try:
        shutil.copy(os.path.join(REPO, "run.py"), ws)
        shutil.copytree(os.path.join(REPO, "models"), os.path.join(ws, "models"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(os.path.join(REPO, "configs"), os.path.join(ws, "configs"))
        env = clean_env(SLOTRUN_SIM_TIME="0")
        cases = {
            "sample model (run.py -c configs/exp-1/exp-1-1.yaml --overwrite True)":
                [PY, "run.py", "-c", "configs/exp-1/exp-1-1.yaml", "--overwrite", "True"],
            "bare interpreter (python -c pass)": [PY, "-c", "pass"],
            "bare interpreter without site (python -I -S -c pass)": [PY, "-I", "-S", "-c", "pass"],
        }
        out = {}
        for _ in range(1):  # one untimed run each: warm caches and .pyc files
            for argv in cases.values():
                timed(argv, cwd=ws, env=env, stdout=open(os.devnull, "wb"))
        samples = {k: [] for k in cases}
        for _ in range(n):
            for k, argv in cases.items():
                with open(os.devnull, "wb") as null:
                    wall, _, rc = timed(argv, cwd=ws, env=env, stdout=null)
                if rc != 0:
                    raise RuntimeError(f"{' '.join(argv)} exited with status {rc}")
                samples[k].append(wall)
        for k, v in samples.items():
            out[k] = {"median": median(v), "min": min(v), "runs": v}
        out["imports"] = _import_times(ws, env)
        return out
    finally:
        remove(ws)


def _import_times(ws, env):
    """Return the slowest imports of the sample model (python -X importtime), cumulative µs."""
    import subprocess

    p = subprocess.run([PY, "-X", "importtime", "run.py", "-c", "configs/exp-1/exp-1-1.yaml"],
                       cwd=ws, env=env, capture_output=True, text=True)
    rows = []
    for line in p.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "cumulative" in line:
            continue
        try:
            cum_us = int(parts[1])
        except ValueError:
            continue
        col = parts[2]
        depth = (len(col) - len(col.lstrip()) - 1) // 2
        if depth == 0:
            rows.append((cum_us, col.strip()))
    rows.sort(reverse=True)
    top = [(cum, name, 0) for cum, name in rows]
    return [{"module": name, "cumulative_ms": cum / 1000} for cum, name, _ in top[:8]]
