"""Helpers shared by the sample models: simulated computation time and GPU memory.

``sim_time`` (seconds, in model_params; $SLOTRUN_SIM_TIME overrides it) stands in for a
long simulation; ``progress_steps`` prints ``step i/n`` lines along it, and ``diverge_at_step``
makes the run fail there with a readable error, as a simulation that blows up does.
``gpu_memory`` (e.g. "2GiB", or a profile [[seconds, "1GiB"], [0.5, "3GiB"]];
``sim_gpu_memory`` does the same without declaring it) makes the model hold that much GPU
memory: real memory through PyTorch when CUDA is available, otherwise simulated memory on the
GPUs that SLOTRUN_FAKE_GPUS simulates.
"""

import fcntl
import os
import sys
import time

UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2,
         "gb": 1000**3}


def size(text):
    """Return bytes from 6GiB / 512MiB / a number."""
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(float(num) * UNITS[s[len(num):]])


def sim_time(params, default=1.5):
    """Return the simulated computation time in seconds."""
    env = os.environ.get("SLOTRUN_SIM_TIME")
    return float(env) if env not in (None, "") else float(params.get("sim_time", default))


def profile(params):
    """Return the memory profile as [(seconds from start, bytes), ...]."""
    # gpu_memory declares the need to slotrun and allocates it; sim_gpu_memory allocates
    # without declaring (a program whose need slotrun has to learn).
    spec = params.get("gpu_memory") or params.get("sim_gpu_memory")
    if not spec:
        return []
    if isinstance(spec, list):
        return [(float(t), size(v)) for t, v in spec]
    return [(0.0, size(spec))]


class Memory:
    """Holds GPU memory for the model (real through PyTorch, or simulated)."""

    def __init__(self):
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.torch = None
        self.block = None
        if os.environ.get("SLOTRUN_FAKE_GPUS"):
            self.path = None
            if self.visible.strip():
                folder = os.path.join(os.environ.get("SLOTRUN_FAKE_GPU_DIR") or os.path.join(
                    __import__("tempfile").gettempdir(), f"slotrun-fake-gpus-{os.getuid()}"),
                    f"gpu{self.visible.split(',')[0]}")
                os.makedirs(folder, exist_ok=True)
                self.path = os.path.join(folder, str(os.getpid()))
                self.folder = folder
        else:
            try:
                import torch  # only when a profile asks for memory

                if torch.cuda.is_available():
                    self.torch = torch
            except ImportError:
                pass

    def hold(self, nbytes):
        """Hold ``nbytes`` of GPU memory; exit like CUDA does when it does not fit."""
        if self.torch is not None:
            self.block = None
            try:
                self.block = self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
                print(f"RuntimeError: CUDA out of memory. {e}", flush=True)
                sys.exit(1)
            return
        if getattr(self, "path", None) is None:
            return
        total = int(os.environ.get("SLOTRUN_FAKE_GPU_MEMORY", 24 * 1024**3))
        # Check and write under the GPU folder's lock, as a device allocates atomically: when
        # several tasks allocate at once, the ones that fit succeed and only the rest fail.
        fd = os.open(os.path.join(self.folder, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            used = int(os.environ.get("SLOTRUN_FAKE_GPU_BASE_USED", 300 * 1024**2))
            mine = os.path.basename(self.path)
            for name in os.listdir(self.folder):
                if name.isdigit() and name != mine:
                    try:
                        os.kill(int(name), 0)
                        with open(os.path.join(self.folder, name), encoding="ascii") as f:
                            used += int(f.read().strip() or 0)
                    except (OSError, ValueError):
                        continue
            if used + nbytes > total:
                self.release()
                fits = False
            else:
                # Written whole, then renamed: a reader never sees half a number.
                tmp = f"{self.path}.tmp"
                with open(tmp, "w", encoding="ascii") as f:
                    f.write(str(nbytes))
                os.replace(tmp, self.path)
                fits = True
        finally:
            os.close(fd)  # closing releases the lock
        if not fits:
            print(f"RuntimeError: CUDA out of memory. Tried to allocate {nbytes / 1024**3:.2f} GiB "
                  f"(GPU {self.visible}; {total / 1024**3:.2f} GiB total capacity; "
                  f"{(total - used) / 1024**3:.2f} GiB free)", flush=True)
            sys.exit(1)

    def release(self):
        """Give the memory back."""
        self.block = None
        if getattr(self, "path", None) and os.path.exists(self.path):
            os.unlink(self.path)


def simulate(params):
    """Spend the simulated computation time, following the memory profile if any."""
    total = sim_time(params)
    steps = profile(params)
    mem = Memory() if steps else None
    start = time.monotonic()
    try:
        for at, nbytes in steps:
            wait = start + min(at, total) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            mem.hold(nbytes)
        progress = int(params.get("progress_steps", 0))
        diverge = int(params.get("diverge_at_step", 0))  # a run that blows up there (the demo)
        if progress:
            for i in range(1, progress + 1):
                wait = start + total * i / progress - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                print(f"step {i}/{progress}", flush=True)
                if i == diverge:
                    raise FloatingPointError(
                        f"the solution diverged at step {i}/{progress} (residual 3.2e+09 > "
                        "1e+06): lower the time step")
        left = start + total - time.monotonic()
        if left > 0:
            time.sleep(left)
    finally:
        if mem is not None:
            mem.release()
