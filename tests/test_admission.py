"""GPU-memory admission on simulated GPUs, end to end with real processes.

Every run here is GPU mode (SLOTRUN_FAKE_GPUS=2, 24 GiB each) with admission at its default;
concurrency is measured from the tasks' own start and end times (their results' meta.json)
and refill gaps from the attempt rows, never from the engine's internals.
"""

import glob
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from app import settings as settings_mod
from app.admission import Attribution, Watched, declared_memory, log_shows_oom
from app.devices import Device, SimulatedInventory, open_inventory
from app.errors import SlotrunError
from app.scheduler import Engine, state_dir
from app.store import Store
from tests.helpers import ROOT, task_env, wait_for

GIB = 1024**3
FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}


def write_family(ws, name, n, key="gpu_memory", sim_time=1.0, peak="10GiB", prefix=None):
    """Write n configs in configs/NAME/ holding 1 GiB, then ``peak`` 0.1 s in (``key``
    gpu_memory declares it, sim_gpu_memory holds it without declaring; None: no memory)."""
    folder = os.path.join(ws, "configs", name)
    os.makedirs(folder, exist_ok=True)
    prefix = prefix or name
    out = []
    for i in range(n):
        mem = f"  {key}: [[0, 1GiB], [0.1, {peak}]]\n" if key else ""
        with open(os.path.join(folder, f"{prefix}-{i}.yaml"), "w") as f:
            f.write(f"model_params:\n  name: circle\n  radius: {i + 1}.0\n  sim_time: {sim_time}\n"
                    + mem)
        out.append(f"configs/{name}/{prefix}-{i}.yaml")
    return out


@pytest.fixture
def sim(workspace, monkeypatch):
    monkeypatch.setenv("SLOTRUN_FAKE_GPUS", "2")
    monkeypatch.delenv("SLOTRUN_SIM_TIME")
    return workspace


def start_engine(ws, gpu_slots=4, **overrides):
    s = settings_mod.load({"workspace": ws, "gpu_slots": gpu_slots, "cpu_slots": 1,
                           "memory_sample_interval": 0.1, **overrides})
    store = Store(os.path.join(state_dir(ws), "state.db"))
    return Engine(s, store, open_inventory()).start(), store


def finish(eng, store, configs, devices=None, timeout=60, use_gpu=True):
    b = eng.submit(configs, "ann", devices=devices, use_gpu=use_gpu)
    ids = [t["id"] for t in b["tasks"]]
    wait_for(lambda: all(store.get_task(i)["state"] in FINAL for i in ids), timeout=timeout)
    return ids, [a for i in ids for a in store.attempts(i)]


def run_batch(ws, configs, gpu_slots=4, devices=None, **overrides):
    eng, store = start_engine(ws, gpu_slots, **overrides)
    try:
        ids, attempts = finish(eng, store, configs, devices)
        return eng, store, ids, attempts
    finally:
        eng.stop()


def ooms(attempts):
    return [a for a in attempts if "out of memory" in (a["message"] or "")]


def runs(ws, configs):
    """Return {gpu: [(started, finished)]} from the tasks' own results (meta.json)."""
    out = {}
    for c in configs:
        rel = c[len("configs/"):-len(".yaml")]
        with open(os.path.join(ws, "results", rel, "meta.json")) as f:
            m = json.load(f)
        out.setdefault("gpu" + m["cuda_visible_devices"], []).append((m["started"], m["finished"]))
    return out


