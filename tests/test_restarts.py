"""Real servers and multi-run.py restarted, killed and faulted while work is queued."""

import os
import signal
import sqlite3
import time

import pytest

from app.errors import WorkspaceLocked
from app.executors.local import read_record
from app.scheduler import check_workspace_free
from app.store import Store
from tests.helpers import ServerProcess, task_env, wait_for
from tests.test_server import Recorder

pytestmark = pytest.mark.slow


@pytest.fixture
def env(workspace, tmp_path):
    """A server's environment: accounts off (loopback), 2 CPU slots, fast faults."""
    return task_env(SLOTRUN_WORKSPACE=workspace, SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu"),
                    SLOTRUN_AUTH="false", SLOTRUN_CPU_SLOTS=2, SLOTRUN_SIM_TIME=1,
                    SLOTRUN_FAULT_PAUSE_AFTER=1, SLOTRUN_STORE_BUSY_TIMEOUT=0.3,
                    PYTHONUNBUFFERED=1)


def workspace_free(workspace):
    """Return whether no engine holds the workspace now."""
    try:
        check_workspace_free(workspace)
    except WorkspaceLocked:
        return False
    return True


def tasks_of(store, batch_id):
    return store.list_tasks(batch_id=batch_id, limit=1000, newest_first=False)[0]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_restarted_server_starts_queued_work_at_once(env, workspace, tmp_path, sig):
    """Stopped while 2 tasks ran and 3 waited; the 2 end while no server runs. The next
    server has queued work, free slots and nothing running: it starts it at once."""
    server = ServerProcess(tmp_path / "first.log", env, workspace, stop_signal=sig)
    store = Store(os.path.join(workspace, ".slotrun", "state.db"))
    try:
        r = server.api("POST", "/batches", json={"pattern": "exp-(1|2-1)", "use_gpu": False})
        assert r.status_code == 201, r.text
        batch = r.json()["id"]
        wait_for(lambda: sum(t["state"] == "running" for t in tasks_of(store, batch)) == 2, 15)
    finally:
        server.stop()
    # Under gunicorn a SIGKILL reaches the master; its worker (the engine) sees it gone and
    # ends within a second or so: a new server can take the workspace once it has.
    wait_for(lambda: workspace_free(workspace), 15, interval=0.1)
    running = []
    for t in tasks_of(store, batch):
        run_dir = t["state"] == "running" and store.latest_attempt(t["id"])["run_dir"]
        # A start recorded in the instant of the kill may have no process (no pid in the
        # record): the next server undoes it. The others outlive the server and end while it
        # is down.
        if run_dir and read_record(run_dir).pid is not None:
            running.append(t)
            wait_for(lambda d=run_dir: read_record(d).code is not None, 10)
    assert len(running) >= 2
    queued = {t["id"] for t in tasks_of(store, batch) if t["state"] == "queued"}
    assert queued
    server = ServerProcess(tmp_path / "second.log", env, workspace)
    try:
        t0 = time.monotonic()
        wait_for(lambda: any(store.get_task(i)["state"] != "queued" for i in queued), 5,
                 message="the restarted server did not start the queued tasks")
        first_start = time.monotonic() - t0
        wait_for(lambda: all(t["state"] == "succeeded" for t in tasks_of(store, batch)), 30)
        for t in tasks_of(store, batch):
            assert t["attempts"] == 1, t
        ended_meanwhile = [store.get_task(t["id"]) for t in running]
        for t in ended_meanwhile:  # the real end, not the time the next server noticed it
            assert t["finished_at"] - t["started_at"] < 2.5, t
    finally:
        server.stop()
    assert first_start < 5


def test_fault_pause_reaches_status_socket_and_log_and_resumes(env, workspace, tmp_path):
    server = ServerProcess(tmp_path / "server.log", env, workspace)
    store = Store(os.path.join(workspace, ".slotrun", "state.db"))
    rec = locker = None
    try:
        rec = Recorder(server.url)
        r = server.api("POST", "/batches", json={"pattern": "exp-(1|2-1)", "use_gpu": False})
        batch = r.json()["id"]
        wait_for(lambda: sum(t["state"] == "running" for t in tasks_of(store, batch)) == 2, 15)
        locker = sqlite3.connect(store.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")

        def paused():
            q = server.api("GET", "/status").json()["queue"]
            return q if q["paused"] and q["auto"] else None

        q = wait_for(paused, 20, interval=0.2)
        assert "database is locked" in q["reason"] and q["since"]
        wait_for(lambda: [e for e in rec.named("queue") if e["auto"] and e["reason"] == q["reason"]],
                 5)
        assert {t["state"] for t in tasks_of(store, batch)} <= {"queued", "running"}
        locker.execute("ROLLBACK")
        locker.close()
        locker = None
        wait_for(lambda: all(t["state"] == "succeeded" for t in tasks_of(store, batch)), 40)
        assert all(t["attempts"] == 1 for t in tasks_of(store, batch))
        wait_for(lambda: not server.api("GET", "/status").json()["queue"]["paused"], 5)
        wait_for(lambda: rec.named("queue")[-1]["paused"] is False, 5)
    finally:
        if locker is not None:
            locker.execute("ROLLBACK")
            locker.close()
        if rec is not None:
            rec.close()
        server.stop()
    out = server.output()
    assert "queue paused: " in out and "database is locked" in out
    assert "queue resumed: the fault is gone" in out
