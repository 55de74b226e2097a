"""GPU-memory-aware admission: declared and learned needs, probation, out-of-memory signs.

The scheduler owns the decisions; this module gives it the facts: what a config declares,
what a family of configs has been seen to use, whether a log shows a CUDA out-of-memory
error, and a monitor thread that samples per-task GPU memory while GPU tasks run.
"""

import logging
import os
import re
import threading
import time

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
    import yaml

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


class MemoryMonitor:
    """Samples GPU memory per running task while GPU tasks run; idle otherwise.

    ``tasks()`` returns {process group id: task id} of the running GPU tasks; each sample
    is handed to ``deliver(usage, free, when)`` with usage {task id: bytes} and free
    {device id: bytes}.
    """

    def __init__(self, inventory, tasks, deliver, interval=0.5):
        self.inventory = inventory
        self.tasks = tasks
        self.deliver = deliver
        self.interval = interval
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="slotrun-memory", daemon=True)
        self._thread.start()

    def poke(self):
        """Start sampling now (a GPU task has started)."""
        self._wake.set()

    def close(self):
        """Stop the thread."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=2)

    def sample(self):
        """Return (usage by task, free memory by device) right now."""
        groups = self.tasks()
        usage, free = {}, {}
        for dev in self.inventory.gpus():
            free[dev.id] = dev.memory_free
            for pid, nbytes in dev.processes.items():
                try:
                    pgid = os.getpgid(pid)
                except (ProcessLookupError, PermissionError):
                    continue
                task = groups.get(pgid)
                if task is not None:
                    usage[task] = usage.get(task, 0) + nbytes
        return usage, free

    def _run(self):
        while not self._stop:
            if not self.tasks():
                self._wake.wait()  # nothing to watch: block until a GPU task starts
                self._wake.clear()
                continue
            try:
                usage, free = self.sample()
                self.deliver(usage, free, time.monotonic())
            except Exception:  # noqa: BLE001 - the monitor must not die
                log.exception("GPU memory sample failed")
            self._wake.wait(self.interval)
            self._wake.clear()
