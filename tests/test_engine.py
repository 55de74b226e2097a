"""The engine in-process with real subprocesses and a real SQLite file."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from app import settings as settings_mod
from app.devices import open_inventory
from app.errors import Conflict, NotFound, SlotrunError, WorkspaceLocked
from app.executors.local import read_exit_code
from app.scheduler import Engine, check_template, state_dir
from app.store import Store
from tests.helpers import ROOT, task_env, wait_for

FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


class Recorder:
    """Collects the engine's published events."""

    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, event, payload):
        with self.lock:
            self.events.append((event, payload))

    def states(self, task_id):
        with self.lock:
            return [p["state"] for e, p in self.events if e == "task" and p["id"] == task_id]


def make_engine(ws, recorder=None, **overrides):
    s = settings_mod.load({"workspace": ws, "kill_grace": 2, **overrides})
    store = Store(os.path.join(state_dir(ws), "state.db"))
    eng = Engine(s, store, open_inventory(), publish=recorder or Recorder())
    return eng.start(), store


def done(store, ids):
    return all(store.get_task(i)["state"] in FINAL for i in ids)


@pytest.fixture
def gpus(monkeypatch):
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")


def test_batch_runs_and_records_everything(workspace, gpus):
    rec = Recorder()
    eng, store = make_engine(workspace, rec)
    try:
        b = eng.submit(["configs/exp-2/exp-2-1-1.yaml", "configs/exp-2/exp-2-1-2.yaml"], "ann")
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: done(store, ids), timeout=20)
        for i in ids:
            t = store.get_task(i)
            assert t["state"] == "succeeded" and t["exit_code"] == 0
            assert t["device"] in ("gpu0", "gpu1") and t["slot"] == 0
            assert t["owner"] == "ann" and t["started_at"] <= t["finished_at"]
            assert rec.states(i) == ["queued", "running", "succeeded"]
            [a] = store.attempts(i)
            assert a["pid"] and a["exit_code"] == 0 and a["state"] == "succeeded"
            with open(os.path.join(a["run_dir"], "output.log")) as f:
                assert "area=" in f.read()
        assert store.get_batch(b["id"])["counts"] == {"succeeded": 2}
        wait_for(lambda: all(u["running"] == 0 for u in eng.usage().values()))
        with rec.lock:
            last_slots = [p for e, p in rec.events if e == "slots"][-1]
        assert all(u["running"] == 0 for u in last_slots.values())
    finally:
        eng.stop()


def test_cancel_queued_and_running_and_retry(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "30")
    eng, store = make_engine(workspace, cpu_slots=1)
    try:
        b = eng.submit(["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml"], "ann",
                       use_gpu=False)
        first, second = (t["id"] for t in b["tasks"])
        wait_for(lambda: store.get_task(first)["state"] == "running")
        assert store.get_task(second)["state"] == "queued"
        assert eng.cancel_task(second)["state"] == "cancelled"
        pid = store.latest_attempt(first)["pid"]
        eng.cancel_task(first)
        wait_for(lambda: store.get_task(first)["state"] == "cancelled", timeout=10)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5)
        with pytest.raises(Conflict, match="only queued or running"):
            eng.cancel_task(first)
        with pytest.raises(NotFound):
            eng.cancel_task(99999)
        monkeypatch.setenv("SLOTRUN_SIM_TIME", "0.1")  # new processes inherit the engine's env
        assert eng.retry(second)["state"] == "queued"
        wait_for(lambda: store.get_task(second)["state"] == "succeeded", timeout=20)
        with pytest.raises(Conflict, match="can be retried"):
            eng.retry(second)
        assert store.get_task(second)["attempts"] == 1
    finally:
        eng.stop()


def test_cancel_batch(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "30")
    eng, store = make_engine(workspace, cpu_slots=2)
    try:
        b = eng.submit([f"configs/exp-3/exp-3-{i}.yaml" for i in ("1-1", "1-2", "2-1", "2-2")],
                       "ann", use_gpu=False)
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: sum(store.get_task(i)["state"] == "running" for i in ids) == 2)
        assert eng.cancel_batch(b["id"]) == {"cancelled": 2, "stopping": 2}
        wait_for(lambda: all(store.get_task(i)["state"] == "cancelled" for i in ids), timeout=10)
    finally:
        eng.stop()


def test_lowering_a_limit_never_kills_and_holds_new_starts(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "1")
    eng, store = make_engine(workspace, cpu_slots=2)
    try:
        b = eng.submit(["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml",
                        "configs/exp-1/exp-1-3.yaml"], "ann", use_gpu=False)
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: eng.usage()["cpu"]["running"] == 2)
        assert eng.set_slots("cpu", 0) == {"slots": 0, "running": 2}
        wait_for(lambda: sum(store.get_task(i)["state"] == "succeeded" for i in ids) == 2, timeout=10)
        assert store.get_task(ids[2])["state"] == "queued"
        assert store.device_limits()["cpu"] == 0
        eng.set_slots("cpu", 1)
        wait_for(lambda: store.get_task(ids[2])["state"] == "succeeded", timeout=10)
        for bad in (-1, 1.5, "2", True, 5000):
            with pytest.raises(SlotrunError, match="whole number from 0 to 1000"):
                eng.set_slots("cpu", bad)
        with pytest.raises(NotFound, match="valid: cpu"):
            eng.set_slots("gpu7", 1)
    finally:
        eng.stop()


