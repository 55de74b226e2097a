"""Soak: kill the server with SIGKILL many times during a long run, then count what went wrong.

    python bench/soak.py [--configs 400] [--kills 25] [--gpus 4] [--slots 2] [--seed 1]
                         [--min-up 2] [--max-up 5] [--set NAME=VALUE ...]
                         [--out bench/out/soak.json] [--keep]

A real server (``python -m app serve``, simulated GPUs, default settings otherwise) gets two
overlapping batches (every config, and the first half again, from the same workspace): each
config must run once. Every run of a config appends its own start and end to a file beside
its results (bench/tasks/soak_task.py), so what ran is counted from the tasks themselves, not
from slotrun's records. While work is left, the server is killed with SIGKILL after
--min-up..--max-up seconds of uptime and started again at once, --kills times; then it runs
to the end. Reported:

- lost: configs that never ran, and tasks not in a final state when the run was over;
- run twice: configs with more than one run (and runs of one config that overlapped);
- longest stall: the longest time during which a slot was free while a config that had not
  started yet (and was not running) waited; with and without the server's restarts (a
  restart's own time, from the kill until the new server answers, is a stall the user sees);
- wrong states: a task recorded succeeded whose config never ran, a run whose task is not
  recorded succeeded (or skipped for a config that ran), more than one attempt, a skipped
  duplicate without a completed twin.
"""

import argparse
import bisect
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.common import PY, clean_env, log, machine_info, write_result  # noqa: E402

TASK = os.path.join(HERE, "tasks", "soak_task.py")
FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


def make_workspace(root, n, seed):
    """Write n configs with durations of 0.2-2 s; return the workspace path."""
    ws = os.path.join(root, "ws")
    rng = random.Random(seed)
    for half in ("a", "b"):
        os.makedirs(os.path.join(ws, "configs", "soak", half))
        os.makedirs(os.path.join(ws, "results", "soak", half))
    for i, config in enumerate(config_names(n)):
        with open(os.path.join(ws, config), "w") as f:
            f.write(f"model_params:\n  name: circle\n  sim_time: {rng.uniform(0.2, 2.0):.2f}\n")
    return ws


def config_names(n):
    """Return the soak's configs: the first half under configs/soak/a/, the rest under b/."""
    return [f"configs/soak/{'a' if i < n // 2 else 'b'}/s-{i:04d}.yaml" for i in range(n)]


def free_port():
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m app serve`` on a loopback port, started and killed again and again."""

    def __init__(self, ws, port, env, log_path):
        self.ws, self.port, self.env, self.log_path = ws, port, env, log_path
        self.url = f"http://127.0.0.1:{port}/api/v1"
        self.proc = None

    def start(self, timeout=60):
        """Start the server; return once its API answers."""
        import requests

        with open(self.log_path, "ab") as out:
            # Its own session: a kill reaches every process of the server (the master and
            # the worker that holds the engine), never the tasks (they have sessions of
            # their own).
            self.proc = subprocess.Popen(
                [PY, "-m", "app", "serve", "--port", str(self.port), "--workspace", self.ws],
                cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                if requests.get(self.url + "/status", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not answer in time")

    def kill(self):
        """SIGKILL every process of the server at once (its tasks keep running)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self):
        """Stop the server the way its operator would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def post(self, path, body):
        """POST JSON; return the answer's JSON."""
        import requests

        r = requests.post(self.url + path, json=body, timeout=120)
        r.raise_for_status()
        return r.json()


def read_runs(ws):
    """Return {config: [(start s, end s, pid), ...]} from the tasks' own records."""
    out = {}
    for half in ("a", "b"):
        folder = os.path.join(ws, "results", "soak", half)
        for name in os.listdir(folder):
            if not name.endswith(".runs"):
                continue
            config = f"configs/soak/{half}/{name[:-len('.runs')]}.yaml"
            with open(os.path.join(folder, name)) as f:
                out[config] = [(int(a) / 1e9, int(b) / 1e9, int(p))
                               for a, b, p in (line.split() for line in f if line.strip())]
    return out


def longest_stall(runs, configs, capacity, t0, t_end, down):
    """Return (longest stall, longest stall outside the restarts) in seconds.

    A stall: a stretch after t0 where fewer than ``capacity`` runs are going while a config
    that has not started yet waits (it could have started). ``down``: [(kill time, time the
    next server answered)]: the restarts' own time is left out of the second figure.
    """
    deltas = {}
    for c in configs:
        for s, e, _ in runs.get(c, []):
            deltas[s] = deltas.get(s, 0) + 1
            deltas[e] = deltas.get(e, 0) - 1
    first = sorted(min(r[0] for r in runs[c]) if runs.get(c) else t_end for c in configs)
    points = sorted({t0, t_end, *(t for t in deltas if t0 < t < t_end)})
    running = sum(d for t, d in deltas.items() if t <= t0)
    best = best_up = 0.0
    since = None
    for a, b in zip(points, points[1:]):
        if a != t0:
            running += deltas.get(a, 0)
        waiting = bisect.bisect_right(first, a) < len(first)  # a config starts after a
        if running < capacity and waiting:
            since = a if since is None else since
        elif since is not None:
            best = max(best, a - since)
            best_up = max(best_up, a - since - overlap(since, a, down))
            since = None
    if since is not None:
        best = max(best, t_end - since)
        best_up = max(best_up, t_end - since - overlap(since, t_end, down))
    return best, best_up


def overlap(a, b, intervals):
    """Return how much of [a, b] the intervals cover."""
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in intervals)


