"""The device inventory: NVIDIA GPUs through NVML, simulated GPUs, and the CPU.

``SLOTRUN_FAKE_GPUS=N`` gives N simulated GPUs behind the same interface as NVML. A
simulated task "allocates" memory by writing its byte count to
``$SLOTRUN_FAKE_GPU_DIR/gpu<i>/<pid>`` (the sample models do this for a ``gpu_memory``
profile); the simulated inventory reports those figures per process and as used memory,
so memory-aware admission can be exercised on a machine without a GPU.

Faults stay per GPU: a GPU that cannot be read comes back as a Device with ``error`` set
(and no figures), so the other GPUs and the CPU go on. A file named ``fault`` in a simulated
GPU's folder makes reading that GPU fail with the file's text, as an NVML error would.
``SLOTRUN_FAKE_GPU_PID_OFFSET=N`` makes the simulated GPUs report every process id plus N,
as NVML does inside a container with its own PID namespace (``pids_elsewhere``).
"""

import ctypes
import logging
import os
import sys
import threading
from dataclasses import asdict, dataclass, field

from .task import CPU

log = logging.getLogger(__name__)

GIB = 1024**3
# The inode of the kernel's initial PID namespace (PROC_PID_INIT_INO): a process whose
# /proc/self/ns/pid is another one lives in a container's own PID namespace.
INIT_PID_NAMESPACE = 0xEFFFFFFC


class DeviceError(Exception):
    """A GPU could not be read (an NVML error on it, or a simulated fault)."""


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
    error: str = ""  # why this GPU could not be read ("": its figures are current)

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
    folder = os.environ.get("SLOTRUN_FAKE_GPU_DIR")
    if folder:
        return folder
    import tempfile  # imported here: only this default needs it, not multi-run.py's start-up

    return os.path.join(tempfile.gettempdir(), f"slotrun-fake-gpus-{os.getuid()}")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Inventory:
    """Base inventory: the CPU only (``error`` says why no GPU is read, if one should be)."""

    simulated = False
    source = "none"
    count = 0
    # True when the process ids the GPUs report are not this process's (NVML inside a
    # container with its own PID namespace): tasks cannot be matched to them by pid.
    pids_elsewhere = False

    def __init__(self, error=""):
        self._cpu_name = _cpu_name()
        self.error = error

    def gpus(self):
        """Return the GPUs with fresh figures; a GPU that cannot be read has ``error`` set."""
        out = []
        for i in range(self.count):
            try:
                out.append(self._read_gpu(i))
            except (DeviceError, OSError) as e:
                out.append(Device(f"gpu{i}", "gpu", i, self._gpu_name(i), node=os.uname().nodename,
                                  error=str(e) or type(e).__name__))
        return out

    def _read_gpu(self, index):
        """Return one GPU's fresh figures, or raise DeviceError."""
        raise DeviceError(f"no GPU {index}")

    def _gpu_name(self, index):
        """Return a GPU's name for a device that cannot be read."""
        return "GPU (not answering)"

    def cpu(self):
        """Return the CPU device."""
        load = None
        try:
            load = int(min(100, os.getloadavg()[0] / (os.cpu_count() or 1) * 100))
        except OSError:
            pass
        mem_total, mem_used = _host_memory()
        return Device(CPU, CPU, None, self._cpu_name, mem_total, mem_used, load,
                      node=os.uname().nodename)

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
        self._names = {}
        self.pids_elsewhere = own_pid_namespace()
        if self.pids_elsewhere:
            log.warning("slotrun runs in its own PID namespace (a container without --pid=host): "
                        "NVML reports host process ids, so GPU memory is matched to tasks by "
                        "when their processes appear; run the container with --pid=host for "
                        "exact matching")

    def gpus(self):
        with self._lock:
            return super().gpus()

    def _gpu_name(self, index):
        return self._names.get(index, "GPU (NVML error)")

    def _read_gpu(self, i):
        nv = self.nv
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = nv.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode()
            self._names[i] = name
            mem = nv.nvmlDeviceGetMemoryInfo(h)
        except nv.NVMLError as e:
            raise DeviceError(f"NVML: {e}") from None
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
        return Device(f"gpu{i}", "gpu", i, name, int(mem.total), int(mem.used), util,
                      node=os.uname().nodename, uuid=uuid, processes=procs)

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
        self.pid_offset = int(os.environ.get("SLOTRUN_FAKE_GPU_PID_OFFSET") or 0)
        self.pids_elsewhere = self.pid_offset != 0

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

    def _gpu_name(self, index):
        return f"Simulated GPU {self.memory_total // GIB} GiB"

    def _read_gpu(self, i):
        try:
            with open(os.path.join(self.dir, f"gpu{i}", "fault"), encoding="utf-8") as f:
                raise DeviceError(f.read().strip() or "simulated NVML error")
        except (FileNotFoundError, NotADirectoryError):
            pass
        procs = self._processes(i)
        used = min(self.memory_total, self.base_used + sum(procs.values()))
        util = min(100, 35 * len(procs))
        if self.pid_offset:
            procs = {pid + self.pid_offset: n for pid, n in procs.items()}
        return Device(f"gpu{i}", "gpu", i, self._gpu_name(i), self.memory_total, used, util,
                      node=os.uname().nodename, uuid=f"GPU-simulated-{i}", processes=procs)


