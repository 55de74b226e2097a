"""Faults at real boundaries, and restarts with work queued.

A database locked by a second SQLite connection, a run folder the kernel refuses to write in
(even for root), a simulated GPU inventory that raises: the engine puts the task in hand back,
backs off, pauses the queue with the reason once the fault persists, loses and fails nothing,
and resumes by itself once the fault is gone. A restarted engine starts queued work at once.
"""

import contextlib
import errno
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from app.executors.local import read_record
from app.scheduler import state_dir
from app.store import Store
from tests.helpers import ROOT, task_env, wait_for
from tests.test_engine import Recorder, done, make_engine

FAST_FAULTS = {"fault_pause_after": 1.0, "store_busy_timeout": 0.3}


def exp_configs(n=6):
    names = ["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml",
             "configs/exp-1/exp-1-3.yaml", "configs/exp-2/exp-2-1-1.yaml",
             "configs/exp-2/exp-2-1-2.yaml", "configs/exp-2/exp-2-2-1.yaml",
             "configs/exp-2/exp-2-2-2.yaml", "configs/exp-3/exp-3-1-1.yaml"]
    return names[:n]


def queue_events(rec):
    with rec.lock:
        return [p for e, p in rec.events if e == "queue"]


def auto_paused(rec, words):
    return [q for q in queue_events(rec)
            if q["paused"] and q["auto"] and all(w in q["reason"] for w in words)]


def assert_each_ran_once_and_succeeded(store, ids):
    for i in ids:
        t = store.get_task(i)
        assert t["state"] == "succeeded", t
        attempts = store.attempts(i)
        assert len(attempts) == 1 and attempts[0]["state"] == "succeeded", attempts


@contextlib.contextmanager
def unwritable(folder):
    """Make a folder refuse new entries, for root too.

    ``chattr +i`` (an immutable folder: EPERM even for root) where the file system supports
    it; otherwise the folder is replaced by a file (ENOTDIR), which no user can create in.
    """
    os.makedirs(folder, exist_ok=True)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", folder],
                                                 capture_output=True).returncode == 0:
        try:
            yield "immutable"
        finally:
            subprocess.run(["chattr", "-i", folder], check=True)
        return
    aside = folder + ".aside"
    os.rename(folder, aside)
    with open(folder, "w") as f:
        f.write("not a folder\n")
    try:
        yield "a file"
    finally:
        os.unlink(folder)
        os.rename(aside, folder)


# -- restarts ------------------------------------------------------------------------------------

def test_restarted_engine_starts_queued_work_at_once(workspace):
    """Queued work, free slots, nothing running: the new engine starts it without a command."""
    eng, store = make_engine(workspace, cpu_slots=0)  # nothing can start in this engine
    b = eng.submit(exp_configs(3), "ann", use_gpu=False)
    eng.stop()
    ids = [t["id"] for t in b["tasks"]]
    assert all(store.get_task(i)["state"] == "queued" for i in ids)
    t0 = time.monotonic()
    eng, store = make_engine(workspace, cpu_slots=2)
    try:
        wait_for(lambda: any(store.get_task(i)["state"] != "queued" for i in ids), timeout=5,
                 message="the restarted engine did not start queued work by itself")
        first_start = time.monotonic() - t0
        wait_for(lambda: done(store, ids), timeout=20)
        assert_each_ran_once_and_succeeded(store, ids)
    finally:
        eng.stop()
    assert first_start < 5


def test_pause_survives_a_restart(workspace):
    rec = Recorder()
    eng, store = make_engine(workspace, rec, cpu_slots=1)
    eng.set_paused(True, "ann")
    b = eng.submit(exp_configs(1), "ann", use_gpu=False)
    eng.stop()
    tid = b["tasks"][0]["id"]
    rec = Recorder()
    eng, store = make_engine(workspace, rec, cpu_slots=1)
    try:
        assert eng.queue_state()["paused"] is True
        assert eng.queue_state()["reason"] is None and not eng.queue_state()["auto"]
        assert eng.pause["by"] == "ann"
        time.sleep(0.5)  # give a wrongly unpaused engine the time to start it
        assert store.get_task(tid)["state"] == "queued"
        eng.set_paused(False)
        wait_for(lambda: store.get_task(tid)["state"] == "succeeded", timeout=10)
    finally:
        eng.stop()
    eng, store = make_engine(workspace)
    try:
        assert eng.queue_state() == {"paused": False, "auto": False, "reason": None,
                                     "since": None}
    finally:
        eng.stop()