def peak(intervals):
    """Return the most intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, step in points:
        cur += step
        best = max(best, cur)
    return best


def peaks(ws, configs):
    return {g: peak(iv) for g, iv in sorted(runs(ws, configs).items())}


def refill_gaps(attempts):
    """Return, per device, the seconds from each end to the next start there."""
    gaps = []
    by_dev = {}
    for a in attempts:
        by_dev.setdefault(a["device"], []).append(a)
    for rows in by_dev.values():
        starts = sorted(a["started_at"] for a in rows)
        ends = sorted(a["finished_at"] for a in rows)
        for s in starts:
            before = [e for e in ends if e <= s + 1e-6]
            if before:
                gaps.append(s - max(before))
    return gaps


# -- the core promise: N_i tasks at once, refilled at once --------------------------------------

def test_memory_less_tasks_reach_the_slot_limit_at_once(sim):
    configs = write_family(sim, "plain", 6, key=None, sim_time=1.5)
    eng, store, ids, attempts = run_batch(sim, configs, gpu_slots=3)
    assert [store.get_task(i)["state"] for i in ids] == ["succeeded"] * 6
    assert peaks(sim, configs) == {"gpu0": 3, "gpu1": 3}
    iv = [x for v in runs(sim, configs).values() for x in v]
    assert max(s for s, _ in iv) < min(e for _, e in iv), "all six started before any ended"


def test_declared_needs_that_fit_reach_the_slot_limit_at_once(sim):
    configs = write_family(sim, "fit", 8, peak="5GiB", sim_time=1.5)  # 4 x 5 GiB + margin fit
    eng, store, ids, attempts = run_batch(sim, configs)
    assert ooms(attempts) == [] and len(attempts) == 8
    assert peaks(sim, configs) == {"gpu0": 4, "gpu1": 4}
    assert all(a["peak_memory"] == 5 * GIB for a in attempts)


def held_on_gpus():
    """Return the simulated GPU memory the tasks hold now, by file (bytes)."""
    out = []
    for path in glob.glob(os.path.join(os.environ["SLOTRUN_FAKE_GPU_DIR"], "gpu*", "[0-9]*")):
        try:
            with open(path) as f:
                out.append(int(f.read() or 0))
        except (OSError, ValueError):
            continue
    return out


def test_declared_needs_that_do_not_fit_run_as_many_as_fit_and_refill_at_once(sim):
    # 10 GiB each with 4 slots: 2 fit on a 24 GiB GPU. One reading while the first four hold
    # their memory, then none for 30 s: the freed memory must count at once at their exits,
    # not at the next reading.
    configs = write_family(sim, "big", 8, sim_time=1.5)
    eng, store = start_engine(sim, memory_sample_interval=30.0)
    try:
        b = eng.submit(configs, "ann")
        wait_for(lambda: held_on_gpus().count(10 * GIB) == 4, 10)
        asked = time.monotonic()
        eng.monitor.poke()
        wait_for(lambda: (eng.admission.ledger.when or 0) > asked, 5)
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: all(store.get_task(i)["state"] in FINAL for i in ids), 40)
    finally:
        eng.stop()
    attempts = [a for i in ids for a in store.attempts(i)]
    assert ooms(attempts) == [] and len(attempts) == 8
    assert [store.get_task(i)["state"] for i in ids] == ["succeeded"] * 8
    assert peaks(sim, configs) == {"gpu0": 2, "gpu1": 2}
    gaps = refill_gaps(attempts)
    assert len(gaps) == 4 and max(gaps) < 0.5, gaps


def test_a_freed_slot_is_refilled_at_once_when_slots_bind(sim):
    configs = write_family(sim, "seq", 4, peak="2GiB", sim_time=0.4)
    eng, store, ids, attempts = run_batch(sim, configs, gpu_slots=1, devices=["gpu0"],
                                          memory_sample_interval=5.0)
    assert ooms(attempts) == [] and peaks(sim, configs) == {"gpu0": 1}
    gaps = refill_gaps(attempts)
    assert len(gaps) == 3 and max(gaps) < 0.5, gaps


def test_foreign_memory_keeps_tasks_off_one_gpu_while_the_other_fills(sim):
    folder = os.path.join(os.environ["SLOTRUN_FAKE_GPU_DIR"], "gpu0")
    os.makedirs(folder, exist_ok=True)
    foreign = os.path.join(folder, str(os.getpid()))
    with open(foreign, "w") as f:
        f.write(str(20 * GIB))  # this test process "uses" 20 GiB of gpu0
    try:
        configs = write_family(sim, "mem", 6, sim_time=1.0)
        eng, store = start_engine(sim)
        try:
            b = eng.submit(configs, "ann")
            ids = [t["id"] for t in b["tasks"]]
            note = wait_for(lambda: eng.usage()["gpu0"].get("note"), 10)
            assert eng.usage()["gpu0"]["hold"] == "memory"
            assert "needs 10 GiB (declared)" in note and "free on gpu0" in note, note
            wait_for(lambda: all(store.get_task(i)["state"] in FINAL for i in ids), 60)
        finally:
            eng.stop()
        attempts = [a for i in ids for a in store.attempts(i)]
        assert {a["device"] for a in attempts} == {"gpu1"} and ooms(attempts) == []
        assert peaks(sim, configs) == {"gpu1": 2}
    finally:
        os.unlink(foreign)


def test_a_learned_family_runs_its_second_batch_memory_bound_with_no_oom(sim):
    # First batch: the need is unknown, so the slot limit is trusted: 4 x 10 GiB on one GPU
    # runs out of memory; the failed tasks are requeued once, the need is learned, all succeed.
    first = write_family(sim, "learn", 4, key="sim_gpu_memory", sim_time=1.0, prefix="a")
    second = write_family(sim, "learn", 8, key="sim_gpu_memory", sim_time=1.0, prefix="b")
    eng, store = start_engine(sim)
    notes = []
    watch = threading.Event()

    def listen():
        while not watch.is_set():
            n = eng.usage().get("gpu0", {}).get("note")
            if n and n not in notes:
                notes.append(n)
            time.sleep(0.02)

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    try:
        ids, attempts = finish(eng, store, first, devices=["gpu0"])
        crashed = ooms(attempts)
        assert crashed, "4 x 10 GiB with an unknown need must run out of memory"
        assert all("requeued at the front" in a["message"] for a in crashed)
        assert all("now needs" in a["message"] for a in crashed)
        assert [store.get_task(i)["state"] for i in ids] == ["succeeded"] * 4
        assert any(n.startswith("out of memory: limited to") for n in notes), notes
        assert eng.predicted_need("configs/learn/other.yaml") == 10 * GIB
        ids, attempts = finish(eng, store, second)
        assert ooms(attempts) == [] and len(attempts) == 8
        assert peaks(sim, second) == {"gpu0": 2, "gpu1": 2}
    finally:
        watch.set()
        eng.stop()
    # A new engine learns from the recorded peaks.
    eng2, _ = start_engine(sim)
    try:
        assert eng2.predicted_need("configs/learn/x.yaml") == 10 * GIB
    finally:
        eng2.stop()


def test_a_learned_zero_is_known(sim):
    configs = write_family(sim, "none", 2, key=None, sim_time=0.5)
    eng, store, ids, attempts = run_batch(sim, configs, gpu_slots=1)
    assert all(a["peak_memory"] == 0 for a in attempts)
    assert eng.view.learned["configs/none"] == 0


def test_without_admission_tasks_crash_oom_then_recover(sim):
    configs = write_family(sim, "mem", 4)
    eng, store, ids, attempts = run_batch(sim, configs, devices=["gpu0"], admission=False)
    crashed = ooms(attempts)
    assert crashed, "4 x 10 GiB on a 24 GiB GPU must run out of memory without admission"
    assert all("requeued at the front" in a["message"] or "again" in a["message"] for a in crashed)
    for i in ids:
        n = sum(1 for a in crashed if a["task_id"] == i)
        assert n <= 2
        t = store.get_task(i)
        assert t["state"] == ("succeeded" if n < 2 else "failed"), (t, n)


# -- probation: unknown (a cautious lab's setting) -----------------------------------------------

def test_probation_staggers_an_unknown_family_until_it_settles(sim):
    configs = write_family(sim, "quiet", 3, key=None, sim_time=2.0)
    eng, store, ids, attempts = run_batch(sim, configs, gpu_slots=3, devices=["gpu0"],
                                          probation="unknown", probation_quiet=0.5)
    starts = sorted(a["started_at"] for a in attempts)
    # The first start waits for nothing; the next waits until the first has shown no memory
    # for 0.5 s (then its family is known to need none: the rest start together).
    assert 0.4 < starts[1] - starts[0] < 3.0, starts
    assert starts[2] - starts[1] < 0.5, starts
    assert peaks(sim, configs) == {"gpu0": 3}


def test_probation_setting_is_checked():
    with pytest.raises(SlotrunError, match="probation must be one of off, unknown, not 'maybe'"):
        settings_mod.load({"probation": "maybe"}, environ={})
    assert settings_mod.load({"probation": False}, environ={})["probation"] == "off"


# -- faults ---------------------------------------------------------------------------------------

def test_an_nvml_fault_on_one_gpu_leaves_the_others_dispatching(sim):
    fault = os.path.join(os.environ["SLOTRUN_FAKE_GPU_DIR"], "gpu1", "fault")
    os.makedirs(os.path.dirname(fault), exist_ok=True)
    with open(fault, "w") as f:
        f.write("NVML: GPU is lost")
    configs = write_family(sim, "f", 6, key=None, sim_time=1.0)
    eng, store = start_engine(sim, gpu_slots=2)
    try:
        b = eng.submit(configs, "ann")
        cpu = eng.submit(["configs/exp-1/exp-1-1.yaml"], "ann", use_gpu=False)
        wait_for(lambda: sum(r.device == "gpu0" for r in eng.running.values()) == 2, 10)
        u = eng.usage()["gpu1"]
        assert u["hold"] == "fault" and "GPU is lost" in u["note"], u
        assert u["held"] == 2
        assert not any(r.device == "gpu1" for r in eng.running.values())
        wait_for(lambda: store.get_task(cpu["tasks"][0]["id"])["state"] == "succeeded", 20)
        os.unlink(fault)  # the GPU answers again: tasks start there
        wait_for(lambda: any(r.device == "gpu1" for r in eng.running.values()), 10)
        ids = [t["id"] for t in b["tasks"]]
        wait_for(lambda: all(store.get_task(i)["state"] in FINAL for i in ids), 30)
        assert all(store.get_task(i)["state"] == "succeeded" for i in ids)
        assert "hold" not in eng.usage()["gpu1"]
    finally:
        eng.stop()


class FakeNvml:
    """A stand-in for the pynvml module (a third-party driver binding) that fails on demand."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    def __init__(self, init_error=None, bad_index=None):
        self.init_error = init_error
        self.bad_index = bad_index

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        if i == self.bad_index:
            raise self.NVMLError("GPU is lost")
        return i

    def nvmlDeviceGetName(self, h):
        return b"Fake GPU"

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("Mem", (), {"total": 24 * GIB, "used": GIB})()

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("Util", (), {"gpu": 5})()

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return []

    nvmlDeviceGetGraphicsRunningProcesses = nvmlDeviceGetComputeRunningProcesses

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}"

    def nvmlShutdown(self):
        pass


