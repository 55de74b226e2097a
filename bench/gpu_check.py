"""Real-GPU check: slotrun's engine on this machine's NVIDIA GPUs, with real CUDA tasks.

    python bench/gpu_check.py [--k 2] [--hold 5] [--keep]

Runs small batches of real CUDA tasks (a tiny script that allocates a known number of bytes
with ``torch.empty(..., device="cuda")`` and holds them for a few seconds) through the real
``Engine`` with the NVML inventory, and checks:

1. NVML figures: the per-process memory NVML reports for each task is its allocation (plus
   the CUDA context), and the engine recorded that peak for the attempt;
2. the CUDA_VISIBLE_DEVICES mapping: each task sees exactly one GPU, and it is the one the
   engine picked (same UUID, or name, as the NVML device of that index), and NVML lists the
   task's process on that device only;
3. admission: with a declared need that lets only k tasks fit in the GPU's free memory and a
   slot limit above k, never more than k run at once (and k do), with no out-of-memory failure.

Prints one PASS / FAIL line per check (INFO lines explain the set-up), exits 1 when any check
failed, 0 otherwise. Without an NVIDIA GPU it prints "SKIP: no NVIDIA GPU" and exits 0; without
PyTorch built with CUDA it prints a SKIP line saying so. It finishes in well under five
minutes (a watchdog stops it at 290 s with a FAIL).
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

GIB = 1024**3
MIB = 1024**2
CONTEXT_SLACK = 2 * GIB  # CUDA context and allocator rounding on top of an allocation
DEADLINE = 290  # seconds: the whole check stays under five minutes
FINAL = {"succeeded", "failed", "cancelled", "interrupted", "skipped"}

# The task: allocate, say what CUDA shows it, hold, release. Written into the workspace.
TASK_SCRIPT = r'''
import json, os, sys, time
import yaml

with open(sys.argv[1], encoding="utf-8") as f:
    spec = yaml.safe_load(f)["check"]
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
import torch

started = time.time()
block = torch.empty(int(spec["alloc"]), dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
props = torch.cuda.get_device_properties(0)
uuid = str(getattr(props, "uuid", "") or "")
if uuid and not uuid.startswith(("GPU-", "MIG-")):
    uuid = "GPU-" + uuid
seen = {"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "order": os.environ.get("CUDA_DEVICE_ORDER"), "count": torch.cuda.device_count(),
        "name": torch.cuda.get_device_name(0), "uuid": uuid, "allocated": block.numel(),
        "reserved": torch.cuda.memory_reserved(0), "started": started, "holding_at": time.time()}
tmp = os.path.join(out, "seen.json.tmp")
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(seen, f)
os.replace(tmp, os.path.join(out, "seen.json"))
print("holding", seen["allocated"], "bytes on", seen["name"], seen["uuid"], flush=True)
time.sleep(float(spec["hold"]))
del block
torch.cuda.synchronize()
print("released", flush=True)
'''


class Report:
    """Collects PASS / FAIL lines."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        """Print one PASS or FAIL line; return ``ok``."""
        line = f"{'PASS' if ok else 'FAIL'}: {what}" + (f" ({detail})" if detail else "")
        print(line, flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok

    @staticmethod
    def info(text):
        """Print an INFO line."""
        print(f"INFO: {text}", flush=True)


def gib(n):
    return f"{(n or 0) / GIB:.2f} GiB"


class NvmlWatch:
    """Samples NVML's per-process memory on every GPU (thread); bounded by the run's length."""

    def __init__(self, nv, count, interval=0.2):
        self.nv = nv
        self.handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.interval = interval
        self.samples = []  # (time, index, {pid: bytes})
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def procs(self, index):
        """Return {pid: bytes} of the compute processes NVML lists on a GPU now."""
        nv = self.nv
        out = {}
        for p in nv.nvmlDeviceGetComputeRunningProcesses(self.handles[index]):
            used = p.usedGpuMemory
            if used is None or used == getattr(nv, "NVML_VALUE_NOT_AVAILABLE", -1):
                used = 0
            out[p.pid] = out.get(p.pid, 0) + int(used)
        return out

    def _run(self):
        while not self._stop.is_set():
            now = time.time()
            for i in range(len(self.handles)):
                try:
                    procs = self.procs(i)
                except self.nv.NVMLError:
                    continue
                with self.lock:
                    self.samples.append((now, i, procs))
            self._stop.wait(self.interval)

    def peak(self, pid):
        """Return {gpu index: largest bytes seen} for one process."""
        out = {}
        with self.lock:
            for _, i, procs in self.samples:
                if pid in procs:
                    out[i] = max(out.get(i, 0), procs[pid])
        return out

    def most_at_once(self, index, pids):
        """Return the most of ``pids`` NVML listed together on one GPU."""
        with self.lock:
            return max((len(set(procs) & pids) for _, i, procs in self.samples if i == index),
                       default=0)


def write_config(ws, family, name, declared, alloc, hold):
    folder = os.path.join(ws, "configs", family)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.yaml"), "w", encoding="utf-8") as f:
        f.write(f"gpu_memory: {int(declared)}\ncheck:\n  alloc: {int(alloc)}\n  hold: {hold}\n")
    return f"configs/{family}/{name}.yaml"


def submit(engine, configs, device):
    """Queue configs on one GPU; return the batch's task ids."""
    b = engine.submit(configs, "gpu-check", use_gpu=True, devices=[device],
                      command="{python} gpu_task.py {config} {results}", pattern="gpu-check",
                      overwrite=True)
    return b["id"], [t["id"] for t in b["tasks"]]


