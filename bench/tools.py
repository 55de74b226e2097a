"""The tools under comparison: how each one runs a job (N commands on S slots).

A job is a list of commands that differ only in their last argument: ``prefix + [param]``.
Every tool runs each of those commands through exactly one ``/bin/sh``, as ``xargs -P S sh
-c`` does: slotrun always does (its wrapper shell records the task's pid and exit code), GNU
parallel and simple_gpu_scheduler always do (``sh -c 'PREFIX param'``), and xargs,
task-spooler, Ray and the bare floor are given ``sh -c 'PREFIX "$1"' sh param``. Debian's
dash forks for the command even when it is the script's last one, so every tool pays one
shell and one fork per task (a shell builtin such as ``true`` runs inside the shell for all).
Each runner returns a dict with the wall time in seconds (``wall``), the CPU seconds of the
tool and its tasks where they can be counted (``cpu``), the exit status (``rc``), the
wall-clock time the tool was launched (``launched_ns``, for the first start) and
tool-specific extras.
"""

import glob
import os
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from .common import PY, REPO, clean_env, timed

STAMPS = "{stamps}"
SHELL = "/bin/sh"


@dataclass
class Job:
    """N commands ``prefix + [param]`` run on ``slots`` slots."""

    workload: str
    prefix: list
    params: list
    slots: int
    durations: list = field(default_factory=list)  # nominal task durations, when known
    stamps: bool = False  # tasks append "start_ns end_ns" lines to the run's stamp file

    def argv_prefix(self, run_dir):
        """Return the prefix with the stamp file of this run filled in."""
        path = os.path.join(run_dir, "stamps.txt")
        return [path if a == STAMPS else a for a in self.prefix]

    def commands(self, run_dir):
        """Return every task's argument list."""
        pre = self.argv_prefix(run_dir)
        return [pre + [p] for p in self.params]

    def script(self, run_dir):
        """Return the one-line shell script that runs the prefix with its parameter ($1)."""
        return shlex.join(self.argv_prefix(run_dir)) + ' "$1"'

    def shell_commands(self, run_dir):
        """Return every task's argument list run through one shell: sh -c SCRIPT sh PARAM."""
        script = self.script(run_dir)
        return [[SHELL, "-c", script, "sh", p] for p in self.params]


def _check(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what} exited with status {rc}")


# -- xargs -P ------------------------------------------------------------------------------

def run_xargs(job, run_dir):
    """Run the job with ``xargs -P S -n 1 sh -c 'PREFIX "$1"' sh``, arguments on stdin."""
    inp = os.path.join(run_dir, "params.txt")
    with open(inp, "w", encoding="utf-8") as f:
        f.write("\n".join(job.params) + "\n")
    argv = ["xargs", "-P", str(job.slots), "-n", "1", SHELL, "-c", job.script(run_dir), "sh"]
    with open(inp, "rb") as stdin, open(os.path.join(run_dir, "out.log"), "wb") as out:
        wall, cpu, rc, launched = timed(argv, cwd=run_dir, env=clean_env(), stdin=stdin,
                                        stdout=out, launched=True)
    _check(rc, "xargs")
    return {"wall": wall, "cpu": cpu, "rc": rc, "launched_ns": launched}


# -- GNU parallel ----------------------------------------------------------------------------

def parallel_available():
    """Return GNU parallel's version line, or None (moreutils' parallel does not count)."""
    exe = shutil.which("parallel")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = out.splitlines()[0] if out else ""
    return line if "GNU parallel" in line else None


def run_parallel(job, run_dir):
    """Run the job with ``parallel -j S 'PREFIX' < params`` (each task through one /bin/sh)."""
    inp = os.path.join(run_dir, "params.txt")
    with open(inp, "w", encoding="utf-8") as f:
        f.write("\n".join(job.params) + "\n")
    cmd = shlex.join(job.argv_prefix(run_dir))
    argv = ["parallel", "--will-cite", "-j", str(job.slots), cmd]
    # Its citation and temp files stay here; its shell is /bin/sh, as every other tool's.
    env = clean_env(HOME=run_dir, TMPDIR=run_dir, PARALLEL_SHELL=SHELL)
    with open(inp, "rb") as stdin, open(os.path.join(run_dir, "out.log"), "wb") as out:
        wall, cpu, rc, launched = timed(argv, cwd=run_dir, env=env, stdin=stdin, stdout=out,
                                        launched=True)
    _check(rc, "parallel")
    return {"wall": wall, "cpu": cpu, "rc": rc, "launched_ns": launched}


# -- task-spooler ----------------------------------------------------------------------------