def test_lost_attempt_at_recovery_is_retried_within_max_retries(workspace):
    eng, store = make_engine(workspace, cpu_slots=0)
    b = eng.submit(exp_configs(1), "ann", use_gpu=False, max_retries=1)
    eng.stop()
    tid = b["tasks"][0]["id"]
    # A recorded attempt whose process is gone and left no exit code (it was lost).
    run_dir = os.path.join(state_dir(workspace), "runs", f"{tid}-1")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "pid"), "w") as f:
        f.write("999999\n")
    store.start_attempt(tid, 1, "cpu", 0, "", run_dir, ["true"], time.time() - 5)
    eng, store = make_engine(workspace, cpu_slots=1)
    try:
        wait_for(lambda: store.get_task(tid)["state"] == "succeeded", timeout=15)
        first, second = store.attempts(tid)
        assert first["state"] == "interrupted" and "requeued (retry 1 of 1)" in first["message"]
        assert second["state"] == "succeeded"
    finally:
        eng.stop()


def test_end_time_is_when_the_process_ended_not_when_it_was_noticed(workspace):
    """A task that ended while no engine ran gets its real end (the exit file's time)."""
    eng, store = make_engine(workspace, cpu_slots=1, command="sleep 1")
    b = eng.submit(exp_configs(1), "ann", use_gpu=False)
    tid = b["tasks"][0]["id"]
    wait_for(lambda: store.get_task(tid)["state"] == "running", timeout=10)
    eng.stop()  # the task goes on without an engine, and ends
    run_dir = store.latest_attempt(tid)["run_dir"]
    record = wait_for(lambda: read_record(run_dir).exit_file and read_record(run_dir), timeout=10)
    time.sleep(2)  # the new engine notices it two seconds later
    eng, store = make_engine(workspace, cpu_slots=1)
    try:
        t = store.get_task(tid)
        assert t["state"] == "succeeded"
        assert t["finished_at"] == pytest.approx(os.stat(record.exit_file).st_mtime)
        assert 0.9 < t["finished_at"] - t["started_at"] < 1.9
    finally:
        eng.stop()


# -- faults --------------------------------------------------------------------------------------

def test_locked_database_pauses_the_queue_loses_nothing_and_resumes(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "0.3")
    rec = Recorder()
    eng, store = make_engine(workspace, rec, cpu_slots=2, **FAST_FAULTS)
    locker = None
    try:
        b = eng.submit(exp_configs(6), "ann", use_gpu=False)
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: eng.usage()["cpu"]["running"] == 2, timeout=10)
        locker = sqlite3.connect(store.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # a second connection holds the write lock
        # Running tasks end meanwhile; their ends cannot be written, the next starts cannot
        # be recorded: the queue pauses itself with the reason, and nothing fails.
        paused = wait_for(lambda: auto_paused(rec, ["locked"]), timeout=20)
        assert "state.db" in paused[0]["reason"]
        assert eng.queue_state()["paused"] and eng.queue_state()["auto"]
        states = {store.get_task(i)["state"] for i in ids}  # reads still work
        assert states <= {"queued", "running"}, states
        locker.execute("ROLLBACK")
        locker.close()
        locker = None
        wait_for(lambda: done(store, ids), timeout=30)
        assert_each_ran_once_and_succeeded(store, ids)
        wait_for(lambda: not eng.queue_state()["paused"], timeout=5)
        assert queue_events(rec)[-1]["paused"] is False
    finally:
        if locker is not None:
            locker.execute("ROLLBACK")
            locker.close()
        eng.stop()


def test_unwritable_run_folder_pauses_the_queue_and_fails_nothing(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "0.2")
    rec = Recorder()
    eng, store = make_engine(workspace, rec, cpu_slots=2, **FAST_FAULTS)
    runs = os.path.join(state_dir(workspace), "runs")
    try:
        with unwritable(runs):
            b = eng.submit(exp_configs(6), "ann", use_gpu=False)
            ids = [t["id"] for t in b["tasks"]]
            paused = wait_for(lambda: auto_paused(rec, ["could not start task"]), timeout=20)
            assert runs in paused[0]["reason"]
            assert all(store.get_task(i)["state"] == "queued" for i in ids)
            assert all(store.get_task(i)["attempts"] == 0 for i in ids)
        wait_for(lambda: done(store, ids), timeout=30)
        assert_each_ran_once_and_succeeded(store, ids)
        assert not eng.queue_state()["paused"]
    finally:
        eng.stop()


def test_no_file_descriptor_left_to_watch_a_started_task_runs_it_once(workspace, monkeypatch):
    """A process that started but cannot be watched through a pidfd (the engine is out of
    file descriptors) is still the task's only run: waited for on a thread, its end and its
    exit code recorded, its slot refilled; never undone and queued again while it runs."""
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "0.2")

    def no_fd_left(pid, flags=0):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    eng, store = make_engine(workspace, Recorder(), gpu_slots=1, **FAST_FAULTS)
    monkeypatch.setattr(os, "pidfd_open", no_fd_left)
    try:
        b = eng.submit(exp_configs(4), "ann")
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: done(store, ids), timeout=30)
        assert_each_ran_once_and_succeeded(store, ids)
        assert all(store.get_task(i)["exit_code"] == 0 for i in ids)
        # Both GPUs were used, one task at a time each: a slot was refilled only once the
        # process waited for on a thread had ended.
        runs = {}
        for i in ids:
            a = store.attempts(i)[0]
            runs.setdefault(a["device"], []).append((a["started_at"], a["finished_at"]))
        assert sorted(runs) == ["gpu0", "gpu1"], runs
        for spans in runs.values():
            spans.sort()
            assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:])), runs
        assert not eng.queue_state()["paused"]
    finally:
        eng.stop()