def test_readers_get_immutable_views_swapped_by_the_scheduler(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "30")
    eng, store = make_engine(workspace, cpu_slots=1)
    try:
        before = eng.view
        assert before.queued == 0 and before.running == {} and before.devices == ("cpu",)
        b = eng.submit(["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml"], "ann",
                       use_gpu=False)
        first, second = (t["id"] for t in b["tasks"])
        wait_for(lambda: first in eng.view.running)
        running = eng.view
        # An earlier view is never changed: the scheduler published a new one.
        assert before.running == {} and before.queued == 0 and before.usage["cpu"]["running"] == 0
        r = running.running[first]
        assert (r.task_id, r.batch_id, r.owner, r.device, r.slot) == (first, b["id"], "ann", "cpu", 0)
        assert r.attempt_id == store.latest_attempt(first)["id"] and r.run_dir
        assert running.queued == 1 and running.wanted == {("cpu",): 1}
        assert running.usage["cpu"] == {"slots": 1, "running": 1} and eng.usage() is running.usage
        with pytest.raises(AttributeError):
            running.queued = 0  # frozen
        # A command's caller sees what it changed as soon as the call returns.
        eng.set_paused(True, who="ann")
        assert eng.view.queue.paused and eng.queue_state()["paused"]
        assert not running.queue.paused
        eng.set_paused(False)
        eng.cancel_task(second)
        assert eng.view.queued == 0 and eng.view.wanted == {}
        eng.set_slots("cpu", 2)
        assert eng.view.limits["cpu"] == 2 and running.limits["cpu"] == 1
        eng.cancel_task(first)
        wait_for(lambda: not eng.view.running, timeout=10)
        assert first in running.running  # still the moment it was published
    finally:
        eng.stop()


def test_submit_validation(workspace, gpus):
    eng, store = make_engine(workspace)
    try:
        with pytest.raises(SlotrunError, match="unknown GPU 'gpu9'; valid: gpu0, gpu1"):
            eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", devices=["gpu9"])
        with pytest.raises(SlotrunError, match="CPU batch runs on the device 'cpu' only"):
            eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", use_gpu=False, devices=["gpu0"])
        with pytest.raises(SlotrunError, match="no config matches"):
            eng.submit([], "ann", pattern="zzz")
        with pytest.raises(SlotrunError, match="unknown placeholder"):
            eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", command="run {nope}")
        assert store.count_batches() == 0
    finally:
        eng.stop()


def test_config_snapshot_is_what_runs(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "0.05")
    eng, store = make_engine(workspace)
    path = os.path.join(workspace, "configs", "exp-2", "exp-2-1-1.yaml")
    try:
        eng.set_paused(True)
        b = eng.submit(["configs/exp-2/exp-2-1-1.yaml"], "ann", use_gpu=False)
        with open(path, "w") as f:
            f.write("model_params:\n  name: rectangle\n  length: 100.0\n  width: 100.0\n")
        eng.set_paused(False)
        tid = b["tasks"][0]["id"]
        wait_for(lambda: store.get_task(tid)["state"] == "succeeded", timeout=10)
        with open(os.path.join(workspace, "results", "exp-2", "exp-2-1-1", "area.txt")) as f:
            assert float(f.read()) == 1.0  # the submitted YAML, not the edited file
    finally:
        eng.stop()


def test_workspace_lock(workspace):
    eng, _ = make_engine(workspace)
    try:
        with pytest.raises(WorkspaceLocked, match=f"pid {os.getpid()}"):
            make_engine(workspace)
    finally:
        eng.stop()
    eng2, _ = make_engine(workspace)  # released on stop
    eng2.stop()


def test_template_checks():
    assert check_template("{python} run.py -c {config} --gpu={gpu}") == [
        "{python}", "run.py", "-c", "{config}", "--gpu={gpu}"]
    for bad, msg in (("", "non-empty"), ("run 'unclosed", "cannot be split"),
                     ("run {x}", "unknown placeholder {x}"), ("run {", "not a valid template")):
        with pytest.raises(SlotrunError, match=msg):
            check_template(bad)


