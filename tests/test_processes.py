"""No process of a task outlives it: leftovers, cancels, setsid escapes, engine crashes.

Real processes throughout. The task command is ``procs.py MODE``: it starts helper children
that report when their signal handling is set up, records their pids in its results folder,
and exits or keeps running. A child started in "record" mode writes the time it received
SIGTERM before exiting, so a test can compare when it died with the engine's records.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from app.executors.local import read_exit_code
from app.executors.processes import MARKER, is_subreaper
from app.paths import state_db
from app.store import Store
from tests.helpers import ROOT, ServerProcess, task_env, wait_for
from tests.test_engine import Recorder, make_engine

COMMAND = "{python} procs.py {name}"

PROCS = r'''
import os, signal, subprocess, sys, time

CHILD = """
import os, signal, sys, time
fd, how, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def term(*args):
    with open(path, "w") as f:
        f.write(repr(time.time()))
    os._exit(0)
signal.signal(signal.SIGTERM, term if how == "record" else signal.SIG_IGN)
os.write(fd, b"x")
os.close(fd)
while True:
    time.sleep(1)
"""

name = sys.argv[1]
mode = name.split("-", 1)[1]
out = os.environ["SLOTRUN_RESULTS"]
os.makedirs(out, exist_ok=True)


def spawn(how, **kwargs):
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(w), how, ""], pass_fds=(w,), **kwargs)
    os.close(w)
    os.read(r, 1)  # its SIGTERM handling is in place
    os.close(r)
    return p.pid


def spawn_recording(**kwargs):
    r, w = os.pipe()
    path = os.path.join(out, "died")
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(w), "record", path], pass_fds=(w,),
                         **kwargs)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    return p.pid


def record(pids):
    with open(os.path.join(out, "pids.tmp"), "w") as f:
        f.write(" ".join(map(str, pids)))
    os.rename(os.path.join(out, "pids.tmp"), os.path.join(out, "pids"))


if mode == "quick":
    sys.exit(0)
if mode == "late":
    time.sleep(1.0)
if mode in ("leave", "late"):
    record([spawn_recording()])
    sys.exit(0)
if mode == "sleep":  # the shell way: sleep 30 &
    record([subprocess.Popen(["sleep", "30"]).pid])
    sys.exit(0)
if mode == "setsid":
    record([spawn_recording(start_new_session=True)])
    sys.exit(0)
if mode == "ignore":
    record([spawn("ignore")])
elif mode == "setsidwait":
    record([spawn_recording(start_new_session=True)])
elif mode == "mixed":
    record([spawn("ignore"), spawn_recording(start_new_session=True), os.getpid()])
while True:
    time.sleep(1)
'''

FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


def alive(pid):
    """Return True while a process exists and has not finished (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture
def ws(workspace):
    """The test workspace with procs.py and one config per mode in configs/p/."""
    with open(os.path.join(workspace, "procs.py"), "w") as f:
        f.write(PROCS)
    os.makedirs(os.path.join(workspace, "configs", "p"))
    for name in ("1-leave", "1-sleep", "1-ignore", "1-setsid", "1-setsidwait", "1-late",
                 "1-mixed", "2-quick"):
        with open(os.path.join(workspace, "configs", "p", f"{name}.yaml"), "w") as f:
            f.write("model_params:\n  name: circle\n  radius: 1.0\n")
    return workspace


def results(ws, name):
    return os.path.join(ws, "results", "p", name)


def pids_of(ws, name):
    """Wait for a task's helper pids; return them."""
    path = os.path.join(results(ws, name), "pids")
    wait_for(lambda: os.path.exists(path), timeout=15, message=f"{name} wrote no pids")
    with open(path) as f:
        return [int(x) for x in f.read().split()]


def died_at(ws, name):
    with open(os.path.join(results(ws, name), "died")) as f:
        return float(f.read())


def final(store, ids):
    return all(store.get_task(i)["state"] in FINAL for i in ids)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "1")


def test_leftover_child_is_stopped_before_the_slot_is_reused(ws, one_gpu):
    """A task that exits 0 leaving a child: the child is stopped, the task still succeeded
    (its message says what was stopped), and the next task on the 1-slot GPU starts only
    once the child is gone."""
    rec = Recorder()
    eng, store = make_engine(ws, rec, kill_grace=3)
    try:
        b = eng.submit(["configs/p/1-leave.yaml", "configs/p/2-quick.yaml"], "ann",
                       command=COMMAND)
        first, second = (t["id"] for t in b["tasks"])
        [child] = pids_of(ws, "1-leave")
        wait_for(lambda: final(store, [first, second]), timeout=20)
        t1, t2 = store.get_task(first), store.get_task(second)
        assert t1["state"] == "succeeded" and t1["exit_code"] == 0, t1
        assert t1["message"] == "1 leftover process stopped after the task ended"
        assert not alive(child)
        died = died_at(ws, "1-leave")
        assert died <= t1["finished_at"] <= t2["started_at"]
        assert t2["state"] == "succeeded" and t2["device"] == "gpu0" == t1["device"]
        # The end published live says the same as the record.
        assert [p["message"] for e, p in rec.events if e == "task" and p["id"] == first
                and p["state"] == "succeeded"][-1] == t1["message"]
        assert not is_subreaper()  # library use never makes the test runner a reaper
    finally:
        eng.stop()


