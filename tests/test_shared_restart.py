"""Two users share one queue on simulated GPUs and the server is restarted under them.

A real server on a loopback port (GPU mode: 2 simulated GPUs, 2 slots each, accounts on),
two members with their own API tokens and overlapping patterns, real task processes and the
workspace's real SQLite store. The server is killed (SIGKILL) or stopped (SIGTERM) while four
tasks run and the rest wait; a new server is started on the same workspace and port.

Each task process writes a file of its own: its config name, the GPU it was given (the
``{gpu}`` placeholder and CUDA_VISIBLE_DEVICES), and its own start and end times. The test
counts runs and overlaps from those files, i.e. from what actually ran, not from the store.
"""

import json
import os
import shlex
import signal
import time

import pytest

from app.accounts import Accounts
from app.store import Store
from tests.helpers import ServerProcess, make_workspace, task_env, wait_for
from tests.test_restarts import workspace_free

pytestmark = pytest.mark.slow

CONFIGS = [f"configs/shared/c{i:02d}.yaml" for i in range(18)]
PATTERNS = {"ann": r"shared/c(0[0-9]|1[01])\.yaml",  # c00..c11
            "bob": r"shared/c(0[6-9]|1[0-7])\.yaml"}  # c06..c17: c06..c11 overlap
SLOTS_PER_GPU = 2
TASK_SECONDS = 1.5
# Written into the test's folder and run as each task: one file per run, created when it
# starts (so a run killed before its end still counts), its end added when it ends. After
# its sleep a task waits (a minute at most) while the hold file exists and does not name
# it: the test decides which tasks end before the restart and which run across it.
TASK = """\
import json, os, sys, time
start = time.time()
name, gpu, folder, seconds, hold = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), \\
    sys.argv[5]
path = os.path.join(folder, "%s.%d.run" % (name, os.getpid()))
with open(path, "x") as f:
    f.write(json.dumps({"config": name, "gpu": gpu, "start": start,
                        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
time.sleep(seconds)


def held():
    try:
        with open(hold) as f:
            return name not in f.read().split()
    except FileNotFoundError:
        return False


while held() and time.time() - start < 60:
    time.sleep(0.02)
with open(path, "a") as f:
    f.write(json.dumps({"end": time.time()}) + "\\n")
"""


def read_runs(folder):
    """Return every run the tasks wrote down: config, gpu, start and end (None: no end)."""
    runs = []
    for entry in sorted(os.listdir(folder)):
        with open(os.path.join(folder, entry)) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        run = dict(lines[0])
        run["end"] = lines[1]["end"] if len(lines) > 1 else None
        runs.append(run)
    return runs


def most_at_once(runs):
    """Return the most runs whose [start, end) intervals overlap at one moment."""
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    most = now = 0
    for _, step in events:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


