"""Run folders: one record of the wrapper's pid and exit code, folders made ahead of their
start (and removed when their task does not start), the 0.1.0 layout still read."""

import os

from app.executors.local import RECORD, exit_time, read_exit_code, read_record
from app.scheduler import state_dir
from tests.helpers import wait_for
from tests.test_engine import done, make_engine

SLEEP = "{python} -c \"import time; time.sleep(0.6)\""


def run_dir(ws, task_id, number=1):
    return os.path.join(state_dir(ws), "runs", f"{task_id}-{number}")


def test_one_record_of_pid_and_exit_code(workspace):
    eng, store = make_engine(workspace, cpu_slots=1)
    try:
        b = eng.submit(["configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml"], "ann",
                       use_gpu=False, command="sh -c 'exit 3'")
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: done(store, ids), timeout=20)
        for i in ids:
            [a] = store.attempts(i)
            assert a["exit_code"] == 3 and a["state"] == "failed"
            names = sorted(os.listdir(a["run_dir"]))
            assert names == ["output.log", RECORD]  # no separate pid and exit files
            with open(os.path.join(a["run_dir"], RECORD), encoding="ascii") as f:
                assert f.read() == f"pid {a['pid']}\nexit 3\n"
            assert read_record(a["run_dir"]).pid == a["pid"]
            assert abs(exit_time(a["run_dir"]) - a["finished_at"]) < 2
    finally:
        eng.stop()


def test_records_of_either_layout_are_read(tmp_path):
    new, old, made, again = (tmp_path / n for n in ("new", "old", "made", "again"))
    for d in (new, old, made, again):
        d.mkdir()
    (new / RECORD).write_text("pid 41\nexit 0\n")
    (old / "pid").write_text("42\n")  # slotrun 0.1.0 (and the Ray wrapper): two files
    (old / "exit").write_text("7\n")
    (made / RECORD).write_text("")  # made ahead, never started
    (again / RECORD).write_text("pid 43\nexit 1\npid 44\n")  # a second start, still running
    assert read_record(str(new))[:2] == (41, 0) and read_exit_code(str(new)) == 0
    assert read_record(str(old))[:2] == (42, 7) and exit_time(str(old)) is not None
    assert read_record(str(made))[:2] == (None, None) and exit_time(str(made)) is None
    assert read_record(str(again))[:2] == (44, None)
    assert read_record(str(tmp_path / "none"))[:2] == (None, None)


def test_next_run_folders_are_made_ahead_and_removed_when_their_task_does_not_start(workspace):
    eng, store = make_engine(workspace, cpu_slots=1)
    try:
        b = eng.submit([f"configs/exp-1/exp-1-{i}.yaml" for i in (1, 2, 3)], "ann",
                       use_gpu=False, command=SLEEP)
        first, second, third = (t["id"] for t in b["tasks"])
        wait_for(lambda: store.get_task(first)["state"] == "running", timeout=10)
        # One slot: the next task's folder, log file and record exist before it starts.
        wait_for(lambda: os.path.exists(os.path.join(run_dir(workspace, second), RECORD)), 5)
        assert store.get_task(second)["state"] == "queued"
        assert os.path.getsize(os.path.join(run_dir(workspace, second), "output.log")) == 0
        eng.cancel_task(second)
        wait_for(lambda: not os.path.exists(run_dir(workspace, second)), 5)
        wait_for(lambda: store.get_task(third)["state"] == "running", timeout=10)
        wait_for(lambda: done(store, [first, third]), timeout=20)
        assert store.get_task(second)["state"] == "cancelled" and not store.attempts(second)
        assert read_exit_code(run_dir(workspace, third)) == 0
    finally:
        eng.stop()


def test_folders_made_ahead_are_removed_when_the_engine_stops(workspace):
    eng, store = make_engine(workspace, cpu_slots=1)
    try:
        b = eng.submit([f"configs/exp-1/exp-1-{i}.yaml" for i in (1, 2)], "ann",
                       use_gpu=False, command=SLEEP)
        first, second = (t["id"] for t in b["tasks"])
        wait_for(lambda: os.path.exists(os.path.join(run_dir(workspace, second), RECORD)), 10)
    finally:
        eng.stop()  # the first keeps running (the next engine re-adopts it); the second waits
    assert store.get_task(second)["state"] == "queued"
    assert not os.path.exists(run_dir(workspace, second))
    assert os.path.exists(os.path.join(run_dir(workspace, first), "output.log"))