def test_sleep_left_in_the_background_is_gone_when_the_task_is_recorded(ws, one_gpu):
    eng, store = make_engine(ws, kill_grace=3)
    try:
        b = eng.submit(["configs/p/1-sleep.yaml"], "ann", command=COMMAND)
        tid = b["tasks"][0]["id"]
        [child] = pids_of(ws, "1-sleep")
        wait_for(lambda: store.get_task(tid)["state"] in FINAL, timeout=15)
        assert not alive(child)  # written down only once the sleep was gone
        t = store.get_task(tid)
        assert t["state"] == "succeeded" and "1 leftover process stopped" in t["message"]
    finally:
        eng.stop()


def test_cancel_waits_for_a_grandchild_that_ignores_sigterm(ws, one_gpu):
    grace = 1.5
    eng, store = make_engine(ws, kill_grace=grace)
    try:
        b = eng.submit(["configs/p/1-ignore.yaml", "configs/p/2-quick.yaml"], "ann",
                       command=COMMAND)
        first, second = (t["id"] for t in b["tasks"])
        [stubborn] = pids_of(ws, "1-ignore")
        t0 = time.time()
        eng.cancel_task(first)
        wait_for(lambda: store.get_task(first)["state"] in FINAL, timeout=15)
        assert not alive(stubborn)
        t1 = store.get_task(first)
        assert t1["state"] == "cancelled"
        assert t1["message"] == "cancelled while running; 1 process ignored SIGTERM and was " \
                                "killed after 1.5 s"
        assert t1["finished_at"] - t0 >= grace - 0.05
        assert store.latest_attempt(first)["stop_reason"] == "cancel"
        wait_for(lambda: store.get_task(second)["state"] in FINAL, timeout=15)
        assert store.get_task(second)["started_at"] >= t1["finished_at"]
    finally:
        eng.stop()


def test_cancel_stops_a_child_that_left_the_session(ws):
    """Even without a subreaper, a stop finds processes that called setsid by the marker
    every process of the task inherits."""
    eng, store = make_engine(ws, kill_grace=3)
    try:
        b = eng.submit(["configs/p/1-setsidwait.yaml"], "ann", use_gpu=False, command=COMMAND)
        tid = b["tasks"][0]["id"]
        [escaped] = pids_of(ws, "1-setsidwait")
        assert os.getsid(escaped) == escaped  # it did leave the task's session
        with open(f"/proc/{escaped}/environ", "rb") as f:
            run_dir = store.latest_attempt(tid)["run_dir"]
            assert f"{MARKER}={run_dir}".encode() in f.read().split(b"\0")
        eng.cancel_task(tid)
        wait_for(lambda: store.get_task(tid)["state"] == "cancelled", timeout=15)
        assert not alive(escaped)
        assert died_at(ws, "1-setsidwait") <= store.get_task(tid)["finished_at"]
    finally:
        eng.stop()


def multi_run(ws, *args, env):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "multi-run.py"), *args],
                            cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_headless_run_catches_a_setsid_escape(ws):
    """multi-run.py is a child subreaper: a child that called setsid and outlived its task is
    reparented to it, stopped, and the next task on the one slot starts after it is gone."""
    proc = multi_run(ws, "-c", r"configs/p/(1-setsid|2-quick)\.yaml$", "-gpu", "false", "-d", "1",
                     "-check", "false", "--command", COMMAND, env=task_env(SLOTRUN_KILL_GRACE=3))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert "Summary: 2 succeeded, 0 failed, 0 skipped" in out
    [escaped] = pids_of(ws, "1-setsid")
    assert not alive(escaped)
    store = Store(state_db(ws))
    t1, t2 = (store.get_task(i) for i in (1, 2))
    assert t1["config"] == "configs/p/1-setsid.yaml"
    assert t1["message"] == "1 leftover process stopped after the task ended"
    assert died_at(ws, "1-setsid") <= t1["finished_at"] <= t2["started_at"]


