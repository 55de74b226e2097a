"""Where slotrun's W1 time goes: its CPU split (engine vs tasks) and a py-spy profile.

Two runs of W1 through multi-run.py in GPU mode (two simulated GPUs, admission on):
1. unprofiled, inside a thin wrapper that records the engine process's own CPU seconds
   (every thread) and those of its reaped descendants (the per-task wrapper shells and
   the tasks): the cost per task, free of profiler overhead;
2. under ``py-spy record --threads --nonblocking`` (sampling, CPU-active stacks only),
   whose samples are grouped by what the engine was doing.
"""

import json
import os
import subprocess
import time
from collections import Counter

from .common import PY, REPO, TASKS, clean_env, remove, scratch, timed
from .install import py_spy_path
from .tools import slotrun_argv, slotrun_records, slotrun_workspace
from .workloads import w1_job

# (category, test on a frame "func (file:line)"), checked from the innermost frame outwards:
# the innermost frame that matches decides a sample's category.
CATEGORIES = [
    ("SQLite reads and writes (app/store.py)", lambda f: "store.py" in f),
    ("task start: fork/exec of the wrapper (LocalExecutor.start -> subprocess.Popen)",
     lambda f: f.startswith(("Popen.", "LocalExecutor.start ", "_execute_child"))),
    ("task start: pid start time, pidfd, epoll (LocalExecutor.start)",
     lambda f: f.startswith(("process_start_time", "LocalExecutor._watch_pid", "boot_id",
                             "ChildHandle."))),
    ("run folders made ahead (the preparer thread, Engine._prepare_next)",
     lambda f: f.startswith(("_Preparer.", "make_run_dir", "Engine._prepare_next",
                             "LocalExecutor.prepare", "LocalExecutor.discard"))),
    ("exit watcher: epoll wake-up, waitpid, leftover check (LocalExecutor._watch/_report)",
     lambda f: f.startswith(("LocalExecutor._watch ", "LocalExecutor._report", "Stops.",
                             "may_have_leftovers", "own_orphans", "group_alive"))),
    ("console lines (console.Printer, display_command)",
     lambda f: f.startswith(("Printer.", "display_command"))),
    ("done markers (their thread: DoneMarkers, write_marker)",
     lambda f: f.startswith(("DoneMarkers.", "write_marker", "Engine._mark_done"))),
    ("config snapshot check (Engine._config_as_submitted)",
     lambda f: f.startswith("Engine._config_as_submitted")),
    ("command rendering (render_command / shlex)",
     lambda f: f.startswith(("render_command", "check_template"))),
    ("dispatch bookkeeping (Engine._dispatch / _start / pick / usage)",
     lambda f: f.startswith(("Engine._dispatch", "pick_from_queues", "Engine._publish_usage",
                             "Engine._start", "Engine._dequeue", "Engine._on_exit",
                             "Engine._emit", "Engine._handle", "Engine._loop",
                             "Engine._flush", "Engine._step", "Engine._record_exit",
                             "Engine._launch", "Engine._prepare_next", "Engine._publish_view"))),
    ("batch submission (Engine.submit / _submit / create_batch)",
     lambda f: f.startswith(("Engine.submit", "Engine._submit"))),
    ("config discovery (configs.match_configs)", lambda f: "configs.py" in f),
    ("imports at start-up", lambda f: f.startswith(("_find_and_load", "<module>"))),
]
OTHER = "other (interpreter, threading, queue hand-offs)"


def _parse_raw(path):
    """Yield (thread name, [frames root first], count) from py-spy's raw output."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = stack.split(";")
            thread = frames[0]
            if thread.startswith("thread (") and ": " in thread:
                thread = thread.split(": ", 1)[1]
                frames = frames[1:]
                if frames and not frames[0].endswith(")"):
                    thread = frames[0]
                    frames = frames[1:]
            elif thread.startswith("thread ("):
                frames = frames[1:]
            yield thread, frames, n


def categorise(frames):
    """Return a sample's category from its innermost matching frame."""
    for frame in reversed(frames):
        for name, test in CATEGORIES:
            if test(frame):
                return name
    return OTHER


# Innermost frames that are waits py-spy may count as active (a thread blocked in epoll_wait
# or on a lock): left out, so the shares are of the time the engine was working.
WAITS = ("LocalExecutor._watch ", "Condition.wait", "Event.wait", "Thread.join",
         "MemoryMonitor._run ")