def test_one_gpu_that_cannot_be_read_is_set_aside_not_everything(workspace, monkeypatch,
                                                                   tmp_path):
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "0.2")
    # The simulated NVML's fault switch: reading GPU 0 raises, as an NVML error would.
    fault = tmp_path / "fakegpu" / "gpu0" / "fault"
    fault.parent.mkdir(parents=True, exist_ok=True)
    fault.write_text("NVML: GPU is lost\n")
    rec = Recorder()
    eng, store = make_engine(workspace, rec, **FAST_FAULTS)
    try:
        b = eng.submit(exp_configs(4), "ann")
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: done(store, ids), timeout=30)
        assert_each_ran_once_and_succeeded(store, ids)
        assert {store.get_task(i)["device"] for i in ids} == {"gpu1"}
        assert not queue_events(rec) or not any(q["paused"] for q in queue_events(rec))
    finally:
        eng.stop()


def test_gpus_that_cannot_be_read_hold_gpu_work_run_cpu_work_and_fail_nothing(
        workspace, monkeypatch, tmp_path):
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    monkeypatch.setenv("SLOTRUN_SIM_TIME", "0.2")
    rec = Recorder()
    eng, store = make_engine(workspace, rec, cpu_slots=1, **FAST_FAULTS)
    # The simulated GPUs read their per-process memory from these folders; a file in place
    # of each makes reading every GPU raise (an OSError, not an NVML error).
    broken = [tmp_path / "fakegpu" / f"gpu{i}" for i in (0, 1)]
    for path in broken:
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("broken\n")
    try:
        # The start-up reading is fresh for a moment; once it is old, a start reads again.
        wait_for(lambda: eng.admission.reading_too_old(time.monotonic()), timeout=10)
        gpu = eng.submit(exp_configs(3), "ann")
        gpu_ids = [t["id"] for t in gpu["tasks"]]

        def held():
            u = eng.usage()
            return all(u[d].get("hold") == "fault" and "cannot be read" in u[d]["note"]
                       for d in ("gpu0", "gpu1"))

        wait_for(held, timeout=10)
        cpu = eng.submit(exp_configs(6)[3:], "ann", use_gpu=False)  # the CPU goes on
        cpu_ids = [t["id"] for t in cpu["tasks"]]
        wait_for(lambda: done(store, cpu_ids), timeout=20)
        assert_each_ran_once_and_succeeded(store, cpu_ids)
        assert all(store.get_task(i)["state"] == "queued" for i in gpu_ids)
        for path in broken:
            path.unlink()
        wait_for(lambda: done(store, gpu_ids), timeout=30)
        assert_each_ran_once_and_succeeded(store, gpu_ids)
        assert not eng.queue_state()["paused"]
    finally:
        for path in broken:
            if path.is_file():
                path.unlink()
        eng.stop()


@pytest.mark.slow
def test_headless_run_stops_in_bounded_time_on_a_persistent_fault(workspace):
    runs = os.path.join(state_dir(workspace), "runs")
    env = task_env(SLOTRUN_SIM_TIME=1, SLOTRUN_FAULT_PAUSE_AFTER=1)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "exp-(1|2)", "-gpu", "false",
         "-d", "1", "-check", "false"], cwd=workspace, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("Start the process")
        with unwritable(runs):
            t0 = time.monotonic()
            out, err = proc.communicate(timeout=60)
            took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert took < 30
    assert "The queue paused itself: could not start task" in err
    assert "stopped early: the queue paused itself" in err
    # The first task ran; the next one's run folder may have been made ahead, before the
    # fault: it runs too. Nothing fails; what could not start is cancelled, with the reason.
    summary = re.search(r"Summary: (\d+) succeeded, 0 failed, 0 skipped, (\d+) cancelled", out)
    assert summary and int(summary[1]) in (1, 2) and int(summary[1]) + int(summary[2]) == 7, out
    # Fixed: the same command resumes; nothing runs twice.
    r = subprocess.run([sys.executable, os.path.join(ROOT, "multi-run.py"), "-c", "exp-(1|2)",
                        "-gpu", "false", "-d", "2", "-check", "false"], cwd=workspace,
                       env=task_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ran = int(summary[1])  # what ran before is skipped now; the rest runs, once each
    assert r.stdout.count("Start the process") == 7 - ran
    assert r.stdout.splitlines()[-1] == f"Summary: {7 - ran} succeeded, 0 failed, {ran} skipped"
    store = Store(os.path.join(state_dir(workspace), "state.db"))
    counts = store.state_counts()
    assert counts.get("succeeded") == 7 and counts.get("queued", 0) == 0
    assert set(counts) <= {"succeeded", "cancelled", "skipped"} and counts.get("running") is None