def test_server_catches_a_setsid_escape(ws, tmp_path):
    """The server's process is a child subreaper too (on 1 simulated GPU, 1 slot)."""
    env = task_env(SLOTRUN_FAKE_GPUS=1, SLOTRUN_WORKSPACE=ws, SLOTRUN_AUTH="false",
                   SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu"), SLOTRUN_KILL_GRACE=3)
    server = ServerProcess(tmp_path / "server.log", env, ws)
    try:
        status, batch = server.json_api("POST", "/batches", {
            "pattern": r"^configs/p/(1-setsid|2-quick)\.yaml$", "use_gpu": True,
            "command": COMMAND})
        assert status == 201, batch
        first, second = (t["id"] for t in batch["tasks"])
        [escaped] = pids_of(ws, "1-setsid")
        wait_for(lambda: server.json_api("GET", f"/tasks/{second}")[1]["state"] in FINAL,
                 timeout=20)
        t1 = server.json_api("GET", f"/tasks/{first}")[1]
        t2 = server.json_api("GET", f"/tasks/{second}")[1]
    finally:
        server.stop()
    assert not alive(escaped)
    assert t1["state"] == "succeeded" and t2["state"] == "succeeded"
    assert t1["message"] == "1 leftover process stopped after the task ended"
    assert died_at(ws, "1-setsid") <= t1["finished_at"] <= t2["started_at"]


def test_headless_ctrl_c_stops_every_process_of_the_session_and_escapes(ws):
    grace = 1.0
    proc = multi_run(ws, "-c", "configs/p/1-mixed", "-gpu", "false", "-check", "false",
                     "--command", COMMAND, env=task_env(SLOTRUN_KILL_GRACE=grace))
    pids = pids_of(ws, "1-mixed")
    assert len(pids) == 3 and all(alive(p) for p in pids)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert time.monotonic() - t0 < grace + 5
    assert not any(alive(p) for p in pids)
    assert "1 interrupted" in out


def test_ended_while_no_engine_ran_leftovers_are_stopped_at_recovery(ws):
    """kill -9 of multi-run.py; the task then ends leaving a child; the next engine stops
    the child before it writes the end down."""
    proc = multi_run(ws, "-c", "configs/p/1-late", "-gpu", "false", "-check", "false",
                     "--command", COMMAND, env=task_env(SLOTRUN_KILL_GRACE=3))
    assert proc.stdout.readline().startswith("Start the process")
    proc.kill()
    proc.communicate()
    store = Store(state_db(ws))
    [a] = store.running_attempts()
    wait_for(lambda: read_exit_code(a["run_dir"]) is not None, timeout=15)
    [child] = pids_of(ws, "1-late")
    assert alive(child)
    eng, store = make_engine(ws, kill_grace=3)
    try:
        wait_for(lambda: store.get_task(a["task_id"])["state"] in FINAL, timeout=15)
        assert not alive(child)
        t = store.get_task(a["task_id"])
        assert t["state"] == "succeeded" and t["exit_code"] == 0
        assert t["message"] == "1 leftover process stopped after the task ended"
    finally:
        eng.stop()


def _quietly(fn, *args):
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the server it talks to is killed meanwhile
        pass


@pytest.mark.parametrize("restart", ["after the grace", "within the grace"])
def test_engine_killed_during_the_grace_next_engine_finishes_the_kill(ws, tmp_path,
                                                                      monkeypatch, restart):
    """Cancel on a real server, SIGKILL of the server during the grace (so its SIGKILL never
    comes): the next engine finds the recorded stop and kills what is left when the recorded
    grace ends (at once if it has), records the cancel, and only then reuses the slot."""
    grace = 3.0
    gpu_dir = str(tmp_path / "fakegpu")
    env = task_env(SLOTRUN_FAKE_GPUS=1, SLOTRUN_WORKSPACE=ws, SLOTRUN_FAKE_GPU_DIR=gpu_dir,
                   SLOTRUN_AUTH="false", SLOTRUN_KILL_GRACE=grace)
    server = ServerProcess(tmp_path / "server.log", env, ws)
    try:
        status, batch = server.json_api("POST", "/batches", {
            "pattern": "^configs/p/(1-ignore|2-quick)", "use_gpu": True, "command": COMMAND})
        assert status == 201, batch
        first, second = (t["id"] for t in batch["tasks"])
        [stubborn] = pids_of(ws, "1-ignore")
        store = Store(state_db(ws))
        wrapper = store.latest_attempt(first)["pid"]
        # The cancel answers once the task has stopped, which the engine's death prevents.
        threading.Thread(target=_quietly, args=(server.json_api, "POST", f"/tasks/{first}/cancel"),
                         daemon=True).start()
        wait_for(lambda: store.latest_attempt(first)["stop_requested_at"], timeout=10)
        # The main process is gone at once; the stubborn grandchild waits for its SIGKILL.
        wait_for(lambda: not alive(wrapper), timeout=5)
        assert alive(stubborn) and store.get_task(first)["state"] == "running"
        # The engine runs in gunicorn's worker: kill the master first (so it starts no new
        # worker), then the worker.
        engine_pid = server.json_api("GET", "/status")[1]["engine"]["pid"]
        server.proc.kill()
        server.proc.wait()
        os.kill(engine_pid, signal.SIGKILL)
        wait_for(lambda: not alive(engine_pid), timeout=5)
    finally:
        server.stop()
    attempt = store.latest_attempt(first)
    requested = attempt["stop_requested_at"]
    assert attempt["stop_reason"] == "cancel" and requested
    wait_for(lambda: time.time() > requested + (grace + 0.2 if restart == "after the grace"
                                                else grace / 2), timeout=10)
    assert alive(stubborn)  # nobody sent the SIGKILL
    assert store.get_task(second)["state"] == "queued"
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "1")
    monkeypatch.setenv("SLOTRUN_FAKE_GPU_DIR", gpu_dir)
    t0 = time.time()
    eng, store = make_engine(ws, kill_grace=grace)
    try:
        wait_for(lambda: store.get_task(first)["state"] in FINAL, timeout=10)
        assert not alive(stubborn)
        t1 = store.get_task(first)
        assert t1["state"] == "cancelled", t1
        assert t1["message"] == "cancelled while running; 1 process ignored SIGTERM and was " \
                                "killed after 3 s"
        if restart == "after the grace":
            assert t1["finished_at"] - t0 < grace - 0.5  # at once, not after a fresh grace
        else:  # when the recorded grace ends: neither sooner nor a fresh grace later
            assert requested + grace - 0.05 <= t1["finished_at"] < t0 + grace - 0.3
        wait_for(lambda: store.get_task(second)["state"] in FINAL, timeout=15)
        t2 = store.get_task(second)
        assert t2["state"] == "succeeded" and t2["started_at"] >= t1["finished_at"]
    finally:
        eng.stop()