def analyse(path):
    """Return totals, per-thread and per-category shares and the top app functions."""
    total = waits = 0
    threads, cats, inclusive, leaf = Counter(), Counter(), Counter(), Counter()
    for thread, frames, n in _parse_raw(path):
        if frames and frames[-1].startswith(WAITS):
            waits += n
            continue
        total += n
        threads[thread] += n
        cats[categorise(frames)] += n
        seen = set()
        for f in frames:
            if "app/" in f or "multi-run.py" in f or "app\\" in f:
                key = f.rsplit(":", 1)[0] + ")"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += n
        if frames:
            leaf[frames[-1].rsplit(":", 1)[0] + ")"] += n

    def share(counter, k=None):
        return [{"name": name, "samples": c, "share": c / total if total else 0}
                for name, c in counter.most_common(k)]
    return {"samples": total, "wait_samples": waits, "threads": share(threads),
            "categories": share(cats), "app_inclusive": share(inclusive, 20),
            "leaf_self": share(leaf, 12)}


def fs_costs(out_dir, n=200):
    """Return the cost (µs, wall and CPU) of the file operations slotrun does per task, on the
    disk holding the workspaces and on tmpfs."""
    import tempfile
    import time

    def bench(fn):
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            fn(i)
        return {"wall_us": (time.perf_counter() - t0) / n * 1e6,
                "cpu_us": (time.process_time() - c0) / n * 1e6}

    out = {}
    places = [("workspace disk", os.path.join(os.path.abspath(out_dir), "work"))]
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        places.append(("tmpfs (/dev/shm)", "/dev/shm"))
    for label, base in places:
        os.makedirs(base, exist_ok=True)
        d = tempfile.mkdtemp(prefix="fs-", dir=base)
        try:
            out[label] = {
                "mkdir": bench(lambda i: os.mkdir(os.path.join(d, f"d{i}"))),
                "create file": bench(lambda i: os.close(os.open(
                    os.path.join(d, f"f{i}"), os.O_WRONLY | os.O_CREAT, 0o644))),
                "open existing file": bench(lambda i: os.close(os.open(
                    os.path.join(d, f"f{i}"), os.O_WRONLY))),
                "stat": bench(lambda i: os.stat(os.path.join(d, f"f{i}"))),
            }
        finally:
            remove(d)
    return out


def fixed_cost(out_dir, runs=3):
    """Return where multi-run.py's time goes before its first task runs, in GPU mode (two
    simulated GPUs, admission on), median of ``runs``: the interpreter's start, the imports,
    each start-up step (from ``tasks/startup_trace.py``), the engine's own start of the task,
    and the task's first statement (a ``python -I -S`` stamp, through the wrapper's shell);
    beside the one-task run's whole wall time and xargs'."""
    import shlex

    from .common import median
    from .tools import Job, run_slotrun, run_xargs, slotrun_argv, slotrun_records, \
        slotrun_workspace
    from .workloads import read_stamps

    job = Job("one", ["true"], ["t0"], 1)
    walls, xw = [], []
    for _ in range(runs):
        d = scratch(out_dir, "fixed")
        try:
            walls.append(run_slotrun(job, d, gpus=2)["wall"])
            xw.append(run_xargs(job, d)["wall"])
        finally:
            remove(d)
    env = clean_env()
    bare, imp, task_py = [], [], []
    for _ in range(runs):
        bare.append(timed([PY, "-c", "pass"], env=env)[0])
        imp.append(timed([PY, "-c", "import app.multi_run_cli"], cwd=REPO, env=env)[0])
        task_py.append(timed([PY, "-I", "-S", "-c", "pass"], env=env)[0])
    steps = {}
    stamp = Job("first", [PY, "-I", "-S", os.path.join(TASKS, "stamp.py"), "{stamps}"],
                ["0"], 1)
    for _ in range(runs):
        d = scratch(out_dir, "first")
        try:
            ws = slotrun_workspace(stamp, d)
            argv = slotrun_argv(stamp, d, ws, gpus=2)
            trace = os.path.join(d, "trace.json")
            argv = [PY, os.path.join(TASKS, "startup_trace.py"), trace] + argv[2:]
            launched = time.time_ns()
            tenv = dict(env, SLOTRUN_FAKE_GPUS="2", SLOTRUN_FAKE_GPU_DIR=os.path.join(d, "fakegpu"),
                        BENCH_LAUNCHED_NS=str(launched), PYTHONPATH=REPO)
            p = subprocess.run(argv, cwd=ws, env=tenv, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=120)
            if p.returncode != 0:
                raise RuntimeError(f"the traced run failed: {p.stderr.decode()[-500:]}")
            with open(trace, encoding="utf-8") as f:
                marks = json.load(f)["marks"]
            first = min(s for s, _ in read_stamps(os.path.join(d, "stamps.txt")))
            rec = slotrun_records(ws)
            marks.append(["engine recorded the task's start (started_at)",
                          int(rec["first_started_at"] * 1e9)])
            marks.append(["the task's first statement (sh + python -I -S)", first])
            for what, ns in marks:
                steps.setdefault(what, []).append((ns - launched) / 1e6)
        finally:
            remove(d)
    timeline = [{"step": k, "ms": median(v)} for k, v in steps.items()]
    timeline.sort(key=lambda x: x["ms"])
    return {"slotrun_one_task_s": median(walls), "xargs_one_task_s": median(xw),
            "python_bare_s": median(bare), "python_import_engine_s": median(imp),
            "python_isolated_s": median(task_py), "first_start_timeline": timeline,
            "template": shlex.join(stamp.prefix)}


