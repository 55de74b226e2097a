"""Shared helpers of the benchmark suite: paths, timing, statistics, machine facts."""

import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
TASKS = os.path.join(BENCH, "tasks")

# The interpreter running the suite, by its own path: never `python` through PATH, where a
# pyenv shim (a bash script) would add ~100 ms to every task start.
PY = sys.executable


def median(values):
    """Return the median of a non-empty sequence."""
    v = sorted(values)
    n = len(v)
    if not n:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def percentile(values, q):
    """Return the q-th percentile (0..100) by linear interpolation."""
    v = sorted(values)
    if not v:
        return None
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def children_cpu():
    """Return the CPU seconds (user + system) of every reaped descendant so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv, cwd=None, env=None, stdin=None, stdout=None, timeout=600, launched=False):
    """Run a command; return (wall seconds, CPU seconds of it and its reaped children, rc),
    and with ``launched`` the wall-clock time (``time.time_ns``) just before it was started."""
    # Not subprocess.run(timeout=...): a wait with a timeout polls with sleeps of up to 50 ms,
    # which would round every figure up. A blocking wait returns the moment the child ends;
    # a watchdog timer kills a hung command instead.
    cpu0 = children_cpu()
    launched_ns = time.time_ns()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout,
                            stderr=subprocess.STDOUT if stdout is not None else None)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        rc = proc.wait()
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - t0
    if time.perf_counter() - t0 >= timeout:
        raise subprocess.TimeoutExpired(argv, timeout)
    if launched:
        return wall, children_cpu() - cpu0, rc, launched_ns
    return wall, children_cpu() - cpu0, rc


PYCACHE = os.path.join(BENCH, "out", "pycache")


def clean_env(**extra):
    """Return an environment for tools and tasks without slotrun's own variables.

    Python bytecode is cached (under bench/out/pycache, outside the source tree) even where
    the calling shell sets PYTHONDONTWRITEBYTECODE, as it is for a user: an installed package
    ships compiled, an editable one compiles once. Otherwise every start of multi-run.py and
    of the Python tasks (for every tool alike) would compile its modules again.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLOTRUN_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = PYCACHE
    env.update({k: str(v) for k, v in extra.items()})
    return env


def scratch(out_dir, prefix):
    """Return a fresh folder under out_dir/work for one run."""
    root = os.path.join(os.path.abspath(out_dir), "work")
    os.makedirs(root, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix + "-", dir=root)


def remove(path):
    """Remove a run's folder (ignore errors)."""
    shutil.rmtree(path, ignore_errors=True)


def machine_info():
    """Return the facts a result depends on: cores, CPU, memory, kernel, Python, date."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        nproc = os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "nproc": nproc,
        "cpu_model": cpu,
        "ram_gib": mem,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_path": PY,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_1min_at_start": load,
    }


def write_result(path, result):
    """Write a benchmark's result as JSON to ``path`` and print it (without the machine facts)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


def log(message):
    """Print a progress line to stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