def run_tsp(job, run_dir):
    """Queue every task with ``tsp CMD`` on a fresh server of S slots, then wait for all.

    The server is started before the clock starts (it is a daemon, like a running slotrun
    server). The clock covers queueing (one ``tsp`` client per task, as a user's loop does)
    and the wait: a last job needing all S slots (``-N S``) starts only once every earlier
    job has ended, and ``tsp -w`` waits for it. Each task's output goes to its own file,
    task-spooler's default.
    """
    # The server's socket in a short folder of its own: a Unix socket's path has at most 107
    # bytes, and run folders under pytest's temporary folders can be longer.
    sock_dir = tempfile.mkdtemp(prefix="tsp-")
    env = clean_env(TS_SOCKET=os.path.join(sock_dir, "ts.sock"), TMPDIR=run_dir,
                    TS_SLOTS=str(job.slots), TS_MAXFINISHED=str(len(job.params) + 10))
    try:
        return _run_tsp(job, run_dir, env)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def _run_tsp(job, run_dir, env):
    subprocess.run(["tsp", "-S", str(job.slots)], env=env, check=True, capture_output=True)
    script = os.path.join(run_dir, "queue.sh")
    with open(script, "w", encoding="utf-8") as f:
        for argv in job.shell_commands(run_dir):  # tsp runs its argument list itself: one sh
            f.write("tsp " + shlex.join(argv) + " >/dev/null\n")
        f.write(f"tsp -N {job.slots} true >/dev/null\ntsp -w\n")
    try:
        with open(os.path.join(run_dir, "out.log"), "wb") as out:
            wall, _, rc, launched = timed([SHELL, script], cwd=run_dir, env=env, stdout=out,
                                          launched=True)
        _check(rc, "tsp")
    finally:
        subprocess.run(["tsp", "-K"], env=env, capture_output=True)
    # The job-running tsp clients are daemonised: their CPU time cannot be counted here.
    return {"wall": wall, "cpu": None, "rc": rc, "launched_ns": launched}


# -- simple_gpu_scheduler -----------------------------------------------------------------------

SGS_MAIN = "import sys; from simple_gpu_scheduler.scheduler import main; sys.exit(main())"


def run_sgs(job, run_dir):
    """Run the job with ``simple_gpu_scheduler --gpus 0 .. S-1 < commands`` (S slots)."""
    inp = os.path.join(run_dir, "commands.txt")
    with open(inp, "w", encoding="utf-8") as f:
        for argv in job.commands(run_dir):
            f.write(shlex.join(argv) + "\n")
    argv = [PY, "-c", SGS_MAIN, "--gpus", *[str(i) for i in range(job.slots)]]
    with open(inp, "rb") as stdin, open(os.path.join(run_dir, "out.log"), "wb") as out:
        wall, cpu, rc, launched = timed(argv, cwd=run_dir, env=clean_env(), stdin=stdin,
                                        stdout=out, launched=True)
    _check(rc, "simple_gpu_scheduler")
    return {"wall": wall, "cpu": cpu, "rc": rc, "launched_ns": launched}


# -- slotrun -----------------------------------------------------------------------------------

def slotrun_workspace(job, run_dir, ws=None):
    """Write one config per task (configs/<workload>/<index>/<param>.yaml); return the workspace."""
    ws = ws or os.path.join(run_dir, "ws")
    width = len(str(len(job.params)))
    for i, p in enumerate(job.params):
        folder = os.path.join(ws, "configs", job.workload, str(i).zfill(width))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, p + ".yaml"), "w", encoding="utf-8") as f:
            f.write(f"task: {i}\n")
    return ws


