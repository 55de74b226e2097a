"""GPU-memory-aware admission on simulated GPUs, end to end with real processes."""

import os

import pytest

from app import settings as settings_mod
from app.admission import declared_memory, log_shows_oom
from app.devices import open_inventory
from app.errors import SlotrunError
from app.scheduler import Engine, state_dir
from app.store import Store
from tests.helpers import wait_for

GIB = 1024**3
FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


def write_family(ws, name, n, key, sim_time=1.0, peak="10GiB"):
    folder = os.path.join(ws, "configs", name)
    os.makedirs(folder)
    for i in range(n):
        with open(os.path.join(folder, f"{name}-{i}.yaml"), "w") as f:
            f.write(f"model_params:\n  name: circle\n  radius: {i + 1}.0\n  sim_time: {sim_time}\n"
                    f"  {key}: [[0, 1GiB], [0.1, {peak}]]\n")
    return [f"configs/{name}/{name}-{i}.yaml" for i in range(n)]


@pytest.fixture
def sim(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    monkeypatch.delenv("SLOTRUN_SIM_TIME")
    return workspace


def run_batch(ws, configs, gpu_slots=4, devices=None, **overrides):
    s = settings_mod.load({"workspace": ws, "gpu_slots": gpu_slots, "cpu_slots": 0,
                           "memory_sample_interval": 0.1, **overrides})
    store = Store(os.path.join(state_dir(ws), "state.db"))
    eng = Engine(s, store, open_inventory()).start()
    try:
        b = eng.submit(configs, "ann", devices=devices)
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: all(store.get_task(i)["state"] in FINAL for i in ids), timeout=60)
        attempts = [a for i in ids for a in store.attempts(i)]
        return eng, store, ids, attempts
    finally:
        eng.stop()


def ooms(attempts):
    return [a for a in attempts if "out of memory" in (a["message"] or "")]


def test_declared_need_prevents_oom(sim):
    configs = write_family(sim, "mem", 6, "gpu_memory")
    eng, store, ids, attempts = run_batch(sim, configs)
    assert [store.get_task(i)["state"] for i in ids] == ["succeeded"] * 6
    assert ooms(attempts) == []
    assert len(attempts) == 6  # 24 GiB GPUs, 10 GiB per task, 4 slots each: no crash, no retry
    peaks = [a["peak_memory"] for a in attempts]
    assert all(p == 10 * GIB for p in peaks), peaks


def test_learned_need_and_probation_prevent_oom(sim):
    configs = write_family(sim, "undeclared", 4, "sim_gpu_memory")
    eng, store, ids, attempts = run_batch(sim, configs, devices=["gpu0"])
    assert ooms(attempts) == [] and len(attempts) == 4
    assert eng.predicted_need("configs/undeclared/other.yaml") == 10 * GIB
    assert eng.suggest_slots(10 * GIB) == {"gpu0": 2, "gpu1": 2}
    # A new engine learns from the recorded peaks.
    s = settings_mod.load({"workspace": sim})
    eng2 = Engine(s, store, open_inventory()).start()
    try:
        assert eng2.predicted_need("configs/undeclared/x.yaml") == 10 * GIB
    finally:
        eng2.stop()


def test_without_admission_tasks_crash_oom_then_recover(sim):
    configs = write_family(sim, "mem", 4, "gpu_memory")
    eng, store, ids, attempts = run_batch(sim, configs, devices=["gpu0"], admission=False)
    crashed = ooms(attempts)
    assert crashed, "4 x 10 GiB on a 24 GiB GPU must run out of memory without admission"
    assert all("requeued at the front" in a["message"] or "again" in a["message"] for a in crashed)
    for i in ids:
        n = sum(1 for a in crashed if a["task_id"] == i)
        assert n <= 2
        t = store.get_task(i)
        assert t["state"] == ("succeeded" if n < 2 else "failed"), (t, n)


def test_memory_used_outside_slotrun_counts(sim, tmp_path):
    folder = os.path.join(os.environ["SLOTRUN_FAKE_GPU_DIR"], "gpu0")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, str(os.getpid())), "w") as f:
        f.write(str(20 * GIB))  # this test process "uses" 20 GiB of gpu0
    try:
        configs = write_family(sim, "mem", 3, "gpu_memory", sim_time=0.3)
        eng, store, ids, attempts = run_batch(sim, configs)
        assert {a["device"] for a in attempts} == {"gpu1"}
        assert ooms(attempts) == []
    finally:
        os.unlink(os.path.join(folder, str(os.getpid())))


def test_declared_memory_parsing(tmp_path):
    assert declared_memory("c.yaml", "gpu_memory: 6GiB\n") == 6 * GIB
    assert declared_memory("c.yaml", "model_params:\n  gpu_memory: [[0, 1GiB], [3, 2GiB]]\n") == 2 * GIB
    assert declared_memory("c.yaml", "model_params:\n  name: circle\n") == 0
    with pytest.raises(SlotrunError, match="c.yaml: gpu_memory 'lots'.*6GiB"):
        declared_memory("c.yaml", "gpu_memory: lots\n")
    log = tmp_path / "output.log"
    log.write_text("step 1\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n")
    assert log_shows_oom(str(log))
    log.write_text("all fine\n")
    assert not log_shows_oom(str(log))