def _gpu_env(run_dir):
    return clean_env(SLOTRUN_FAKE_GPUS="2", SLOTRUN_FAKE_GPU_DIR=os.path.join(run_dir, "fakegpu"))


def profile_w1(smoke, out_dir, keep=False):
    """Run W1 with slotrun twice (CPU accounting, then py-spy); return the findings."""
    job = w1_job(smoke)
    result = {"tasks": len(job.params), "slots": job.slots, "nproc": os.cpu_count()}
    result["fs"] = fs_costs(out_dir, 50 if smoke else 300)
    result["fixed"] = fixed_cost(out_dir, 1 if smoke else 3)
    # 1. CPU accounting, no profiler.
    run_dir = scratch(out_dir, "profile-cpu")
    try:
        ws = slotrun_workspace(job, run_dir)
        argv = slotrun_argv(job, run_dir, ws, gpus=2)
        cpu_json = os.path.join(run_dir, "cpu.json")
        wrapped = [PY, os.path.join(TASKS, "engine_cpu.py"), cpu_json] + argv[1:]
        with open(os.path.join(run_dir, "console.log"), "wb") as out:
            wall, _, rc = timed(wrapped, cwd=ws, env=_gpu_env(run_dir), stdin=subprocess.DEVNULL,
                                stdout=out)
        if rc != 0:
            raise RuntimeError(f"multi-run.py exited with status {rc}")
        with open(cpu_json, encoding="utf-8") as f:
            cpu = json.load(f)
        cpu["wall_total"] = wall
        cpu.update(slotrun_records(ws))
        n = len(job.params)
        cpu["engine_cpu_per_task_ms"] = cpu["self_cpu"] / n * 1000
        cpu["children_cpu_per_task_ms"] = cpu["children_cpu"] / n * 1000
        result["cpu"] = cpu
    finally:
        if not keep:
            remove(run_dir)
    # 2. py-spy.
    spy = py_spy_path()
    if not spy:
        result["py_spy"] = "not available"
        return result
    run_dir = scratch(out_dir, "profile-spy")
    try:
        ws = slotrun_workspace(job, run_dir)
        argv = slotrun_argv(job, run_dir, ws, gpus=2)
        raw = os.path.join(out_dir, "profile-w1" + ("-smoke" if smoke else "") + ".txt")
        cmd = [spy, "record", "--threads", "--nonblocking", "--rate", "1000", "--format", "raw",
               "-o", raw, "--"] + argv
        with open(os.path.join(run_dir, "console.log"), "wb") as out:
            p = subprocess.run(cmd, cwd=ws, env=_gpu_env(run_dir), stdin=subprocess.DEVNULL,
                               stdout=out, stderr=subprocess.STDOUT, timeout=600)
        if p.returncode != 0 or not os.path.exists(raw):
            with open(os.path.join(run_dir, "console.log"), encoding="utf-8",
                      errors="replace") as f:
                tail = f.read()[-600:]
            # py-spy may be refused ptrace in some containers: report it, do not fail.
            result["py_spy"] = f"py-spy failed (status {p.returncode}): {tail.strip()}"
            return result
        result["py_spy"] = analyse(raw)
        result["py_spy"]["raw_file"] = os.path.relpath(raw, os.path.dirname(out_dir))
    finally:
        if not keep:
            remove(run_dir)
    return result