def check(ws, configs, runs, dup_half):
    """Return the counts of lost, twice, overlapping and wrong from the runs and the store."""
    from app.store import Store

    store = Store(os.path.join(ws, ".slotrun", "state.db"))
    tasks, _ = store.list_tasks(limit=10 ** 6, newest_first=False)
    by_config = {}
    for t in tasks:
        by_config.setdefault(t["config"], []).append(t)
    lost = [c for c in configs if not runs.get(c)]
    lost_tasks = [t["id"] for t in tasks if t["state"] not in FINAL]
    twice = [c for c in configs if len(runs.get(c, [])) > 1]
    overlapped = []
    for c in twice:
        spans = sorted(r[:2] for r in runs[c])
        if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
            overlapped.append(c)
    wrong = []
    for c in configs:
        ts = by_config.get(c, [])
        ok = [t for t in ts if t["state"] == "succeeded"]
        if runs.get(c) and not ok:
            wrong.append((c, "ran, but no task is recorded succeeded"))
        if ok and not runs.get(c):
            wrong.append((c, "recorded succeeded, but never ran"))
        for t in ts:
            if t["attempts"] > 1:
                wrong.append((c, f"task {t['id']} has {t['attempts']} attempts"))
            if t["state"] == "skipped" and not ok:
                wrong.append((c, f"task {t['id']} skipped without a completed twin"))
            if t["state"] not in ("succeeded", "skipped"):
                wrong.append((c, f"task {t['id']} ended {t['state']}: {t['message']}"))
        expected = 2 if c in dup_half else 1
        if len(ts) != expected:
            wrong.append((c, f"{len(ts)} tasks instead of {expected}"))
    return {"lost": len(lost) + len(lost_tasks), "lost_configs": lost[:20],
            "unfinished_tasks": lost_tasks[:20], "run_twice": len(twice),
            "run_twice_configs": twice[:20], "overlapping": len(overlapped),
            "wrong_states": len(wrong), "wrong": wrong[:20], "tasks": len(tasks)}


def soak(configs=400, kills=25, gpus=4, slots=2, seed=1, min_up=2.0, max_up=5.0, root=None,
         keep=False, timeout=1800, settings=None):
    """Run the soak; return its figures as a dict (``settings``: {name: value} for the server)."""
    rng = random.Random(seed)
    root = root or tempfile.mkdtemp(prefix="slotrun-soak-")
    ws = make_workspace(root, configs, seed)
    env = clean_env(SLOTRUN_FAKE_GPUS=gpus, SLOTRUN_GPU_SLOTS=slots, SLOTRUN_AUTH="false",
                    SLOTRUN_FAKE_GPU_DIR=os.path.join(root, "fakegpu"), PYTHONUNBUFFERED=1,
                    SLOTRUN_COMMAND=f"{{python}} -I -S {TASK} {{config}} {{results}}.runs",
                    **{f"SLOTRUN_{k.upper()}": v for k, v in (settings or {}).items()})
    server = Server(ws, free_port(), env, os.path.join(root, "server.log"))
    names = config_names(configs)
    half = {n for n in names if n.startswith("configs/soak/a/")}
    down = []
    done_kills = 0
    try:
        server.start()
        t0 = time.time()
        server.post("/batches", {"pattern": "configs/soak/"})
        server.post("/batches", {"pattern": "configs/soak/a/"})  # the first half again
        from app.store import Store

        store = Store(os.path.join(ws, ".slotrun", "state.db"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = store.state_counts()
            if not counts.get("queued") and not counts.get("running"):
                break
            if done_kills < kills:
                time.sleep(rng.uniform(min_up, max_up))
                counts = store.state_counts()
                if not counts.get("queued") and not counts.get("running"):
                    continue  # nothing left to disturb
                killed_at = time.time()
                server.kill()
                done_kills += 1
                time.sleep(rng.uniform(0, 0.5))
                server.start()
                down.append((killed_at, time.time()))
                log(f"soak: kill {done_kills}/{kills}; {counts}")
            else:
                time.sleep(0.2)
        t_end = time.time()
        server.stop()
        runs = read_runs(ws)
        capacity = gpus * slots
        result = check(ws, names, runs, half)
        stall, stall_up = longest_stall(runs, names, capacity, t0, max(
            [e for rs in runs.values() for _, e, _ in rs] or [t_end]), down)
        result.update({
            "configs": configs, "kills": done_kills, "slots": capacity, "seed": seed,
            "settings": settings or {},
            "wall_s": round(t_end - t0, 1), "longest_stall_s": round(stall, 2),
            "longest_stall_without_restarts_s": round(stall_up, 2),
            "restart_s_median": round(sorted(e - s for s, e in down)[len(down) // 2], 2)
            if down else None,
        })
        return result
    finally:
        server.kill()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv=None):
    """Run the soak from the command line; print and save its figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=int, default=400)
    p.add_argument("--kills", type=int, default=25)
    p.add_argument("--gpus", type=int, default=4)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--min-up", type=float, default=2.0)
    p.add_argument("--max-up", type=float, default=5.0)
    p.add_argument("--out", default=os.path.join(HERE, "out", "soak.json"))
    p.add_argument("--keep", action="store_true", help="keep the workspace (its path is printed)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a server setting, e.g. --set admission=false (repeatable)")
    args = p.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.set)
    root = tempfile.mkdtemp(prefix="slotrun-soak-")
    if args.keep:
        log(f"soak workspace: {root}")
    result = soak(args.configs, args.kills, args.gpus, args.slots, args.seed, args.min_up,
                  args.max_up, root=root, keep=args.keep, settings=settings)
    result["machine"] = machine_info()
    write_result(args.out, result)
    bad = result["lost"] or result["run_twice"] or result["wrong_states"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
