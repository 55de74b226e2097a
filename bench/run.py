"""slotrun's benchmark suite: one command, every workload of issue 5, every baseline.

    python bench/run.py [--smoke] [--repeat 3] [--only w1,w2,w3,gap,startup,profile,server,logflood,clients,submits,memory]
                        [--tools xargs,slotrun,...] [--skip-install] [--out DIR] [--keep]

Each figure is compared with xargs -P measured in the same run on the same machine; timings
are medians over --repeat runs, with the tools' order rotated from run to run. Raw results go
to bench/out/results.json (git-ignored); a full run also writes bench/RESULTS.md.
--smoke runs everything at tiny sizes, asserts no timing, and exits non-zero only when a
script (or slotrun itself) breaks.
"""

import argparse
import json
import os
import re
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from bench import profile as profile_mod  # noqa: E402
from bench import report, server_bench, workloads  # noqa: E402
from bench.common import PY, BENCH, clean_env, log, machine_info, remove, scratch  # noqa: E402
from bench.install import ensure_baselines  # noqa: E402
from bench.tools import RUNNERS, run_floor, tmpfs_available  # noqa: E402

LOCAL_TOOLS = ["xargs", "slotrun-gpu", "slotrun", "simple_gpu_scheduler", "task-spooler",
               "GNU parallel", "slotrun-gpu-tmpfs", "slotrun-tmpfs"]
# slotrun with its workspace on tmpfs: a diagnostic row where per-task file creation dominates
TMPFS_WORKLOADS = ("w1", "gap")
ONLY_ON = {"slotrun-tmpfs": TMPFS_WORKLOADS, "slotrun-gpu-tmpfs": TMPFS_WORKLOADS}
# A smoke run checks the scripts, not the figures: each mode on two workloads is enough there.
SMOKE_ONLY_ON = {"slotrun-gpu": ("w1", "gap"), "slotrun": ("w2", "w3"), "slotrun-tmpfs": (),
                 "slotrun-gpu-tmpfs": ()}
ALL_TOOLS = LOCAL_TOOLS + ["Ray"]
JOB_WORKLOADS = ["w1", "w2", "w3", "gap"]
SERVER_WORKLOADS = ["server", "logflood", "clients", "submits", "memory"]
ALL_WORKLOADS = JOB_WORKLOADS + ["startup", "profile"] + SERVER_WORKLOADS


def parse_args(argv=None):
    """Return the command-line options."""
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, no timing targets; exit non-zero only if a script breaks")
    p.add_argument("--repeat", type=int, default=None,
                   help="runs per tool and workload (default 3; 1 with --smoke)")
    p.add_argument("--only", default="",
                   help="comma-separated workloads: " + ",".join(ALL_WORKLOADS))
    p.add_argument("--tools", default="", help="comma-separated tools: " + ",".join(ALL_TOOLS))
    p.add_argument("--skip-install", action="store_true",
                   help="use only the baselines already installed")
    p.add_argument("--out", default=os.path.join(BENCH, "out"),
                   help="folder for raw results and scratch runs (default bench/out)")
    p.add_argument("--results-md", default=None,
                   help="where to write the Markdown report (default bench/RESULTS.md for a "
                        "full run, OUT/RESULTS-smoke.md for --smoke)")
    p.add_argument("--keep", action="store_true", help="keep each run's scratch folder")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                   help="first wait up to SECONDS for the 1-minute load average to drop below "
                        "half the cores (default 90 for a full run, 0 with --smoke)")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3
    if args.wait_quiet is None:
        args.wait_quiet = 0 if args.smoke else 90
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    args.only = _pick(p, args.only, ALL_WORKLOADS, "workload")
    args.tools = _pick(p, args.tools, ALL_TOOLS, "tool")
    return args


def _pick(parser, text, valid, what):
    if not text.strip():
        return list(valid)
    lower = {v.lower(): v for v in valid}
    out = []
    for item in text.split(","):
        key = item.strip().lower()
        if key not in lower:
            parser.error(f"unknown {what} {item.strip()!r}; valid: {', '.join(valid)}")
        out.append(lower[key])
    return out


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# -- running ----------------------------------------------------------------------------------

