"""GPU-memory admission on simulated GPUs: the figures of issue 10, admission on and off.

    python bench/admission_figures.py [--only hold,fit,big,foreign,learned,w1,w2] [--repeat 1]
                                      [--modes-repeat N] [--out bench/out] [--md bench/ADMISSION.md]

Every run is the user's command, `multi-run.py ... -check false`, on simulated 24 GiB GPUs
(`SLOTRUN_FAKE_GPUS`), once with admission at its default and once with
`SLOTRUN_ADMISSION=false`. Concurrency and times come from the attempt rows the engine wrote
(each attempt's start and end, failed ones included), never from the engine's internals:

- hold: `SLOTRUN_FAKE_GPUS=4 multi-run.py -c hold -d 2 0 1 3`, 16 configs of 0.4-1.6 s that
  use no GPU memory: peak per GPU, and efficiency = the makespan of a zero-overhead schedule of
  the same attempt durations on the same 6 slots / the measured makespan (first start to last
  end).
- fit: 16 tasks declaring `gpu_memory: 5GiB` (2 s) on 2 GPUs with 4 slots (4 x 5.5 GiB fits).
- big: 16 tasks declaring 10 GiB (2 s) on 2 GPUs with 4 slots (2 fit per GPU), beside the same
  batch with 2 slots per GPU (the limit a user would have had to guess).
- foreign: a process outside slotrun holds 20 GiB of gpu0; 8 tasks of 10 GiB (2 s), 4 slots each.
- learned: a family that allocates 10 GiB without declaring it: a first batch of 4 on gpu0
  (4 slots; the need is unknown, so the limit is trusted), then the second batch of 16 on
  2 GPUs with 4 slots: the figures are the second batch's.
- w1, w2: the suite's dispatch (1,000 tasks of `true`, 8 slots) and utilisation (160 tasks
  sleeping 0.05-0.40 s, 8 slots) workloads, run as `bench/run.py` runs them, in CPU mode
  (`-gpu false -d 8`) and in GPU mode (2 simulated GPUs, `-d 4 4`, admission on), alternately;
  the two must match within noise.

Raw results go to OUT/admission.json; the Markdown table to --md (default bench/ADMISSION.md).
"""

import argparse
import heapq
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from bench import workloads  # noqa: E402
from bench.common import PY, REPO, clean_env, log, machine_info, median, remove, scratch  # noqa: E402
from bench.tools import TMPFS, run_slotrun, tmpfs_available  # noqa: E402

GIB = 1024**3


