"""One run of a config at a time per workspace: overlapping batches by several users,
multi-run.py rerun after kill -9, and what a killed headless run leaves queued.

Every run appends its own start and end times to a file beside its results (the tasks' own
timestamps), so the tests count runs and overlaps from what actually ran.
"""

import os
import signal
import subprocess
import sys

import pytest

from app.scheduler import state_dir
from app.store import Store
from tests.helpers import ROOT, task_env, wait_for
from tests.test_engine import done, make_engine

STAMP = os.path.join(ROOT, "bench", "tasks", "stamp.py")


def write_configs(ws, group, n):
    folder = os.path.join(ws, "configs", group)
    os.makedirs(folder, exist_ok=True)
    os.makedirs(os.path.join(ws, "results", group), exist_ok=True)
    for i in range(1, n + 1):
        with open(os.path.join(folder, f"{group}-{i}.yaml"), "w") as f:
            f.write(f"model_params:\n  name: circle\n  radius: {i}.0\n")
    return [f"configs/{group}/{group}-{i}.yaml" for i in range(1, n + 1)]


def stamp_command(seconds):
    """A task that appends "start_ns end_ns" to results/<group>/<name>.runs."""
    return f"{{python}} {STAMP} {{results}}.runs {seconds}"


def runs_of(ws, config):
    """Return the (start, end) seconds of every run of a config, from its own stamps."""
    path = os.path.join(ws, "results", config[len("configs/"):-len(".yaml")] + ".runs")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(int(x) / 1e9 for x in line.split()) for line in f if line.strip()]


def overlapping(intervals):
    s = sorted(intervals)
    return any(b[0] < a[1] for a, b in zip(s, s[1:]))


def test_overlapping_batches_run_each_config_once(workspace):
    """Three users submit once-[1-4], once-[3-6] and once at the same moment."""
    configs = write_configs(workspace, "once", 6)
    eng, store = make_engine(workspace, cpu_slots=4, command=stamp_command(0.4))
    try:
        eng.set_paused(True)  # all three are queued before anything starts: a real race
        batches = [eng.submit([c for c in configs if c[-6] in digits], owner, use_gpu=False)
                   for owner, digits in (("ann", "1234"), ("bob", "3456"), ("cy", "123456"))]
        eng.set_paused(False)
        ids = [t["id"] for b in batches for t in b["tasks"]]
        wait_for(lambda: done(store, ids), timeout=30)
    finally:
        eng.stop()
    tasks = [store.get_task(i) for i in ids]
    for c in configs:
        assert len(runs_of(workspace, c)) == 1, (c, runs_of(workspace, c))
    succeeded = {t["config"]: t for t in tasks if t["state"] == "succeeded"}
    assert sorted(succeeded) == configs
    skipped = [t for t in tasks if t["state"] == "skipped"]
    assert len(skipped) == len(tasks) - 6 == 8
    for t in skipped:  # each names the task that completed its config
        by = succeeded[t["config"]]
        assert t["message"].endswith(f"by task {by['id']} of batch {by['batch_id']}"), t
        assert t["attempts"] == 0


def test_overwrite_duplicate_waits_for_the_running_one_then_runs(workspace):
    configs = write_configs(workspace, "once", 4)
    eng, store = make_engine(workspace, cpu_slots=4, command=stamp_command(0.5))
    try:
        eng.set_paused(True)
        a = eng.submit(configs[:3], "ann", use_gpu=False)
        b = eng.submit(configs[1:], "bob", use_gpu=False, overwrite=True)
        eng.set_paused(False)
        ids = [t["id"] for t in a["tasks"] + b["tasks"]]
        wait_for(lambda: done(store, ids), timeout=30)
    finally:
        eng.stop()
    for t in b["tasks"]:  # overwrite: every one runs
        assert store.get_task(t["id"])["state"] == "succeeded"
    for c in configs:
        runs = runs_of(workspace, c)
        assert not overlapping(runs), (c, runs)  # never two at once in one results folder
        assert 1 <= len(runs) <= 2
    assert len(runs_of(workspace, configs[0])) == 1 and len(runs_of(workspace, configs[3])) == 1


@pytest.mark.slow
def test_rerun_after_kill_9_waits_for_readopted_runs_and_runs_nothing_twice(workspace):
    configs = write_configs(workspace, "k", 8)
    cmd = ["--command", stamp_command(2)]
    args = [sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "configs/k/", "-gpu",
            "false", "-d", "3", "-check", "false", *cmd]
    first = subprocess.Popen(args, cwd=workspace, env=task_env(), stdout=subprocess.PIPE,
                             text=True)
    starts = [first.stdout.readline() for _ in range(3)]
    assert all(s.startswith("Start the process") for s in starts)
    first.send_signal(signal.SIGKILL)
    first.wait()
    r = subprocess.run(args, cwd=workspace, env=task_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    for c in configs:
        runs = runs_of(workspace, c)
        assert len(runs) == 1, (c, runs)
    # The three runs the killed command started were re-adopted; the rerun waited for them
    # and skipped their configs instead of starting them again.
    assert r.stdout.count("Start the process") == 5, r.stdout
    assert r.stdout.count("Skip configs/k/") == 3
    store = Store(os.path.join(state_dir(workspace), "state.db"))
    assert store.state_counts().get("queued", 0) == 0
