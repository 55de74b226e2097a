"""The device inventory: NVIDIA GPUs through NVML, simulated GPUs, and the CPU.

``SLOTRUN_FAKE_GPUS=N`` gives N simulated GPUs behind the same interface as NVML. A
simulated task "allocates" memory by writing its byte count to
``$SLOTRUN_FAKE_GPU_DIR/gpu<i>/<pid>`` (the sample models do this for a ``gpu_memory``
profile); the simulated inventory reports those figures per process and as used memory,
so memory-aware admission can be exercised on a machine without a GPU.
"""

import os
import socket
import tempfile
import threading
from dataclasses import asdict, dataclass, field

from .task import CPU

GIB = 1024**3


@dataclass
class Device:
    """One device and its current figures."""

    id: str
    kind: str  # "gpu" or "cpu"
    index: int | None
    name: str
    memory_total: int = 0
    memory_used: int = 0
    utilization: int | None = None
    node: str = ""
    uuid: str = ""
    processes: dict = field(default_factory=dict)  # pid -> bytes of device memory

    @property
    def memory_free(self):
        """Return the free memory in bytes."""
        return max(0, self.memory_total - self.memory_used)

    def to_dict(self):
        """Return the JSON-able figures of this device."""
        d = asdict(self)
        d.pop("processes")
        d["memory_free"] = self.memory_free
        return d


def fake_gpu_dir():
    """Return the folder where simulated tasks record their simulated GPU memory."""
    return os.environ.get("SLOTRUN_FAKE_GPU_DIR") or os.path.join(
        tempfile.gettempdir(), f"slotrun-fake-gpus-{os.getuid()}")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Inventory:
    """Base inventory: the CPU only."""

    simulated = False
    source = "none"

    def __init__(self):
        self._cpu_name = _cpu_name()

    def gpus(self):
        """Return the GPUs with fresh figures (none here)."""
        return []

    def cpu(self):
        """Return the CPU device."""
        load = None
        try:
            load = int(min(100, os.getloadavg()[0] / (os.cpu_count() or 1) * 100))
        except OSError:
            pass
        mem_total, mem_used = _host_memory()
        return Device(CPU, CPU, None, self._cpu_name, mem_total, mem_used, load,
                      node=socket.gethostname())

    def snapshot(self):
        """Return every device (GPUs first, then the CPU) with fresh figures."""
        return self.gpus() + [self.cpu()]

    def close(self):
        """Release the inventory's handles."""


class NvmlInventory(Inventory):
    """GPUs read through NVML (pynvml)."""

    source = "nvml"

    def __init__(self, pynvml):
        super().__init__()
        self.nv = pynvml
        self._lock = threading.Lock()
        self.count = pynvml.nvmlDeviceGetCount()

    def gpus(self):
        nv = self.nv
        out = []
        with self._lock:
            for i in range(self.count):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                name = nv.nvmlDeviceGetName(h)
                if isinstance(name, bytes):
                    name = name.decode()
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                try:
                    util = nv.nvmlDeviceGetUtilizationRates(h).gpu
                except nv.NVMLError:
                    util = None
                procs = {}
                for getter in ("nvmlDeviceGetComputeRunningProcesses",
                               "nvmlDeviceGetGraphicsRunningProcesses"):
                    try:
                        for p in getattr(nv, getter)(h):
                            used = p.usedGpuMemory
                            if used is not None and used != getattr(nv, "NVML_VALUE_NOT_AVAILABLE", -1):
                                procs[p.pid] = procs.get(p.pid, 0) + int(used)
                    except (nv.NVMLError, AttributeError):
                        pass
                try:
                    uuid = nv.nvmlDeviceGetUUID(h)
                    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
                except nv.NVMLError:
                    uuid = ""
                out.append(Device(f"gpu{i}", "gpu", i, name, int(mem.total), int(mem.used), util,
                                  node=socket.gethostname(), uuid=uuid, processes=procs))
        return out

    def close(self):
        try:
            self.nv.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a driver that may be gone
            pass


class SimulatedInventory(Inventory):
    """N simulated GPUs with plausible figures and simulated per-process memory."""

    simulated = True
    source = "simulated"

    def __init__(self, count, memory_total=None):
        super().__init__()
        self.count = count
        self.memory_total = memory_total or int(os.environ.get("SLOTRUN_FAKE_GPU_MEMORY", 24 * GIB))
        self.base_used = int(os.environ.get("SLOTRUN_FAKE_GPU_BASE_USED", 300 * 1024**2))
        self.dir = fake_gpu_dir()

    def _processes(self, index):
        folder = os.path.join(self.dir, f"gpu{index}")
        procs = {}
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return procs
        for name in names:
            if not name.isdigit():
                continue
            pid = int(name)
            path = os.path.join(folder, name)
            if not _pid_alive(pid):
                try:
                    os.unlink(path)
                except OSError:
                    pass
                continue
            try:
                with open(path, encoding="ascii") as f:
                    procs[pid] = int(f.read().strip() or 0)
            except (OSError, ValueError):
                continue
        return procs

    def gpus(self):
        out = []
        for i in range(self.count):
            procs = self._processes(i)
            used = min(self.memory_total, self.base_used + sum(procs.values()))
            util = min(100, 35 * len(procs))
            out.append(Device(f"gpu{i}", "gpu", i, f"Simulated GPU {self.memory_total // GIB} GiB",
                              self.memory_total, used, util, node=socket.gethostname(),
                              uuid=f"GPU-simulated-{i}", processes=procs))
        return out


def open_inventory(fake_gpus=None):
    """Return the NVML inventory, or simulated GPUs when asked, or the CPU alone."""
    if fake_gpus is None:
        fake_gpus = int(os.environ.get("SLOTRUN_FAKE_GPUS") or 0)
    if fake_gpus and int(fake_gpus) > 0:
        return SimulatedInventory(int(fake_gpus))
    try:
        import pynvml
    except ImportError:
        return Inventory()
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any NVML failure means "no NVIDIA GPU here"
        return Inventory()
    return NvmlInventory(pynvml)


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"CPU ({os.cpu_count()} cores, {line.split(':', 1)[1].strip()})"
    except OSError:
        pass
    return f"CPU ({os.cpu_count()} cores)"


def _host_memory():
    try:
        info = {}
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0]) * 1024
        return info["MemTotal"], info["MemTotal"] - info.get("MemAvailable", 0)
    except (OSError, KeyError, ValueError):
        return 0, 0


NO_GPU_MESSAGE = ("no NVIDIA GPU was found (NVML is not available); run on the CPU with "
                  "-gpu false, or simulate GPUs with SLOTRUN_FAKE_GPUS=N")