def workspace(root, families):
    """Write a workspace: run.py, models/ and configs/FAMILY/NAME.yaml for each config."""
    ws = tempfile.mkdtemp(prefix="admission-", dir=root)
    shutil.copy(os.path.join(REPO, "run.py"), ws)
    shutil.copytree(os.path.join(REPO, "models"), os.path.join(ws, "models"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for family, configs in families.items():
        folder = os.path.join(ws, "configs", family)
        os.makedirs(folder, exist_ok=True)
        for name, params in configs:
            lines = ["model_params:", "  name: circle", f"  radius: {len(name)}.0"]
            lines += [f"  {k}: {v}" for k, v in params.items()]
            with open(os.path.join(folder, name + ".yaml"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return ws


def multi_run(ws, pattern, slots, gpus, admission, extra_env=None):
    """Run multi-run.py; return its wall time in seconds (it may exit non-zero: OOMs)."""
    env = clean_env(SLOTRUN_FAKE_GPUS=gpus, SLOTRUN_FAKE_GPU_DIR=os.path.join(ws, "fakegpu"),
                    **(extra_env or {}))
    if not admission:
        env["SLOTRUN_ADMISSION"] = "false"
    argv = [PY, os.path.join(REPO, "multi-run.py"), "-c", pattern, "-d", *map(str, slots),
            "-check", "false", "-w", "true", "--workspace", ws]
    t0 = time.perf_counter()
    with open(os.path.join(ws, "console.log"), "ab") as out:
        rc = subprocess.run(argv, cwd=ws, env=env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, timeout=600).returncode
    return time.perf_counter() - t0, rc


def attempts(ws, like):
    """Return the attempt rows of the configs matching a SQL LIKE pattern."""
    conn = sqlite3.connect(os.path.join(ws, ".slotrun", "state.db"))
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT a.task_id, a.device, a.started_at, a.finished_at, a.message, a.state, "
            "a.peak_memory, t.state AS task_state FROM attempts a JOIN tasks t ON t.id=a.task_id "
            "WHERE t.config LIKE ? ORDER BY a.id", (like,)).fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]


def peak_per_gpu(rows, gpus):
    """Return {gpu: most attempts running at one instant} from the attempts' own times."""
    out = {}
    for g in (f"gpu{i}" for i in range(gpus)):
        points = []
        for r in rows:
            if r["device"] == g:
                points += [(r["started_at"], 1), (r["finished_at"], -1)]
        cur = best = 0
        for _, step in sorted(points):
            cur += step
            best = max(best, cur)
        out[g] = best
    return out


def ideal_makespan(durations, slots):
    """Return the makespan of a zero-overhead schedule: each task starts the instant a slot
    frees, in the order given."""
    ends = [0.0] * slots
    heapq.heapify(ends)
    for d in durations:
        heapq.heappush(ends, heapq.heappop(ends) + d)
    return max(ends)


def figures(rows, gpus, capacity, wall):
    """Return the figures of one run from its attempt rows; ``capacity``: how many of these
    tasks the GPUs can run at once (their slots, or fewer where memory allows fewer)."""
    rows = [r for r in rows if r["finished_at"] is not None]
    first = min(r["started_at"] for r in rows)
    last = max(r["finished_at"] for r in rows)
    span = last - first
    useful = sorted((r for r in rows if r["state"] == "succeeded"), key=lambda r: r["started_at"])
    ideal = ideal_makespan([r["finished_at"] - r["started_at"] for r in useful], capacity)
    tasks = {r["task_id"]: r["task_state"] for r in rows}
    return {
        "peak": peak_per_gpu(rows, gpus),
        "oom": sum("out of memory" in (r["message"] or "") for r in rows),
        "attempts": len(rows), "tasks": len(tasks),
        "failed": sum(s != "succeeded" for s in tasks.values()),
        "makespan": span, "wall": wall, "ideal": ideal, "efficiency": ideal / span,
    }


def _mem(need, key="gpu_memory"):
    return {key: f"[[0, 1GiB], [0.1, {need}]]"}


def scenario_hold(root, admission):
    """16 configs of 0.4-1.6 s, no GPU memory, SLOTRUN_FAKE_GPUS=4 -d 2 0 1 3 (6 slots)."""
    configs = [(f"hold-{i:02d}", {"sim_time": round(0.4 + 1.2 * i / 15, 3)}) for i in range(16)]
    ws = workspace(root, {"hold": configs})
    wall, _ = multi_run(ws, "hold", [2, 0, 1, 3], 4, admission)
    return figures(attempts(ws, "configs/hold/%"), 4, 6, wall)


def scenario_fit(root, admission):
    """16 tasks declaring 5 GiB (2 s) on 2 GPUs with 4 slots each."""
    configs = [(f"fit-{i:02d}", {"sim_time": 2.0, **_mem("5GiB")}) for i in range(16)]
    ws = workspace(root, {"fit": configs})
    wall, _ = multi_run(ws, "fit", [4, 4], 2, admission)
    return figures(attempts(ws, "configs/fit/%"), 2, 8, wall)  # 4 x (5 GiB + margin) fit


def scenario_big(root, admission):
    """16 tasks declaring 10 GiB (2 s) on 2 GPUs with 4 slots, and with 2 slots."""
    configs = [(f"big-{i:02d}", {"sim_time": 2.0, **_mem("10GiB")}) for i in range(16)]
    ws = workspace(root, {"big": configs})
    wall, _ = multi_run(ws, "big", [4, 4], 2, admission)
    out = figures(attempts(ws, "configs/big/%"), 2, 4, wall)  # 2 x 10 GiB per GPU fit
    if admission:
        ws2 = workspace(root, {"big": configs})
        wall2, _ = multi_run(ws2, "big", [2, 2], 2, admission)
        ref = figures(attempts(ws2, "configs/big/%"), 2, 4, wall2)
        out["two_per_gpu"] = {k: ref[k] for k in ("peak", "oom", "makespan", "wall", "efficiency")}
    return out


def scenario_foreign(root, admission):
    """A foreign process holds 20 GiB of gpu0; 8 tasks of 10 GiB (2 s), 4 slots per GPU."""
    configs = [(f"mem-{i:02d}", {"sim_time": 2.0, **_mem("10GiB")}) for i in range(8)]
    ws = workspace(root, {"mem": configs})
    folder = os.path.join(ws, "fakegpu", "gpu0")
    os.makedirs(folder, exist_ok=True)
    foreign = os.path.join(folder, str(os.getpid()))  # this process "uses" 20 GiB of gpu0
    with open(foreign, "w", encoding="ascii") as f:
        f.write(str(20 * GIB))
    try:
        wall, _ = multi_run(ws, "mem", [4, 4], 2, admission)
    finally:
        os.unlink(foreign)
    return figures(attempts(ws, "configs/mem/%"), 2, 2, wall)  # none fit on gpu0, 2 on gpu1


def scenario_learned(root, admission):
    """A first batch teaches an undeclared 10 GiB need; the figures are the second batch's."""
    first = [(f"a-{i:02d}", {"sim_time": 2.0, **_mem("10GiB", "sim_gpu_memory")}) for i in range(4)]
    second = [(f"b-{i:02d}", {"sim_time": 2.0, **_mem("10GiB", "sim_gpu_memory")})
              for i in range(16)]
    ws = workspace(root, {"learn": first + second})
    multi_run(ws, "learn/a-", [4, 0], 2, admission)
    out_first = figures(attempts(ws, "configs/learn/a-%"), 2, 2, 0.0)
    wall, _ = multi_run(ws, "learn/b-", [4, 4], 2, admission)
    out = figures(attempts(ws, "configs/learn/b-%"), 2, 4, wall)
    out["first_batch"] = {k: out_first[k] for k in ("peak", "oom", "failed")}
    return out


SCENARIOS = {"hold": scenario_hold, "fit": scenario_fit, "big": scenario_big,
             "foreign": scenario_foreign, "learned": scenario_learned}
MODES = {"w1": workloads.w1_job, "w2": workloads.w2_job}


def compare_modes(root, name, repeat, smoke=False):
    """Run a suite workload with slotrun in CPU mode and in GPU mode, alternately."""
    job = MODES[name](smoke)
    out = {"cpu": [], "gpu": []}
    for i in range(repeat):
        order = (("cpu", 0), ("gpu", 2))
        for mode, gpus in order if i % 2 == 0 else order[::-1]:
            run_dir = scratch(root, f"{name}-{mode}")
            # The workspace on tmpfs where there is one: on this shared machine the disk's cost
            # of creating W1's 7,000 files varies several-fold from run to run.
            ws = tempfile.mkdtemp(prefix="ws-", dir=TMPFS) if tmpfs_available() else None
            try:
                r = run_slotrun(job, run_dir, ws=ws, gpus=gpus)
            finally:
                remove(run_dir)
                if ws:
                    remove(ws)
            if job.durations:
                r["efficiency"] = workloads.efficiency(job, r["wall"])
                r["engine_efficiency"] = workloads.efficiency(job, r["engine_span"])
            out[mode].append(r)
            log(f"{name} {mode} mode run {i + 1}: wall {r['wall']:.3f} s"
                + (f", efficiency {r['efficiency']:.3f}" if job.durations else ""))
    summary = {}
    for mode, runs in out.items():
        summary[mode] = {k: median([r[k] for r in runs]) for k in
                         ("wall", "cpu", "engine_span", "efficiency", "engine_efficiency")
                         if all(r.get(k) is not None for r in runs)}
        summary[mode]["walls"] = [r["wall"] for r in runs]
    return {"tasks": len(job.params), "slots": job.slots, "tmpfs": tmpfs_available(), **summary}


def _peaks(p):
    return " ".join(f"{g}:{n}" for g, n in p.items())


def render(results):
    """Return the Markdown report."""
    m = results["machine"]
    L = ["# GPU-memory admission on simulated GPUs", "",
         "Generated by `python bench/admission_figures.py` (raw data: `bench/out/admission.json`). "
         "Each run is `multi-run.py ... -check false` on simulated 24 GiB GPUs, with admission "
         "at its default (on) and with `SLOTRUN_ADMISSION=false`; figures come from the attempt "
         "rows (every attempt's own start and end, failed ones included); "
         f"median of {results['repeat']} run(s).", "",
         f"Machine: {m['date']}, {m['nproc']} cores {m['cpu_model']}, {m['ram_gib']} GiB, "
         f"Python {m['python']}, no GPU (simulated GPUs), 1-minute load at start "
         f"{m['loadavg_1min_at_start']:.2f} (a shared, noisy machine).", "",
         "| run | admission | peak per GPU | OOM crashes | failed tasks | makespan (s) | "
         "efficiency | note |", "|---|---|---|---|---|---|---|---|"]
    titles = {
        "hold": "`-c hold -d 2 0 1 3`, 16 × 0.4–1.6 s, no GPU memory",
        "fit": "16 × 5 GiB declared, 2 GPUs × 4 slots",
        "big": "16 × 10 GiB declared, 2 GPUs × 4 slots",
        "foreign": "8 × 10 GiB declared, 20 GiB of gpu0 held outside slotrun",
        "learned": "second batch: 16 × 10 GiB learned (not declared)",
    }
    for name, runs in results["scenarios"].items():
        for mode in ("on", "off"):
            r = runs.get(mode)
            if r is None:
                continue
            note = ""
            if name == "big" and "two_per_gpu" in r:
                t = r["two_per_gpu"]
                note = (f"same batch with `-d 2 2` (admission on): makespan {t['makespan']:.2f} s, "
                        f"peak {_peaks(t['peak'])}, {t['oom']} OOM; 4 slots vs 2: "
                        f"{r['makespan'] / t['makespan']:.2f}x")
            if name == "learned" and "first_batch" in r:
                f = r["first_batch"]
                note = (f"first batch (need unknown, 4 slots on gpu0): peak {_peaks(f['peak'])}, "
                        f"{f['oom']} OOM, {f['failed']} failed")
            L.append(f"| {titles[name]} | {mode} | {_peaks(r['peak'])} | {r['oom']} | "
                     f"{r['failed']} of {r['tasks']} | {r['makespan']:.2f} | "
                     f"{r['efficiency']:.2f} | {note} |")
    modes = results.get("modes", {})
    if modes:
        L += ["", "## Dispatch and utilisation: GPU mode next to CPU mode", "",
              "The suite's W1 (1,000 tasks of `true`) and W2 (160 tasks sleeping 0.05–0.40 s) "
              "on 8 slots, as `bench/run.py` runs them: `multi-run.py -gpu false -d 8` (CPU "
              "mode) and `SLOTRUN_FAKE_GPUS=2 multi-run.py -d 4 4` (GPU mode, admission on: "
              "the tasks' need is unknown, so the slot limits are trusted), run alternately, with "
              "the workspace on tmpfs (`/dev/shm`; on this shared disk W1's wall time varies "
              f"several-fold between runs); medians of {results['modes_repeat']} runs each. "
              "CPU s counts slotrun and the tasks.", "",
              "| workload | mode | wall (s) | CPU s | engine span (s) | efficiency (wall) | "
              "efficiency (engine span) | walls (s) |", "|---|---|---|---|---|---|---|---|"]
        for name, m in modes.items():
            for mode in ("cpu", "gpu"):
                r = m[mode]
                eff = f"{r['efficiency']:.3f}" if "efficiency" in r else "–"
                eff2 = f"{r['engine_efficiency']:.3f}" if "engine_efficiency" in r else "–"
                L.append(f"| {name.upper()} | {mode} | {r['wall']:.3f} | {r['cpu']:.2f} | "
                         f"{r['engine_span']:.3f} | {eff} | {eff2} | "
                         f"{', '.join(f'{w:.3f}' for w in r['walls'])} |")
            L.append(f"| {name.upper()} | GPU / CPU | {m['gpu']['wall'] / m['cpu']['wall']:.3f} | "
                     f"{m['gpu']['cpu'] / m['cpu']['cpu']:.3f} | "
                     f"{m['gpu']['engine_span'] / m['cpu']['engine_span']:.3f} | | | |")
    L += ["", "Efficiency = the makespan of a zero-overhead schedule of the succeeded attempts' "
          "durations (each starts the instant a slot frees, in the order they started) on as "
          "many slots as the GPUs can hold these tasks at once (hold: the 6 slots; 5 GiB: 8; "
          "10 GiB: 2 per GPU; foreign: 2, all on gpu1; learned: 2 per GPU) / the measured "
          "makespan (first start to last end). Crashed attempts are wasted time; failed tasks' "
          "work is missing from the ideal schedule, so a run that loses tasks can look fast.",
          ""]
    return "\n".join(L)


def _median_run(runs):
    """Return the run whose makespan is the median one."""
    ordered = sorted(runs, key=lambda r: r["makespan"])
    return ordered[len(ordered) // 2]


def main(argv=None):
    """Run the scenarios; write the JSON and the Markdown report."""
    p = argparse.ArgumentParser(prog="python bench/admission_figures.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join([*SCENARIOS, *MODES]), help="comma-separated: "
                   + ",".join([*SCENARIOS, *MODES]))
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario and mode")
    p.add_argument("--modes-repeat", type=int, default=None,
                   help="runs of W1 and W2 per mode (default: --repeat; W1 is noisy here)")
    p.add_argument("--out", default=os.path.join(HERE, "out"))
    p.add_argument("--md", default=os.path.join(HERE, "ADMISSION.md"))
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in SCENARIOS and n not in MODES]
    if bad:
        p.error(f"unknown scenario {bad[0]!r}; valid: {', '.join([*SCENARIOS, *MODES])}")
    os.makedirs(args.out, exist_ok=True)
    root = tempfile.mkdtemp(prefix="admission-bench-", dir=args.out)
    results = {"machine": machine_info(), "repeat": args.repeat, "scenarios": {},
               "modes_repeat": args.modes_repeat or args.repeat}
    try:
        for name in [n for n in names if n in MODES]:
            results.setdefault("modes", {})[name] = compare_modes(root, name, results["modes_repeat"])
        for name in [n for n in names if n in SCENARIOS]:
            entry = results["scenarios"][name] = {}
            for mode, admission in (("on", True), ("off", False)):
                runs = []
                for i in range(args.repeat):
                    r = SCENARIOS[name](root, admission)
                    log(f"{name} admission {mode} run {i + 1}: peak {_peaks(r['peak'])}, "
                        f"{r['oom']} OOM, makespan {r['makespan']:.2f} s, "
                        f"efficiency {r['efficiency']:.2f}")
                    runs.append(r)
                entry[mode] = dict(_median_run(runs), runs=len(runs),
                                   makespans=[r["makespan"] for r in runs],
                                   makespan_median=median([r["makespan"] for r in runs]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with open(os.path.join(args.out, "admission.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    md = render(results)
    with open(args.md, "w", encoding="utf-8") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
