"""GPU-memory-aware admission: declared and learned needs, memory readings, out-of-memory signs.

The scheduler owns the decisions; this module gives it the facts: what a config declares,
whether a log shows a CUDA out-of-memory error, a monitor thread that reads every GPU (free
memory, memory per task, faults) while there is GPU work, and the ledger that keeps the
latest reading true between readings (tasks that ended since have freed their memory).
"""

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

from .errors import SlotrunError
from .settings import parse_size

log = logging.getLogger(__name__)

OOM_PATTERN = re.compile(
    rb"CUDA out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation|"
    rb"RESOURCE_EXHAUSTED: Out of memory")


def family_of(config):
    """Return a config's experiment family: its folder (configs/exp-1 for exp-1-1.yaml)."""
    return os.path.dirname(config)


def declared_memory(config, text):
    """Return the GPU memory a config declares (gpu_memory, top level or in model_params).

    A profile (a list of [seconds, size]) declares its largest size. Returns 0 when the
    config declares nothing; raises an error naming the config when the value is not a size.
    """
    if not text or "gpu_memory" not in text:
        return 0
    import yaml  # imported here: ~10 ms that a batch whose configs declare nothing need not pay

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return 0  # the task itself will fail with the YAML error, clearly
    if not isinstance(data, dict):
        return 0
    value = data.get("gpu_memory")
    if value is None and isinstance(data.get("model_params"), dict):
        value = data["model_params"].get("gpu_memory")
    if value is None:
        return 0
    try:
        if isinstance(value, list):
            return max(parse_size(v[1] if isinstance(v, (list, tuple)) else v) for v in value)
        return parse_size(value)
    except (SlotrunError, IndexError, TypeError, ValueError):
        raise SlotrunError(f"{config}: gpu_memory {value!r} is not a memory size or profile; "
                           "write e.g. 6GiB, or [[0, 2GiB], [5, 6GiB]]") from None