REAPER_CHECK = r'''
import json, os, subprocess, sys, threading, time
sys.path.insert(0, sys.argv[2])
from app import settings as settings_mod
from app.devices import open_inventory
from app.executors import claim_orphans
from app.executors.processes import is_subreaper
from app.paths import state_db
from app.scheduler import Engine
from app.store import Store

ws = sys.argv[1]
s = settings_mod.load({"workspace": ws, "kill_grace": 3, "cpu_slots": 2})
claimed = claim_orphans(s)
store = Store(state_db(ws))
eng = Engine(s, store, open_inventory()).start()
codes, stop = [], threading.Event()

def others():  # children this process starts itself keep their exit statuses
    while not stop.is_set():
        codes.append(subprocess.run(["sh", "-c", "exit 7"]).returncode)

t = threading.Thread(target=others)
t.start()
b = eng.submit(["configs/p/1-leave.yaml", "configs/p/1-setsid.yaml", "configs/p/1-sleep.yaml",
                "configs/p/2-quick.yaml"], "ann", use_gpu=False,
               command="{python} procs.py {name}")
ids = [x["id"] for x in b["tasks"]]
while not all(store.get_task(i)["state"] in ("succeeded", "failed") for i in ids):
    time.sleep(0.02)
stop.set()
t.join()
eng.stop()
kids = []
for tid in os.listdir("/proc/self/task"):
    try:  # a thread (a stop job's) may end between the listing and the read
        with open(f"/proc/self/task/{tid}/children") as f:
            kids += f.read().split()
    except OSError:
        pass
states = []
for k in kids:
    try:
        with open(f"/proc/{k}/stat") as f:
            states.append(f.read().rsplit(") ", 1)[1][0])
    except OSError:
        pass
print(json.dumps({"claimed": claimed, "subreaper": is_subreaper(), "codes": sorted(set(codes)),
                  "runs": len(codes), "children": states,
                  "messages": [store.get_task(i)["message"] for i in ids]}))
'''


def test_subreaper_reaps_task_orphans_and_leaves_other_children_alone(ws):
    """A process that claimed its tasks' orphans (as the server and multi-run.py do) reaps
    the orphans it stops, leaves no zombie, and never takes the exit status of a child it
    started itself for another purpose."""
    r = subprocess.run([sys.executable, "-c", REAPER_CHECK, ws, ROOT], cwd=ws, env=task_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["claimed"] and got["subreaper"]
    assert got["codes"] == [7] and got["runs"] >= 3
    assert got["children"] == []  # every orphan was reaped, no zombie left
    assert got["messages"] == ["1 leftover process stopped after the task ended"] * 3 + [None]