def test_nvml_errors_are_per_gpu_and_init_errors_are_logged(monkeypatch, caplog):
    monkeypatch.delenv("SLOTRUN_FAKE_GPUS", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(bad_index=1))
    inv = open_inventory()
    d0, d1 = inv.gpus()
    assert (d0.id, d0.error, d0.memory_total) == ("gpu0", "", 24 * GIB)
    assert (d1.id, d1.error) == ("gpu1", "NVML: GPU is lost")
    assert [d.id for d in inv.snapshot()] == ["gpu0", "gpu1", "cpu"]
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="Driver/library version mismatch"))
    with caplog.at_level(logging.ERROR, logger="app.devices"):
        inv = open_inventory()
    assert inv.gpus() == [] and "version mismatch" in inv.error
    assert "NVML failed to start" in caplog.text and "version mismatch" in caplog.text
    from app.devices import no_gpu_message

    assert "version mismatch" in no_gpu_message(inv) and "SLOTRUN_FAKE_GPUS" in no_gpu_message(inv)


# -- the simulated GPUs allocate atomically -------------------------------------------------------

ALLOCATE = """
import sys, time
from models.common import Memory
go = float(sys.argv[1])
m = Memory()
time.sleep(max(0, go - time.time()))
m.hold(10 * 1024**3)
print("held", flush=True)
time.sleep(1.0)
m.release()
"""