def run_job(job, tools, repeat, out_dir, keep, settle=0.2):
    """Run one job with every tool, ``repeat`` times (rotating the order); return the runs.

    ``settle``: seconds to wait after each run, for stragglers (daemons, reaped children).
    """
    res = {t: {"runs": []} for t in tools}
    floor = {"runs": []} if job.stamps else None
    used = []
    for rep in range(repeat):
        k = rep % len(tools) if tools else 0
        for tool in tools[k:] + tools[:k]:
            if "error" in res[tool]:
                continue
            run_dir = scratch(out_dir, f"{job.workload}-{_slug(tool)}")
            try:
                r = RUNNERS[tool](job, run_dir)
                if job.stamps:
                    r.update(workloads.gap_summary(run_dir, job, r.get("launched_ns")))
                if job.durations and not job.stamps:
                    r["efficiency"] = workloads.efficiency(job, r["wall"])
                    if r.get("engine_span"):
                        r["engine_efficiency"] = workloads.efficiency(job, r["engine_span"])
                r["load1"] = os.getloadavg()[0]
                res[tool]["runs"].append(r)
                log(f"{job.workload} {tool} run {rep + 1}/{repeat}: {r['wall']:.3f} s"
                    + (f", gap median {r['gap_median_ms']:.2f} ms" if job.stamps else "")
                    + (f", efficiency {r['efficiency']:.3f}" if "efficiency" in r else ""))
            except Exception as e:  # noqa: BLE001 - recorded, and reported as an error
                res[tool]["error"] = f"{type(e).__name__}: {e}"
                log(f"{job.workload} {tool} failed: {res[tool]['error']}")
            finally:
                used.append(run_dir)
            time.sleep(settle)
        if floor is not None:
            fjob = job
            run_dir = scratch(out_dir, f"{job.workload}-floor")
            try:
                r = run_floor(fjob, run_dir)
                r.update(workloads.gap_summary(run_dir, fjob, r.get("launched_ns")))
                floor["runs"].append(r)
            finally:
                used.append(run_dir)
    if not keep:  # deleted at the end, not between runs: deleting is disk work too
        for d in used:
            remove(d)
    return res, floor


def run_ray(jobs, repeat, out_dir, keep, smoke):
    """Run every job on one local Ray cluster; return ({workload: runs}, cluster timings)."""
    plan_dir = scratch(out_dir, "ray")
    plan = {"slots": max(j.slots for j in jobs.values()), "jobs": []}
    dirs = {}
    for rep in range(repeat):
        for wl, job in jobs.items():
            key = f"{wl}#{rep}"
            d = os.path.join(plan_dir, _slug(key))
            os.makedirs(d)
            dirs[key] = d
            plan["jobs"].append({"key": key, "slots": job.slots,
                                 "commands": job.shell_commands(d)})
    plan_path = os.path.join(plan_dir, "plan.json")
    result_path = os.path.join(plan_dir, "result.json")
    with open(plan_path, "w", encoding="utf-8") as f:
        json.dump(plan, f)
    import subprocess

    out = {wl: {"runs": []} for wl in jobs}
    cluster = {}
    try:
        p = subprocess.run([PY, os.path.join(BENCH, "ray_driver.py"), plan_path, result_path],
                           cwd=plan_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env={k: v for k, v in clean_env().items() if k != "RAY_ADDRESS"},
                           timeout=300 if smoke else 1500)
        got = {}
        if os.path.exists(result_path):
            with open(result_path, encoding="utf-8") as f:
                got = json.load(f)
        cluster = {k: got.get(k) for k in ("init", "warmup", "shutdown", "ray_version")}
        for key, r in got.get("jobs", {}).items():
            wl = key.split("#")[0]
            job = jobs[wl]
            if r["rc"] != 0:
                out[wl]["error"] = f"{r['failed_tasks']} task(s) failed"
                continue
            if job.stamps:
                r.update(workloads.gap_summary(dirs[key], job))
            if job.durations and not job.stamps:
                r["efficiency"] = workloads.efficiency(job, r["wall"])
            r["cpu"] = None  # Ray's workers are not our children: not counted
            out[wl]["runs"].append(r)
            log(f"{wl} Ray: {r['wall']:.3f} s")
        if p.returncode != 0:
            msg = (p.stderr or "").strip().splitlines()[-1:] or [f"status {p.returncode}"]
            for wl in jobs:
                if not out[wl]["runs"]:
                    out[wl]["error"] = f"ray driver failed: {msg[0]}"
    except subprocess.TimeoutExpired:
        for wl in jobs:
            out[wl].setdefault("error", "ray driver timed out")
    finally:
        if not keep:
            remove(plan_dir)
    return out, cluster


def warm_up(out_dir):
    """Run slotrun once, untimed, in both modes: its bytecode is cached before any figure."""
    from bench.tools import Job, run_slotrun

    job = Job("warm", ["true"], ["t0", "t1"], 2)
    for gpus in (0, 2):
        d = scratch(out_dir, "warm")
        try:
            run_slotrun(job, d, gpus=gpus)
        except Exception as e:  # noqa: BLE001 - the timed runs report what is broken
            log(f"warm-up run failed: {e}")
        finally:
            remove(d)


