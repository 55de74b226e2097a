"""The per-task records written off the scheduler thread, in as few transactions as they
can be: done markers on a thread of their own (an end is written down only once its marker
exists), the ends and process records of a step in one transaction, run folders made ahead
without holding up a start."""

import logging
import os
import sqlite3
import threading

import pytest

from app.done_markers import DoneMarkers
from app.executors import local
from app.scheduler import state_dir
from app.store import Store
from tests.helpers import wait_for
from tests.test_engine import done, make_engine

TRUE = "true {name}"
SLEEP = "{python} -c \"import time; time.sleep(0.5)\""


def configs(n):
    return [f"configs/exp-1/exp-1-{i}.yaml" for i in range(1, n + 1)]


def results(ws, config):
    return os.path.join(ws, "results", config[len("configs/"):-len(".yaml")])


@pytest.mark.parametrize("mode", ["gpu", "cpu"])
def test_every_success_gets_its_marker_before_its_end_is_written_down(workspace, mode,
                                                                      monkeypatch):
    """Tasks that write nothing get their results folder and marker; a marker exists for
    every end the store says succeeded, also right after the engine stopped (GPU mode on
    simulated GPUs with the default settings, and CPU mode)."""
    if mode == "gpu":
        monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    eng, store = make_engine(workspace, cpu_slots=4, gpu_slots=2)
    try:
        b = eng.submit(configs(5), "ann", use_gpu=mode == "gpu", command=TRUE)
        ids = [t["id"] for t in b["tasks"]]
        seen = set()

        def check():  # each end the store shows is backed by its marker at that moment
            for t in store.get_tasks(ids):
                if t["state"] == "succeeded":
                    assert os.path.exists(os.path.join(results(workspace, t["config"]), ".done"))
                    seen.add(t["id"])
            return len(seen) == len(ids)

        wait_for(check, timeout=20, interval=0.005)
    finally:
        eng.stop()
    assert all(store.get_task(i)["state"] == "succeeded" for i in ids)
    assert all(len(store.attempts(i)) == 1 for i in ids)
    devices = {store.get_task(i)["device"] for i in ids}
    assert devices <= ({"gpu0", "gpu1"} if mode == "gpu" else {"cpu"}), devices


def test_a_marker_that_cannot_be_written_is_logged_and_the_end_still_recorded(workspace,
                                                                              caplog):
    blocked = results(workspace, "configs/exp-1/exp-1-1.yaml")
    os.makedirs(os.path.dirname(blocked), exist_ok=True)
    with open(blocked, "w") as f:  # a file where its results folder would be
        f.write("not a folder\n")
    caplog.set_level(logging.WARNING, logger="app.done_markers")
    eng, store = make_engine(workspace, cpu_slots=2)
    try:
        b = eng.submit(configs(2), "ann", use_gpu=False, command=TRUE)
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: done(store, ids), timeout=20)
        assert [store.get_task(i)["state"] for i in ids] == ["succeeded", "succeeded"]
        assert os.path.exists(os.path.join(results(workspace, "configs/exp-1/exp-1-2.yaml"),
                                           ".done"))
    finally:
        eng.stop()
    assert any("could not write the done marker" in r.getMessage() and blocked in r.getMessage()
               for r in caplog.records)


def test_marker_writer_writes_in_order_announces_and_writes_inline_once_closed(tmp_path):
    announced = threading.Semaphore(0)
    markers = DoneMarkers(announced.release)
    folders = [tmp_path / "r" / f"c{i}" for i in range(20)]
    tickets = [markers.ask(str(f), ".done") for f in folders]
    assert markers.wait_idle(10)
    assert all(t.done for t in tickets)
    assert all((f / ".done").is_file() for f in folders)
    assert announced.acquire(timeout=5)  # at least one announcement (groups share one)
    markers.close()
    late = markers.ask(str(tmp_path / "late"), ".done")
    assert late.done and (tmp_path / "late" / ".done").is_file()