@pytest.mark.slow
def test_engine_killed_with_sigkill_tasks_survive_and_are_readopted(workspace):
    """kill -9 of the engine: tasks keep running; the next engine re-adopts the live one,
    records the one that ended meanwhile from its exit file, and runs the queued one;
    no task runs twice and none is lost."""
    cfg = os.path.join(workspace, "configs", "k")
    os.makedirs(cfg)
    for name, t in (("short", 0.5), ("long", 4.0), ("later", 0.1)):
        with open(os.path.join(cfg, f"{name}.yaml"), "w") as f:
            f.write(f"model_params:\n  name: circle\n  radius: 1.0\n  sim_time: {t}\n")
    env = task_env()
    env.pop("SLOTRUN_SIM_TIME")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "configs/k/(short|long)",
         "-gpu", "false", "-d", "2", "-check", "false"],
        cwd=workspace, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("Start")
    assert proc.stdout.readline().startswith("Start")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(os.path.join(state_dir(workspace), "state.db"))
    attempts = {a["config"]: a for a in store.running_attempts()}
    assert set(attempts) == {"configs/k/long.yaml", "configs/k/short.yaml"}
    long_pid = attempts["configs/k/long.yaml"]["pid"]
    assert os.path.exists(f"/proc/{long_pid}")
    short_dir = attempts["configs/k/short.yaml"]["run_dir"]
    wait_for(lambda: read_exit_code(short_dir) is not None, timeout=10)
    os.environ.pop("SLOTRUN_SIM_TIME", None)
    eng, store = make_engine(workspace)
    try:
        assert set(eng.running) == {attempts["configs/k/long.yaml"]["task_id"]}
        b = eng.submit(["configs/k/later.yaml"], "ann", use_gpu=False)
        ids = [a["task_id"] for a in attempts.values()] + [b["tasks"][0]["id"]]
        wait_for(lambda: done(store, ids), timeout=20)
        for i in ids:
            t = store.get_task(i)
            assert t["state"] == "succeeded" and t["exit_code"] == 0, t
            assert len(store.attempts(i)) == 1
    finally:
        eng.stop()


def test_lost_process_becomes_interrupted(workspace):
    s = settings_mod.load({"workspace": workspace, "cpu_slots": 0})  # nothing starts
    store = Store(os.path.join(state_dir(workspace), "state.db"))
    eng = Engine(s, store, open_inventory()).start()
    b = eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", use_gpu=False)
    eng.stop()
    tid = b["tasks"][0]["id"]
    # Fake a record of a running attempt whose process is gone and left no exit code.
    run_dir = os.path.join(state_dir(workspace), "runs", "lost")
    os.makedirs(run_dir)
    store.start_attempt(tid, 1, "cpu", 0, "", run_dir, ["true"], 1.0)
    p = subprocess.Popen(["true"])
    p.wait()
    aid = store.latest_attempt(tid)["id"]
    store.set_attempt_process(aid, p.pid, 12345, "")
    eng, store = make_engine(workspace)
    try:
        t = store.get_task(tid)
        assert t["state"] == "interrupted" and "lost" in t["message"]
    finally:
        eng.stop()


def test_priority_reorders_one_owners_queue(workspace):
    eng, store = make_engine(workspace, cpu_slots=0)
    try:
        a = eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", use_gpu=False)
        b = eng.submit(["configs/exp-1/exp-1-2.yaml"], "ann", use_gpu=False)
        assert eng.set_priority(b["id"], 10)["priority"] == 10
        assert store.get_task(b["tasks"][0]["id"])["priority"] == 10
        eng.set_slots("cpu", 1)
        first = b["tasks"][0]["id"]
        wait_for(lambda: store.get_task(first)["state"] in ("running", "succeeded"))
        assert store.get_task(a["tasks"][0]["id"])["state"] == "queued" or \
            store.get_task(a["tasks"][0]["id"])["started_at"] >= store.get_task(first)["started_at"]
        for bad in (1.5, "high", True, 5000):
            with pytest.raises(SlotrunError, match="whole number from -1000 to 1000"):
                eng.set_priority(b["id"], bad)
        with pytest.raises(NotFound):
            eng.set_priority(999, 1)
    finally:
        eng.stop()


def test_work_queued_before_a_restart_starts_without_a_command(workspace):
    """CPU mode (no memory sampler to wake the loop): the restarted engine starts the queue
    on its own, not at the first command that happens to arrive."""
    eng, store = make_engine(workspace, cpu_slots=0)  # nothing starts in this engine
    b = eng.submit(["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml"], "ann",
                   use_gpu=False)
    eng.stop()
    ids = [t["id"] for t in b["tasks"]]
    assert [store.get_task(i)["state"] for i in ids] == ["queued", "queued"]
    eng, store = make_engine(workspace)
    try:
        wait_for(lambda: done(store, ids), timeout=20)
        assert [store.get_task(i)["state"] for i in ids] == ["succeeded", "succeeded"]
    finally:
        eng.stop()


@pytest.mark.parametrize("code, expected", [
    ("import os; os.kill(os.getpid(), 9)", "killed by signal 9 (SIGKILL)"),
    ("import sys; sys.exit(137)", "exit code 137"),
    ("import os; os.kill(os.getpid(), 11)", "killed by signal 11 (SIGSEGV)"),
    ("raise ValueError('the mesh is empty')", "exit code 1: ValueError: the mesh is empty"),
])
def test_message_says_why_a_task_ended(workspace, code, expected):
    eng, store = make_engine(workspace, cpu_slots=1, command=f'{{python}} -c "{code}"')
    try:
        b = eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", use_gpu=False)
        tid = b["tasks"][0]["id"]
        wait_for(lambda: store.get_task(tid)["state"] == "failed", timeout=10)
        assert store.get_task(tid)["message"] == expected
    finally:
        eng.stop()