def wait_tasks(engine, store, ids, timeout, device=None):
    """Wait until the tasks are final; return (rows, attempts, most running at once on device)."""
    deadline = time.monotonic() + timeout
    most = 0
    while True:
        if device is not None:
            try:
                running = sum(1 for r in list(engine.running.values()) if r.device == device)
            except RuntimeError:  # the scheduler thread changed the dict: look again next time
                running = 0
            most = max(most, running)
        if all(store.get_task(i)["state"] in FINAL for i in ids):
            break
        if time.monotonic() > deadline:
            for i in ids:
                try:
                    engine.cancel_task(i)
                except Exception:  # noqa: BLE001 - already final
                    pass
            raise TimeoutError(f"tasks {ids} did not finish within {timeout:.0f} s")
        time.sleep(0.1)
    return [store.get_task(i) for i in ids], {i: store.attempts(i) for i in ids}, most


def seen_of(ws, task, settings):
    from app.configs import results_dir_for

    path = os.path.join(ws, results_dir_for(task["config"], settings["configs_dir"],
                                            settings["results_dir"]), "seen.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def log_tail(attempts, n=6):
    from app.logs import LOG_NAME, tail_bytes

    if not attempts:
        return ""
    text, _ = tail_bytes(os.path.join(attempts[-1]["run_dir"], LOG_NAME), n)
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def overlap(intervals):
    """Return the most intervals (start, end) open at the same moment."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = best = 0
    for _, step in edges:
        level += step
        best = max(best, level)
    return best


def check_mapping(report, ws, settings, nv, watch, engine, store, count, hold):
    """One task per GPU: CUDA_VISIBLE_DEVICES, what CUDA sees, NVML per-process memory."""
    from app.scheduler import gpu_index

    alloc = 1 * GIB
    queued = {}  # gpu index -> task id: one task per GPU, all at once
    for i in range(count):
        free = nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i)).free
        if free < alloc + CONTEXT_SLACK:
            report.info(f"gpu{i}: only {gib(free)} free; its mapping check is skipped")
            continue
        cfg = write_config(ws, "map", f"map-{i}", alloc + GIB // 2, alloc, hold)
        queued[i] = submit(engine, [cfg], f"gpu{i}")[1][0]
    if not queued:
        report.check(False, "mapping: some GPU has room for a 1 GiB test task")
        return
    rows, attempts, _ = wait_tasks(engine, store, list(queued.values()), timeout=120)
    by_id = {t["id"]: t for t in rows}
    for i, tid in queued.items():
        h = nv.nvmlDeviceGetHandleByIndex(i)
        t = by_id[tid]
        atts = attempts[tid]
        ok = t["state"] == "succeeded"
        if not report.check(ok, f"gpu{i}: a real CUDA task ran and succeeded",
                            "" if ok else f"state {t['state']}: {t['message']}; log: {log_tail(atts)}"):
            continue
        a = atts[-1]
        idx = gpu_index(a["device"])
        seen = seen_of(ws, t, settings)
        if not report.check(seen is not None, f"gpu{i}: the task reported what CUDA showed it"):
            continue
        report.check(a["device"] == f"gpu{i}", f"gpu{i}: the engine placed the task on the GPU asked for",
                     f"placed on {a['device']}")
        report.check(seen["visible"] == str(idx) and seen["order"] == "PCI_BUS_ID",
                     f"gpu{i}: the task got CUDA_VISIBLE_DEVICES={idx} with CUDA_DEVICE_ORDER=PCI_BUS_ID",
                     f"CUDA_VISIBLE_DEVICES={seen['visible']!r}, CUDA_DEVICE_ORDER={seen['order']!r}")
        report.check(seen["count"] == 1, f"gpu{i}: the task sees exactly one GPU",
                     f"torch.cuda.device_count() = {seen['count']}")
        nv_name = nv.nvmlDeviceGetName(h)
        nv_name = nv_name.decode() if isinstance(nv_name, bytes) else nv_name
        nv_uuid = nv.nvmlDeviceGetUUID(h)
        nv_uuid = nv_uuid.decode() if isinstance(nv_uuid, bytes) else nv_uuid
        if seen["uuid"]:
            report.check(seen["uuid"] == nv_uuid,
                         f"gpu{i}: the GPU CUDA shows the task is NVML's device {i} (same UUID)",
                         f"CUDA {seen['uuid']} ({seen['name']}), NVML {nv_uuid} ({nv_name})")
        else:
            report.check(seen["name"] == nv_name,
                         f"gpu{i}: the GPU CUDA shows the task has NVML device {i}'s name "
                         "(this PyTorch gives no UUID)", f"CUDA {seen['name']!r}, NVML {nv_name!r}")
        peaks = watch.peak(seen["pid"])
        if not report.check(bool(peaks), f"gpu{i}: NVML lists the task's process (pid {seen['pid']})",
                            "NVML reports no compute process with that pid: a PID namespace (a "
                            "container) hides host pids, so slotrun cannot measure per-task memory here"
                            if not peaks else ""):
            continue
        report.check(set(peaks) == {idx}, f"gpu{i}: NVML shows the task's process on device {idx} only",
                     f"seen on {sorted(peaks)}")
        used = peaks.get(idx, 0)
        report.check(alloc <= used <= alloc + CONTEXT_SLACK,
                     f"gpu{i}: NVML's per-process memory matches the allocation",
                     f"allocated {gib(alloc)}, NVML {gib(used)} (CUDA context included)")
        peak = a.get("peak_memory")
        report.check(peak is not None and abs(peak - used) <= max(64 * MIB, used // 10),
                     f"gpu{i}: the engine recorded the task's peak GPU memory",
                     f"engine {gib(peak)}, NVML {gib(used)}")


def check_admission(report, ws, settings, nv, watch, engine, store, count, k, hold):
    """k tasks fit in free memory, slots allow k+2: never more than k at once, no OOM."""
    from app.settings import parse_size

    frees = []
    for i in range(count):
        frees.append(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i)).free)
    g = max(range(count), key=lambda i: frees[i])
    free = frees[g]
    margin = parse_size(settings["memory_margin"])
    need = int((free - margin) / (k + 0.5))
    alloc = need - CONTEXT_SLACK // 2  # the task uses about its declared need, context included
    if alloc < GIB:
        report.check(False, f"admission: gpu{g} has room for {k} test tasks",
                     f"only {gib(free)} free; need {k + 1} GiB or more")
        return
    n = k + 2
    report.info(f"admission: gpu{g}, {gib(free)} free, margin {gib(margin)}; {n} tasks declare "
                f"{gib(need)} each and allocate {gib(alloc)}; slot limit {n}: {k} fit at once")
    configs = [write_config(ws, "admit", f"admit-{j}", need, alloc, hold) for j in range(n)]
    _, ids = submit(engine, configs, f"gpu{g}")
    try:
        tasks, attempts, most = wait_tasks(engine, store, ids, timeout=60 + n * (hold + 25),
                                           device=f"gpu{g}")
    except TimeoutError as e:
        report.check(False, "admission: the batch finished", str(e))
        return
    states = [t["state"] for t in tasks]
    report.check(all(s == "succeeded" for s in states), f"admission: all {n} tasks succeeded",
                 ", ".join(f"#{t['id']} {t['state']}: {t['message']}" for t in tasks
                           if t["state"] != "succeeded"))
    ooms = [a for atts in attempts.values() for a in atts if "out of memory" in (a["message"] or "")]
    report.check(not ooms, "admission: no task failed out of memory", f"{len(ooms)} did")
    spans = [(a["started_at"], a["finished_at"]) for atts in attempts.values() for a in atts
             if a["finished_at"]]
    at_once = overlap(spans)
    report.check(at_once <= k and most <= k, f"admission: never more than {k} ran at once",
                 f"at most {at_once} by their start and end times, {most} by the engine's count")
    report.check(at_once == k, f"admission: {k} ran at once when they fit (the limit was memory, "
                 "not slots or probation)", f"at most {at_once}")
    pids = {s["pid"] for s in (seen_of(ws, t, settings) for t in tasks) if s}
    if pids:
        report.check(watch.most_at_once(g, pids) <= k,
                     f"admission: NVML never listed more than {k} test processes on gpu{g}",
                     f"at most {watch.most_at_once(g, pids)}")
    for t in tasks:
        peak = attempts[t["id"]][-1].get("peak_memory")
        if not report.check(peak is not None and alloc <= peak <= alloc + CONTEXT_SLACK,
                            f"admission: task #{t['id']}'s recorded peak matches its allocation",
                            f"allocated {gib(alloc)}, recorded {gib(peak)}"):
            break


def main(argv=None):
    """Run the checks; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=2, help="tasks that fit at once in the admission check")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds each task holds its memory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args(argv)
    try:
        import pynvml as nv

        nv.nvmlInit()
        count = nv.nvmlDeviceGetCount()
    except Exception:  # noqa: BLE001 - no driver, no library: no GPU to check
        count = 0
    if not count:
        print("SKIP: no NVIDIA GPU (NVML finds none)")
        return 0
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        print(f"SKIP: PyTorch with CUDA is not available to {sys.executable}; install it "
              "(pip install torch) to run this check")
        return 0

    def watchdog(signum, frame):
        print(f"FAIL: the check did not finish within {DEADLINE} s", flush=True)
        os._exit(1)

    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(DEADLINE)
    for var in ("SLOTRUN_FAKE_GPUS", "SLOTRUN_WORKSPACE", "CUDA_VISIBLE_DEVICES"):
        os.environ.pop(var, None)  # the check is about the real GPUs, all of them

    from app import settings as settings_mod
    from app.devices import open_inventory
    from app.scheduler import Engine, state_dir
    from app.store import Store

    report = Report()
    ws = tempfile.mkdtemp(prefix="slotrun-gpu-check-")
    with open(os.path.join(ws, "gpu_task.py"), "w", encoding="utf-8") as f:
        f.write(TASK_SCRIPT)
    os.makedirs(os.path.join(ws, "configs"))
    settings = settings_mod.load({"workspace": ws, "admission": True, "cpu_slots": 0,
                                  "gpu_slots": args.k + 2, "memory_sample_interval": 0.25,
                                  "kill_grace": 3.0}, environ={})
    inventory = open_inventory(fake_gpus=0)
    names = [d.name for d in inventory.gpus()]
    report.info(f"{count} GPU(s): {', '.join(names)}; torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}; workspace {ws}")
    report.check(getattr(inventory, "source", "") == "nvml" and len(names) == count,
                 "slotrun's inventory reads the GPUs through NVML", f"source {inventory.source}")
    store = Store(os.path.join(state_dir(ws), "state.db"))
    engine = Engine(settings, store, inventory, only_own_batches=True,
                    limits={f"gpu{i}": args.k + 2 for i in range(count)}).start()
    watch = NvmlWatch(nv, count).start()
    started = time.monotonic()
    try:
        check_mapping(report, ws, settings, nv, watch, engine, store, count, min(args.hold, 4))
        check_admission(report, ws, settings, nv, watch, engine, store, count, args.k, args.hold)
    except Exception as e:  # noqa: BLE001 - report, never hang
        report.check(False, "the check ran to its end", f"{type(e).__name__}: {e}")
    finally:
        watch.stop()
        engine.stop(kill_tasks=True)
        inventory.close()
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    signal.alarm(0)
    print(f"gpu_check: {report.passed} passed, {report.failed} failed "
          f"in {time.monotonic() - started:.0f} s")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