def slotrun_argv(job, run_dir, ws, gpus=0):
    """Return the multi-run.py command line of a job (its task command: PREFIX {name}): on S
    CPU slots, or with ``gpus`` on that many GPUs sharing the S slots."""
    template = shlex.join(job.argv_prefix(run_dir)) + " {name}"
    if gpus:
        per = [job.slots // gpus + (1 if i < job.slots % gpus else 0) for i in range(gpus)]
        where = ["-d", *map(str, per)]
    else:
        where = ["-gpu", "false", "-d", str(job.slots)]
    return [PY, os.path.join(REPO, "multi-run.py"), "-c", f"^configs/{job.workload}/", *where,
            "-check", "false", "--command", template, "--workspace", ws]


def slotrun_records(ws):
    """Return what the engine recorded: attempt counts, its own first-start-to-last-exit span
    and the number of per-task log files."""
    db = os.path.join(ws, ".slotrun", "state.db")
    conn = sqlite3.connect(db)
    try:
        total, ok, first, last = conn.execute(
            "SELECT COUNT(*), SUM(state='succeeded'), MIN(started_at), MAX(finished_at) "
            "FROM attempts").fetchone()
    finally:
        conn.close()
    logs = len(glob.glob(os.path.join(ws, ".slotrun", "runs", "*", "output.log")))
    return {"attempts": total, "succeeded": ok or 0, "logs": logs, "first_started_at": first,
            "engine_span": (last - first) if first is not None and last is not None else None}


def run_slotrun(job, run_dir, ws=None, gpus=0):
    """Run the job headless with multi-run.py on S CPU slots (durable records, per-task logs),
    or on ``gpus`` simulated GPUs sharing the S slots (admission on, its default)."""
    ws = slotrun_workspace(job, run_dir, ws)
    argv = slotrun_argv(job, run_dir, ws, gpus)
    env = clean_env()
    if gpus:
        env.update(SLOTRUN_FAKE_GPUS=str(gpus),
                   SLOTRUN_FAKE_GPU_DIR=os.path.join(run_dir, "fakegpu"))
    with open(os.path.join(run_dir, "console.log"), "wb") as out:
        wall, cpu, rc, launched = timed(argv, cwd=ws, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, launched=True)
    if rc != 0:
        with open(os.path.join(run_dir, "console.log"), encoding="utf-8", errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"multi-run.py exited with status {rc}:\n{tail}")
    rec = slotrun_records(ws)
    n = len(job.params)
    if rec["succeeded"] != n or rec["logs"] != n:
        raise RuntimeError(f"slotrun recorded {rec['succeeded']} succeeded attempts and "
                           f"{rec['logs']} log files for {n} tasks")
    if rec.get("first_started_at") is not None:
        # The engine's own record of its first start, from the call (both wall clocks).
        rec["engine_first_start_ms"] = (rec.pop("first_started_at") - launched / 1e9) * 1000
    return {"wall": wall, "cpu": cpu, "rc": rc, "launched_ns": launched, **rec}


TMPFS = "/dev/shm"


def tmpfs_available():
    """Return True when a writable tmpfs (/dev/shm) exists."""
    return os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK)


def run_slotrun_tmpfs(job, run_dir):
    """Run slotrun as run_slotrun does, with the workspace (state.db, run folders, logs,
    results) on tmpfs: the same work without this machine's disk's cost of creating files."""
    import tempfile

    ws = tempfile.mkdtemp(prefix="slotrun-bench-", dir=TMPFS)
    try:
        return run_slotrun(job, run_dir, ws)
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def run_slotrun_gpu(job, run_dir):
    """Run slotrun as run_slotrun does, in GPU mode: two simulated GPUs sharing the S slots,
    admission at its default (tasks of unknown need: the slot limits are trusted)."""
    return run_slotrun(job, run_dir, gpus=2)


def run_slotrun_gpu_tmpfs(job, run_dir):
    """Run slotrun in GPU mode (as run_slotrun_gpu) with the workspace on tmpfs: a diagnostic."""
    import tempfile

    ws = tempfile.mkdtemp(prefix="slotrun-bench-", dir=TMPFS)
    try:
        return run_slotrun(job, run_dir, ws, gpus=2)
    finally:
        shutil.rmtree(ws, ignore_errors=True)


# -- the bare floor (for the slot gap) --------------------------------------------------------

def run_floor(job, run_dir):
    """Run the job from a bare launcher: posix_spawn + os.wait, refilling a slot the moment
    a child ends (S slots, each task through one /bin/sh as for every tool, no records, no
    output files).

    Not a tool: the smallest exit-to-start gap this machine, its shell and the interpreter
    allow under the same concurrency, which is subtracted from every tool's gap to give what
    the tool adds.
    """
    env = clean_env()
    cmds = iter(job.shell_commands(run_dir))
    running = 0
    launched = time.time_ns()
    t0 = time.perf_counter()
    while True:
        while running < job.slots:
            argv = next(cmds, None)
            if argv is None:
                break
            os.posix_spawn(argv[0], argv, env)
            running += 1
        if not running:
            break
        os.wait()
        running -= 1
    return {"wall": time.perf_counter() - t0, "cpu": None, "rc": 0, "launched_ns": launched}


RUNNERS = {
    "xargs": run_xargs,
    "slotrun": run_slotrun,
    "simple_gpu_scheduler": run_sgs,
    "task-spooler": run_tsp,
    "GNU parallel": run_parallel,
    "slotrun-tmpfs": run_slotrun_tmpfs,
    "slotrun-gpu": run_slotrun_gpu,
    "slotrun-gpu-tmpfs": run_slotrun_gpu_tmpfs,
}