def results_of(ws, config):
    """Return a config's results folder (where its done marker is written)."""
    return os.path.join(ws, "results", config[len("configs/"):-len(".yaml")])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_two_users_overlapping_batches_survive_a_restart_on_gpus(tmp_path, sig):
    ws = make_workspace(tmp_path / "ws", configs=False)
    os.makedirs(os.path.join(ws, "configs", "shared"))
    for i, config in enumerate(CONFIGS):
        with open(os.path.join(ws, config), "w") as f:
            f.write(f"model_params:\n  name: circle\n  radius: {i + 1}.0\n")
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    task = tmp_path / "task.py"
    task.write_text(TASK)
    hold = tmp_path / "hold"
    command = " ".join(["{python}", "-I", "-S", shlex.quote(str(task)), "{name}", "{gpu}",
                        shlex.quote(str(runs_dir)), str(TASK_SECONDS), shlex.quote(str(hold))])
    store = Store(os.path.join(ws, ".slotrun", "state.db"))
    accounts = Accounts(store)
    tokens = {}
    for name in PATTERNS:
        accounts.add_user(name, "member", f"pw-{name}-12345")
        tokens[name] = accounts.create_token(name, "laptop")[1]
    env = task_env(PYTHONUNBUFFERED=1, SLOTRUN_AUTH="true", SLOTRUN_FAKE_GPUS=2,
                   SLOTRUN_GPU_SLOTS=SLOTS_PER_GPU, SLOTRUN_CPU_SLOTS=0,
                   SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu"))
    server = ServerProcess(tmp_path / "server.log", env, ws, ready_status=401, stop_signal=sig)

    def call(who, method, path, body=None):
        status, out = server.json_api(method, path, body, token=tokens[who])
        assert status < 300, (who, method, path, status, out)
        return out

    def tasks_of(who):  # what the user sees of their batch
        return call(who, "GET", f"/batches/{batches[who]}?per_page=100")["tasks"]

    def states():
        """Return both users' tasks as each sees them; check every success has its marker."""
        tasks = [t for who in batches for t in tasks_of(who)]
        for t in tasks:  # the end is written down only once the marker exists
            if t["state"] == "succeeded":
                assert os.path.isfile(os.path.join(results_of(ws, t["config"]), ".done")), t
        return tasks

    def running(tasks):
        return [t["name"] for t in tasks if t["state"] == "running"]

    def second_round():  # the first four ended, four more run
        tasks = states()
        return (sum(t["state"] == "succeeded" for t in tasks) == 4 and len(running(tasks)) == 4
                and tasks)

    batches = {}
    hold.write_text("")  # every task waits after its sleep until the test names it
    try:
        try:
            for who, pattern in PATTERNS.items():  # one right after the other
                batches[who] = call(who, "POST", "/batches",
                                    {"pattern": pattern, "command": command})["id"]
            first = wait_for(lambda: (lambda r: len(r) == 4 and r)(running(states())), 30,
                             interval=0.05)
            hold.write_text(" ".join(first))
            # The first four end; the first server refills its slots with four that are
            # held until the next server is up; the others wait.
            across = running(wait_for(second_round, 30, interval=0.05,
                                      message="the first server did not refill its slots"))
        finally:
            server.stop()
        # Under gunicorn a SIGKILL reaches the master; its worker (the engine) sees it gone
        # and ends within a second or so: a new server can take the workspace once it has.
        wait_for(lambda: workspace_free(ws), 15, interval=0.1)
        # Configs still to run: queued, and not run nor running in the other user's batch.
        stored = store.list_tasks(limit=100, newest_first=False)[0]
        left = {os.path.basename(t["config"])[:-5] for t in stored if t["state"] == "queued"} \
            - set(first) - set(across)
        assert len(left) == 10, f"the configs left for the restart: {sorted(left)}"
        server.log_path = tmp_path / "server-restarted.log"
        server.start()  # the same workspace, port and tokens; nobody resumes anything
        t_up = time.time()
        hold.unlink()  # the four that ran across the restart end now, watched by the new server
        wait_for(lambda: all(t["state"] not in ("queued", "running") for t in states()), 60,
                 interval=0.05, message="the queue did not finish after the restart")
        seen = {who: tasks_of(who) for who in batches}
    finally:
        if hold.exists():
            hold.unlink()
        server.stop()

    # What ran: each of the 18 configs exactly once, each run to its end.
    runs = read_runs(runs_dir)
    names = sorted(r["config"] for r in runs)
    assert names == [os.path.basename(c)[:-5] for c in CONFIGS], names
    assert all(r["end"] is not None for r in runs), [r for r in runs if r["end"] is None]
    # Each on the GPU it was given, and never more at once than the slots allow.
    assert all(r["gpu"] in ("0", "1") and r["cuda"] == r["gpu"] for r in runs), runs
    for gpu in ("0", "1"):
        on_gpu = [r for r in runs if r["gpu"] == gpu]
        assert most_at_once(on_gpu) <= SLOTS_PER_GPU, (gpu, on_gpu)
    assert most_at_once(runs) <= 2 * SLOTS_PER_GPU
    # Four ran across the restart: started by the first server, still running once the
    # next one was up, sharing the GPUs' slots with what that one started.
    assert all(r["end"] > t_up for r in runs if r["config"] in across), (across, runs)
    # The restarted server started the rest by itself, and filled all four slots again.
    after = [r for r in runs if r["config"] in left]
    assert all(r["start"] > t_up for r in after), (t_up, after)
    assert most_at_once(after) == 2 * SLOTS_PER_GPU, after

    # What each user sees through the API: their own tasks; a config both asked for
    # succeeded in one batch and the other's task says it was skipped, naming that task.
    by_config = {}
    for who, tasks in seen.items():
        assert {t["owner"] for t in tasks} == {who}
        for t in tasks:
            by_config.setdefault(t["config"], []).append(t)
    assert sorted(by_config) == CONFIGS
    for config, tasks in by_config.items():
        done = [t for t in tasks if t["state"] == "succeeded"]
        assert len(done) == 1 and done[0]["attempts"] == 1, tasks
        for t in tasks:
            if t is not done[0]:
                assert t["state"] == "skipped" and t["message"].endswith(
                    f"by task {done[0]['id']} of batch {done[0]['batch']}"), tasks
        # It ran where the store says.
        run = next(r for r in runs if r["config"] == done[0]["name"])
        assert done[0]["device"] == f"gpu{run['gpu']}", (done[0], run)
    assert sum(len(t) for t in seen.values()) == 24  # 12 + 12, nothing lost