def test_simulated_gpu_allocates_atomically(tmp_path, monkeypatch):
    env = task_env(SLOTRUN_FAKE_GPUS=1, CUDA_VISIBLE_DEVICES=0,
                   SLOTRUN_FAKE_GPU_DIR=str(tmp_path / "fakegpu"))
    go = time.time() + 1.0  # four processes allocate 10 GiB each in the same instant
    procs = [subprocess.Popen([sys.executable, "-c", ALLOCATE, str(go)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(4)]
    out = [(p.wait(30), p.stdout.read()) for p in procs]
    ok = [o for rc, o in out if rc == 0]
    failed = [o for rc, o in out if rc != 0]
    assert len(ok) == 2 and all("held" in o for o in ok), out  # 2 x 10 GiB + 0.3 GiB fit 24
    assert len(failed) == 2 and all("CUDA out of memory" in o for o in failed), out


# -- containers: NVML's process ids are the host's -------------------------------------------------

def test_learning_works_when_process_ids_do_not_match(sim, monkeypatch):
    monkeypatch.setenv("SLOTRUN_FAKE_GPU_PID_OFFSET", "4000000")
    configs = write_family(sim, "ns", 4, key="sim_gpu_memory", peak="6GiB", sim_time=1.0)
    eng, store, ids, attempts = run_batch(sim, configs, gpu_slots=2, devices=["gpu0"])
    assert ooms(attempts) == []
    assert [a["peak_memory"] for a in attempts] == [6 * GIB] * 4
    assert eng.view.learned["configs/ns"] == 6 * GIB


def test_attribution_by_appearance_leaves_foreign_processes_out():
    att = Attribution(pids_elsewhere=True)

    def dev(procs):
        return Device("gpu0", "gpu", 0, "g", 24 * GIB, GIB, processes=procs)

    assert att.attribute([dev({900: 5 * GIB})], {}, 1.0) == {}  # there before: foreign
    watched = {11: Watched(1, "gpu0", 2.0), 12: Watched(2, "gpu0", 2.5)}
    assert att.attribute([dev({900: 5 * GIB})], watched, 3.0) == {}
    got = att.attribute([dev({900: 5 * GIB, 7001: GIB, 7002: 2 * GIB})], watched, 4.0)
    assert got == {1: GIB, 2: 2 * GIB}  # new processes go to the tasks in start order
    got = att.attribute([dev({900: 5 * GIB, 7001: 3 * GIB, 7002: 2 * GIB, 7003: GIB})],
                        watched, 5.0)
    assert got == {1: 3 * GIB, 2: 2 * GIB}  # a newcomer with every task holding one: foreign


def test_simulated_inventory_reports_offset_pids(tmp_path, monkeypatch):
    monkeypatch.setenv("SLOTRUN_FAKE_GPU_DIR", str(tmp_path))
    monkeypatch.setenv("SLOTRUN_FAKE_GPU_PID_OFFSET", "1000")
    os.makedirs(tmp_path / "gpu0")
    (tmp_path / "gpu0" / str(os.getpid())).write_text(str(GIB))
    inv = SimulatedInventory(1)
    assert inv.pids_elsewhere and inv.gpus()[0].processes == {os.getpid() + 1000: GIB}


# -- parsing -------------------------------------------------------------------------------------

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