def log_shows_oom(path, max_bytes=65536):
    """Return True when the end of a log shows a CUDA out-of-memory error."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return bool(OOM_PATTERN.search(f.read()))
    except OSError:
        return False


@dataclass(frozen=True)
class Watched:
    """A running GPU task as the memory monitor sees it."""

    task_id: int
    device: str
    started: float  # time.monotonic() of its start


@dataclass
class Sample:
    """One reading of every GPU: free memory, memory per task, and the GPUs that failed."""

    when: float  # time.monotonic() when the reading began
    free: dict  # device -> bytes free (GPUs read without error)
    usage: dict  # task id -> bytes its processes hold
    errors: dict  # device -> why it could not be read
    tasks: frozenset = frozenset()  # the running GPU tasks the reading looked for


class Attribution:
    """Says which running task each GPU process belongs to.

    By pid (the default): a process belongs to the task whose process group it is in, on the
    same GPU. When the GPUs report process ids of another PID namespace (NVML inside a
    container without ``--pid=host``), pids cannot be matched: a process that appears on a
    GPU is bound to the earliest-started task running there that holds no process yet, and
    processes present before it are left out as foreign.
    """

    def __init__(self, pids_elsewhere=False):
        self.pids_elsewhere = pids_elsewhere
        self.bound = {}  # reported pid -> task id (by appearance)
        self.seen = {}  # device -> the pids of its previous reading

    def attribute(self, devices, watched, when):
        """Return {task id: bytes} for one reading of ``devices`` ({pgid: Watched} running)."""
        if not self.pids_elsewhere:
            return _by_pid(devices, watched)
        tasks = {w.task_id: w for w in watched.values()}
        usage = {}
        for dev in devices:
            if dev.error:
                continue
            procs = dev.processes
            prev = self.seen.get(dev.id)
            holding = {self.bound[p] for p in procs if self.bound.get(p) in tasks}
            waiting = sorted((w for w in tasks.values() if w.device == dev.id
                              and w.task_id not in holding and w.started <= when),
                             key=lambda w: (w.started, w.task_id))
            for pid in sorted(procs):
                task = self.bound.get(pid)
                if task not in tasks:
                    self.bound.pop(pid, None)  # its task ended: the pid means nothing now
                    if prev is None or pid in prev or not waiting:
                        continue  # there before, or no task of ours to own it: foreign
                    task = self.bound[pid] = waiting.pop(0).task_id
                usage[task] = usage.get(task, 0) + procs[pid]
            self.seen[dev.id] = set(procs)
        live = {p for d in devices for p in d.processes}
        for pid in [p for p in self.bound if p not in live]:
            del self.bound[pid]
        return usage


def _by_pid(devices, watched):
    usage = {}
    for dev in devices:
        for pid, nbytes in dev.processes.items():
            try:
                pgid = os.getpgid(pid)
            except (ProcessLookupError, PermissionError):
                continue
            w = watched.get(pgid)
            if w is not None and w.device == dev.id:
                usage[w.task_id] = usage.get(w.task_id, 0) + nbytes
    return usage


class Ended(NamedTuple):
    """A task that ended since the latest reading began: where, and when (monotonic)."""

    device: str
    when: float


class MemoryLedger:
    """The engine's view of GPU memory between two readings (scheduler thread only).

    The latest reading, corrected for the tasks that ended since it began: their memory is
    free again the moment their exit is handled, so a freed slot on a GPU full of memory is
    refilled at once, without waiting for the next reading.
    """

    def __init__(self):
        self.when = None  # time.monotonic() of the latest reading, None before the first
        self.free = {}  # device -> bytes free in the latest reading
        self.usage = {}  # task id -> bytes in the latest reading
        self.errors = {}  # device -> why it could not be read in the latest reading
        self._ended = {}  # task id -> Ended, of the tasks ended since it began
        self._credit = {}  # device -> bytes the latest reading counts for tasks now ended

    def observe(self, sample):
        """Take a new reading."""
        self.when = sample.when
        self.free = dict(sample.free)
        self.usage = dict(sample.usage)
        self.errors = dict(sample.errors)
        # A task that ended after the reading began may still be counted in it.
        self._ended = {t: e for t, e in self._ended.items() if e.when >= sample.when}
        self._credit = {}
        for t, e in self._ended.items():
            n = self.usage.pop(t, 0)
            if n:
                self._credit[e.device] = self._credit.get(e.device, 0) + n

    def ended(self, task_id, device, when):
        """Note that a task's processes are gone (its memory is free again)."""
        self._ended[task_id] = Ended(device, when)
        n = self.usage.pop(task_id, 0)
        if n:
            self._credit[device] = self._credit.get(device, 0) + n

    def free_now(self, device):
        """Return the bytes free on a device now, or None when it has no reading."""
        free = self.free.get(device)
        if free is None:
            return None
        return free + self._credit.get(device, 0)

    def used_by(self, task_id):
        """Return the bytes a running task held in the latest reading (0 if none)."""
        return self.usage.get(task_id, 0)

    def age(self, now):
        """Return the seconds since the latest reading began (inf before the first)."""
        return float("inf") if self.when is None else now - self.when


class MemoryMonitor:
    """Reads the GPUs while there is GPU work (running or waiting); idle otherwise.

    ``tasks()`` returns {process group id: Watched} of the running GPU tasks, ``wanted()``
    whether to keep reading (GPU work is running or waiting); each reading is handed to
    ``deliver(sample)`` as a Sample.
    """

    def __init__(self, inventory, tasks, deliver, interval=0.5, wanted=None):
        self.inventory = inventory
        self.tasks = tasks
        self.deliver = deliver
        self.wanted = wanted or (lambda: bool(self.tasks()))
        self.interval = interval
        self.attribution = Attribution(getattr(inventory, "pids_elsewhere", False))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="slotrun-memory", daemon=True)
        self._thread.start()

    def poke(self):
        """Read now (GPU work has started or arrived)."""
        self._wake.set()

    def close(self):
        """Stop the thread."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=2)

    def sample(self):
        """Read every GPU now; return a Sample (any thread)."""
        with self._lock:
            when = time.monotonic()
            watched = self.tasks()
            devices = self.inventory.gpus()
            usage = self.attribution.attribute(devices, watched, when)
        free = {d.id: d.memory_free for d in devices if not d.error and d.memory_total}
        errors = {d.id: d.error for d in devices if d.error}
        return Sample(when, free, usage, errors, frozenset(w.task_id for w in watched.values()))

    def _run(self):
        while not self._stop:
            if not self.wanted():
                self._wake.wait()  # no GPU work: block until some starts or arrives
                self._wake.clear()
                continue
            try:
                self.deliver(self.sample())
            except Exception:  # noqa: BLE001 - the monitor must not die
                log.exception("GPU memory sample failed")
            self._wake.wait(self.interval)
            self._wake.clear()