def wait_quiet(seconds):
    """Wait (at most ``seconds``) for the 1-minute load average to drop below half the cores."""
    limit = (os.cpu_count() or 2) / 2
    deadline = time.monotonic() + seconds
    load = os.getloadavg()[0]
    if load >= limit:
        log(f"load average {load:.2f}: waiting up to {seconds:.0f} s for it to drop below {limit:.1f}")
    while load >= limit and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def main(argv=None):
    """Run the suite; return the exit status."""
    args = parse_args(argv)
    started = time.monotonic()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    broken = []
    want_ray = "Ray" in args.tools and any(w in args.only for w in JOB_WORKLOADS)
    log("checking baselines" + (" (no installs)" if args.skip_install else ""))
    baselines = ensure_baselines(args.skip_install, want_ray=want_ray,
                                 want_profiler="profile" in args.only)
    results = {"machine": machine_info(), "smoke": args.smoke, "repeat": args.repeat,
               "baselines": baselines, "workloads": {}, "tools": args.tools}
    baselines["slotrun-tmpfs"] = {"available": tmpfs_available(),
                                  "version": "slotrun, workspace on tmpfs (/dev/shm)",
                                  "note": "diagnostic, W1 and slot gap only" if tmpfs_available()
                                  else "not available: no writable /dev/shm"}
    baselines["slotrun-gpu"] = {"available": True,
                                "version": "slotrun in GPU mode: 2 simulated GPUs, admission on",
                                "note": "the headline row"}
    baselines["slotrun-gpu-tmpfs"] = {"available": tmpfs_available(),
                                      "version": "slotrun-gpu, workspace on tmpfs (/dev/shm)",
                                      "note": "diagnostic, W1 and slot gap only"
                                      if tmpfs_available() else "not available"}
    all_tools = [t for t in args.tools if t in LOCAL_TOOLS and baselines.get(t, {}).get("available")]
    jobs = {wl: workloads.JOBS[wl](args.smoke) for wl in JOB_WORKLOADS if wl in args.only}
    if jobs and args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
        results["machine"]["loadavg_1min_at_start"] = os.getloadavg()[0]
    if jobs and not args.smoke:
        warm_up(args.out)
    for wl, job in jobs.items():
        only = {**ONLY_ON, **SMOKE_ONLY_ON} if args.smoke else ONLY_ON
        tools = [t for t in all_tools if wl in only.get(t, (wl,))]
        log(f"{wl}: {len(job.params)} tasks on {job.slots} slots, tools: {', '.join(tools)}")
        res, floor = run_job(job, tools, args.repeat, args.out, args.keep,
                             settle=0.02 if args.smoke else 0.2)
        entry = {"tasks": len(job.params), "slots": job.slots, "tools": res}
        if floor is not None:
            entry["floor"] = floor
        if job.durations:
            entry["sum_durations"] = sum(job.durations)
        results["workloads"][wl] = entry
        for mode in ("slotrun-gpu", "slotrun"):
            if "error" in res.get(mode, {}):
                broken.append(f"{wl}: {mode}: {res[mode]['error']}")
    if jobs and want_ray and baselines.get("Ray", {}).get("available"):
        log("Ray: one local cluster for every job")
        try:
            ray_res, cluster = run_ray(jobs, args.repeat, args.out, args.keep, args.smoke)
            results["ray_cluster"] = cluster
            for wl, r in ray_res.items():
                results["workloads"][wl]["tools"]["Ray"] = r
        except Exception as e:  # noqa: BLE001 - a broken baseline is reported, not fatal
            log(f"Ray failed: {e}")
            for wl in jobs:
                results["workloads"][wl]["tools"]["Ray"] = {"runs": [], "error": str(e)}
    if "startup" in args.only:
        log("start-up of the sample model")
        try:
            results["workloads"]["startup"] = workloads.startup(args.smoke, args.out)
        except Exception as e:  # noqa: BLE001
            broken.append(f"startup: {e}")
            results["workloads"]["startup"] = {"error": str(e)}
    if "profile" in args.only:
        log("profiling slotrun's W1 run")
        try:
            results["profile"] = profile_mod.profile_w1(args.smoke, args.out, args.keep)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            broken.append(f"profile: {e}")
            results["profile"] = {"error": str(e)}
    for name in SERVER_WORKLOADS:
        if name not in args.only:
            continue
        log(f"server workload {name} (CPU mode, then GPU mode)")
        try:
            results["workloads"][name] = server_bench.WORKLOADS[name](args.smoke, args.out)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            results["workloads"][name] = {"status": f"error: {e}"}
        status = results["workloads"][name].get("status", "")
        if status.startswith("error"):  # in either mode: the other mode's figures are kept
            broken.append(f"{name}: {status}")
    results["summary"] = report.summarise(results)
    results["elapsed_s"] = time.monotonic() - started
    name = "results-smoke.json" if args.smoke else "results.json"
    path = os.path.join(args.out, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    md = args.results_md or (os.path.join(args.out, "RESULTS-smoke.md") if args.smoke
                             else os.path.join(BENCH, "RESULTS.md"))
    with open(md, "w", encoding="utf-8") as f:
        f.write(report.render(results))
    log(f"wrote {path} and {md} in {results['elapsed_s']:.0f} s")
    print(report.headline(results))
    if broken:
        for b in broken:
            log(f"BROKEN: {b}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