def own_pid_namespace():
    """Return True when this process lives in a PID namespace of its own (a container)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino != INIT_PID_NAMESPACE
    except OSError:
        return False


def open_inventory(fake_gpus=None):
    """Return the NVML inventory, or simulated GPUs when asked, or the CPU alone.

    When NVML cannot start, the CPU-only inventory carries the reason (``error``), which is
    logged: an error on a machine with a driver is not the same as a machine without GPUs.
    """
    if fake_gpus is None:
        fake_gpus = int(os.environ.get("SLOTRUN_FAKE_GPUS") or 0)
    if fake_gpus and int(fake_gpus) > 0:
        return SimulatedInventory(int(fake_gpus))
    if "pynvml" not in sys.modules and not _nvml_library_loads():
        # What nvmlInit() would find first, known without importing pynvml (~6 ms of
        # multi-run.py's start-up): the usual case on a machine without an NVIDIA driver. A
        # pynvml imported already (by the caller, or a test's stand-in) is asked as before.
        log.info("NVML is not available (NVML Shared Library Not Found): no NVIDIA GPU is used")
        return Inventory()
    try:
        import pynvml  # optional dependency: only machines with NVIDIA GPUs need it
    except ImportError:
        log.info("pynvml is not installed: NVIDIA GPUs are not used")
        return Inventory()
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - any NVML failure: run on the CPU, and say why
        missing = isinstance(e, (getattr(pynvml, "NVMLError_LibraryNotFound", ()),
                                 getattr(pynvml, "NVMLError_DriverNotLoaded", ())))
        if missing:  # the usual case on a machine without an NVIDIA driver
            log.info("NVML is not available (%s): no NVIDIA GPU is used", e)
            return Inventory()
        log.error("NVML failed to start (%s): no NVIDIA GPU is used until slotrun restarts", e)
        return Inventory(error=f"NVML failed to start: {e}")
    try:
        return NvmlInventory(pynvml)
    except Exception as e:  # noqa: BLE001 - the device count itself failed
        log.error("NVML started but cannot count the GPUs (%s): no NVIDIA GPU is used", e)
        return Inventory(error=f"NVML cannot count the GPUs: {e}")


def _nvml_library_loads():
    """Return True when NVML's library loads, as pynvml loads it (by this name, on Linux)."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


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


def no_gpu_message(inventory):
    """Return the error for a GPU batch on a machine without GPUs, with NVML's reason."""
    error = getattr(inventory, "error", "")
    if not error:
        return NO_GPU_MESSAGE
    return (f"no NVIDIA GPU can be used ({error}); run on the CPU with -gpu false, or simulate "
            "GPUs with SLOTRUN_FAKE_GPUS=N")