def test_grouped_writes_are_one_transaction(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    with store.grouped():
        with store.grouped():  # a nested group joins the outer one
            store.set_state("a", "1")
        store.set_state("b", "2")
        other = sqlite3.connect(str(tmp_path / "state.db"))
        assert other.execute("SELECT COUNT(*) FROM engine_state").fetchone()[0] == 0
        other.close()
    assert (store.get_state("a"), store.get_state("b")) == ("1", "2")
    with pytest.raises(RuntimeError):
        with store.grouped():
            store.set_state("c", "3")
            raise RuntimeError("a write of the group failed")
    assert store.get_state("c") is None  # none of the group was written
    store.set_state("d", "4")  # the connection is usable again, outside any group
    assert store.get_state("d") == "4"


def test_a_start_does_not_wait_for_another_folder_being_made(workspace, monkeypatch):
    """The preparer makes folders without holding its lock: a task starts (making its own
    folder) while another folder is still being made; a folder whose task left the queue
    while it was being made is removed once made."""
    gate = threading.Event()
    making = threading.Event()
    real = local.make_run_dir
    held = []

    def slow(run_dir):  # a disk that takes its time for the third task's folder
        if held and run_dir.endswith(f"{os.sep}{held[0]}-1") and \
                threading.current_thread().name == "slotrun-prepare":
            making.set()
            assert gate.wait(30)
        real(run_dir)

    monkeypatch.setattr(local, "make_run_dir", slow)
    eng, store = make_engine(workspace, cpu_slots=0)
    try:
        b = eng.submit(configs(4), "ann", use_gpu=False, command=SLEEP)
        first, second, third, fourth = (t["id"] for t in b["tasks"])
        held.append(third)
        eng.set_slots("cpu", 2)  # two start; the next two folders are asked for
        wait_for(making.is_set, timeout=10)
        eng.cancel_task(third)  # leaves the queue while its folder is being made
        # The fourth starts and ends while the third's folder is still being made.
        wait_for(lambda: done(store, [first, second, fourth]), timeout=20)
        assert not gate.is_set()
        assert [store.get_task(i)["state"] for i in (first, second, fourth)] == \
            ["succeeded"] * 3
        gate.set()
        third_dir = os.path.join(state_dir(workspace), "runs", f"{third}-1")
        wait_for(lambda: not os.path.exists(third_dir), timeout=10)
        assert store.get_task(third)["state"] == "cancelled" and not store.attempts(third)
    finally:
        gate.set()
        eng.stop()


def test_a_write_waiting_for_another_thread_s_write_gives_up_after_its_busy_timeout(tmp_path):
    """Writers of one process take turns on one lock; one that waits longer than its busy
    timeout gets a clear error, and writes again once the other one is done."""
    from app.errors import StoreUnavailable

    store = Store(str(tmp_path / "state.db"))
    holding, release = threading.Event(), threading.Event()

    def long_write():
        with store.grouped():
            store.set_state("long", "1")
            holding.set()
            release.wait(20)

    t = threading.Thread(target=long_write)
    t.start()
    try:
        assert holding.wait(10)
        store.set_busy_timeout(0.2)
        with pytest.raises(StoreUnavailable, match=r"state\.db cannot be written: another write "
                                                   r"of this process held it for over 0\.2 s"):
            store.set_state("short", "1")
    finally:
        release.set()
        t.join(10)
    store.set_state("short", "2")
    assert (store.get_state("long"), store.get_state("short")) == ("1", "2")


def test_a_marker_that_fails_unexpectedly_still_lets_its_end_be_written(tmp_path, caplog):
    """Whatever goes wrong writing one marker, its ticket is done (its end is written down,
    nothing waits for ever) and the thread goes on with the next one."""
    announced = threading.Semaphore(0)
    markers = DoneMarkers(announced.release)
    bad = markers.ask(str(tmp_path / "r") + "\x00x", ".done")  # a path the OS refuses
    good = markers.ask(str(tmp_path / "r" / "ok"), ".done")
    assert markers.wait_idle(10)
    assert bad.done and good.done
    assert (tmp_path / "r" / "ok" / ".done").is_file()
    assert any("done marker" in r.getMessage() for r in caplog.records)
    markers.close()
