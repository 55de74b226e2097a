"""The node side of the Ray executor: the agent actor that runs on every node.

One long-lived agent per node and workspace (pinned there with node affinity, asking Ray for
no CPU or GPU) starts each task exactly as the local executor does: a ``/bin/sh`` wrapper in
its own session, output straight to a log file, an exit-code file. It keeps the exits for
the head's long poll, serves log bytes and packed results, and stops a task's processes
together. Ray is imported inside the actor's methods: it is there wherever an agent runs,
and optional everywhere else.
"""

import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import asdict
from typing import NamedTuple

from .. import devices
from ..logs import LOG_NAME
from .local import boot_id, process_start_time
from .processes import MARKER, Stops, TaskTree, become_subreaper
from .ray_bundle import CHUNK, BundleRef, extract

log = logging.getLogger(__name__)

LOG_PULL_MAX = 1024 * 1024
POLL_TIMEOUT = 30.0

# $1: run folder, the rest: the command. Standard input is a pipe whose other end only the
# agent holds: a background watchdog blocks on it (as fd 3), and EOF means the agent died, so
# the whole group goes with it. A TERM (cancel) reaches the task; the wrapper then ends the
# watchdog itself. The task gets /dev/null as its standard input and never sees the pipe.
WRAPPER = ('d=$1; shift; echo $$ > "$d/pid"; exec 3<&0 </dev/null; '
           '(trap "" TERM INT HUP; read _ <&3; kill -KILL 0) & w=$!; exec 3<&-; '
           "trap 'kill -KILL $w 2>/dev/null; exit 143' TERM; "
           "trap 'kill -KILL $w 2>/dev/null; exit 130' INT; "
           '"$@"; c=$?; kill -KILL $w 2>/dev/null; echo $c > "$d/exit"; exit $c')


class ExitNote(NamedTuple):
    """An exit an agent keeps for the head's long poll, numbered in order."""

    seq: int
    key: str
    code: int


def node_environment():
    """Return the environment `ray start` ran with on this node (without Ray's own variables)."""
    env = None
    pid = os.environ.get("RAY_RAYLET_PID")
    if pid:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                raw = f.read()
            env = {}
            for item in raw.split(b"\0"):
                k, sep, v = item.partition(b"=")
                if sep:
                    env[os.fsdecode(k)] = os.fsdecode(v)
        except OSError:
            env = None
    if env is None:
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)  # Ray sets it to 1 in its workers
    return {k: v for k, v in env.items() if not k.startswith("RAY_") and k != "SPT_NOENV"}


class NodeAgent:
    """Runs on one node (as a Ray actor): starts, watches and stops tasks; reports figures."""

    def __init__(self, node_dir, key):
        import ray  # optional dependency: present wherever an agent runs

        self.node_id = ray.get_runtime_context().get_node_id()
        base = node_dir or os.path.join(tempfile.gettempdir(), f"slotrun-ray-{os.getuid()}")
        self.root = os.path.join(base, f"{key}-{self.node_id[:12]}")
        os.makedirs(self.root, exist_ok=True)
        self.env = node_environment()
        self.tasks = {}  # key -> entry dict
        self.abandoned = set()  # keys whose start the head gave up on
        self.exits = []  # (seq, key, code)
        self.seq = 0
        self.cond = threading.Condition()
        self.bundle_lock = threading.Lock()
        self.pinned = {}  # bundle digest -> starts in progress that use it
        self.inventory = None
        self.inventory_gpus = None
        self.stops = Stops()  # a task's processes are stopped together (see processes.py)
        # This actor's children are its tasks: their orphans come here, to be stopped with them.
        become_subreaper()

    def ping(self):
        """Return who and where this agent is."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(),
                "root": self.root, "python": sys.executable}

    # -- starting

    def _bundle(self, digest, refs):
        import ray  # optional dependency: present wherever an agent runs

        path = os.path.join(self.root, "ws", digest)
        with self.bundle_lock:
            if os.path.isdir(path):
                return path
            data = ray.get(refs[0])
            tmp = f"{path}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            extract(io.BytesIO(data), tmp)
            os.rename(tmp, path)
            self._prune_bundles(keep=digest)
        return path

    def _unpin(self, digest):
        with self.bundle_lock:
            n = self.pinned.get(digest, 0) - 1
            if n > 0:
                self.pinned[digest] = n
            else:
                self.pinned.pop(digest, None)

    def _prune_bundles(self, keep):
        """Delete the copies no task uses any more (called with bundle_lock held)."""
        with self.cond:
            used = {e["bundle"] for e in self.tasks.values()} | {keep} | set(self.pinned)
        folder = os.path.join(self.root, "ws")
        for name in os.listdir(folder):
            if name not in used and ".tmp-" not in name:
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)

    def start(self, p, bundle):
        """Start one task; return its pid, start time, boot id and node-side folders
        (``bundle``: a BundleRef, None on a shared filesystem)."""
        # _make: an agent and a head of another version pass plain sequences
        bundle = BundleRef._make(bundle) if bundle else None
        digest = bundle.digest if bundle else None
        if digest:
            with self.bundle_lock:  # no pruning of this copy until the task is recorded
                self.pinned[digest] = self.pinned.get(digest, 0) + 1
        try:
            return self._start(p, bundle)
        finally:
            if digest:
                self._unpin(digest)

    def _start(self, p, bundle):
        key = p["key"]
        with self.cond:
            if key in self.abandoned:
                raise RuntimeError(f"the head gave up on starting task {key} here")
            e = self.tasks.get(key)
            if e is not None and e["code"] is None:
                raise RuntimeError(f"task {key} already runs here (pid {e['info']['pid']})")
        if e is not None:
            self.forget(key)  # an ended run under the same key that no head collected
        workspace = p["workspace"]
        if p["shared"]:
            cwd, digest = p["cwd"], None
            run_dir = os.path.join(self.root, "runs", key)

            def remap(s):
                return s
        else:
            digest = bundle.digest
            cwd = self._bundle(digest, bundle.refs)

            def remap(s):
                if s == workspace or s.startswith(workspace + "/"):
                    return cwd + s[len(workspace):]
                return s
            run_dir = remap(p["run_dir"])
            if run_dir == p["run_dir"]:
                run_dir = os.path.join(self.root, "runs", key)
        if not os.path.isdir(cwd):
            raise RuntimeError(f"folder {cwd} does not exist on node {socket.gethostname()}; "
                               "without a filesystem shared by the nodes, set ray_shared_fs: false")
        shutil.rmtree(run_dir, ignore_errors=True)
        os.makedirs(run_dir, exist_ok=True)
        for name, data in (p.get("files") or {}).items():
            with open(os.path.join(run_dir, os.path.basename(name)), "wb") as f:
                f.write(data)

        def fix(a):
            a = remap(a)
            if a == p["python"] and not os.path.exists(a):
                return sys.executable  # the head's interpreter path does not exist here
            return a
        argv = [fix(a) for a in p["argv"]]
        env = dict(self.env)
        env.update({k: remap(v) for k, v in p["env"].items()})
        env[MARKER] = run_dir  # every process of the task inherits it, even past setsid
        results = env.get("SLOTRUN_RESULTS") or ""
        if results and not p["shared"] and results != p["env"].get("SLOTRUN_RESULTS"):
            shutil.rmtree(results, ignore_errors=True)  # leftovers of an earlier attempt here
        else:
            results = ""  # nothing to bring back: written in place (or outside the workspace)
        r, w = os.pipe()
        log_fd = os.open(os.path.join(run_dir, LOG_NAME),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "slotrun-task", run_dir, *argv],
                cwd=cwd, env=env, stdin=r, stdout=log_fd, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        except OSError:
            os.close(w)
            raise
        finally:
            os.close(log_fd)
            os.close(r)
        info = {"pid": proc.pid, "pid_start": process_start_time(proc.pid), "boot_id": boot_id(),
                "run_dir": run_dir, "results": results, "host": socket.gethostname()}
        entry = {"proc": proc, "pipe": w, "run_dir": run_dir, "results": results,
                 "bundle": digest, "code": None, "info": info, "stopped": {},
                 "tree": TaskTree(proc.pid, info["pid_start"], run_dir),
                 "grace": float(p.get("kill_grace", 5.0))}
        with self.cond:
            self.tasks[key] = entry
            abandoned = key in self.abandoned
        threading.Thread(target=self._reap, args=(key, entry), name=f"slotrun-reap-{key}",
                         daemon=True).start()
        if abandoned:  # the head timed out while this call was on its way
            self.stops.stop(key, entry["tree"], 0)
        return info

    def abandon(self, key):
        """Make sure a task whose start the head gave up on never runs (or stops now)."""
        with self.cond:
            self.abandoned.add(key)
            e = self.tasks.get(key)
        if e is not None and e["code"] is None:
            self.stops.stop(key, e["tree"], 0)
        return True

    def _reap(self, key, entry):
        rc = entry["proc"].wait()
        code = 128 - rc if rc < 0 else rc  # the wrapper itself was killed: as a shell reports it
        # The exit counts only once every process of the task is gone (the slot is held).
        job = self.stops.after_exit(key, entry["tree"], entry["grace"], adopted=False)
        if job is not None:
            job.wait()
            entry["stopped"] = {"stopped": len(job.found), "killed": len(job.killed),
                                "grace": job.grace}
        os.close(entry["pipe"])
        with self.cond:
            abandoned = key in self.abandoned
        if abandoned:  # the head counted it lost and will never collect it
            self.forget(key)
            return
        with self.cond:
            entry["code"] = code
            self.seq += 1
            self.exits.append(ExitNote(self.seq, key, code))
            self.cond.notify_all()

    # -- watching

    def wait_exits(self, after, timeout=POLL_TIMEOUT):
        """Return the ExitNotes after ``after``, waiting up to ``timeout`` s."""
        with self.cond:
            self.cond.wait_for(lambda: self.exits and self.exits[-1].seq > after, timeout)
            return [x for x in self.exits if x.seq > after]

    def status(self, key):
        """Return ("running", info) / ("exited", code) / ("unknown", None) for a task."""
        with self.cond:
            e = self.tasks.get(key)
            if e is None:
                return "unknown", None
            if e["code"] is None:
                return "running", e["info"]
            return "exited", e["code"]

    def read_logs(self, offsets, max_bytes=LOG_PULL_MAX):
        """Return {key: bytes of its log from offset} (at most ``max_bytes`` each)."""
        out = {}
        for key, offset in offsets.items():
            with self.cond:
                e = self.tasks.get(key)
            if e is None:
                continue
            try:
                with open(os.path.join(e["run_dir"], LOG_NAME), "rb") as f:
                    f.seek(offset)
                    data = f.read(max_bytes)
            except OSError:
                continue
            if data:
                out[key] = data
        return out

    def collect(self, key, offset, pack):
        """Return a finished task's log from ``offset`` (one chunk) and, when ``pack``, the
        size of its packed results (-1: none)."""
        data = self.read_logs({key: offset}, CHUNK).get(key, b"")
        with self.cond:
            stopped = dict(self.tasks[key]["stopped"]) if key in self.tasks else {}
        return {"log": data, "results": self.pack_results(key) if pack else -1, **stopped}

    def pack_results(self, key):
        """Pack a finished task's results folder; return the archive's size (-1: none)."""
        with self.cond:
            e = self.tasks.get(key)
        if e is None or not e["results"] or not os.path.isdir(e["results"]):
            return -1
        path = os.path.join(e["run_dir"], "results.tar.gz")
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            tar.add(e["results"], arcname=".")
        return os.path.getsize(path)

    def read_chunk(self, key, name, offset, size=CHUNK):
        """Return ``size`` bytes of a file of a task's run folder from ``offset``."""
        with self.cond:
            e = self.tasks.get(key)
        if e is None:
            raise KeyError(f"task {key} is not known on this node")
        with open(os.path.join(e["run_dir"], os.path.basename(name)), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def forget(self, key):
        """Drop a collected task and delete its node-side folders."""
        with self.cond:
            e = self.tasks.pop(key, None)
            self.exits = [x for x in self.exits if x.key != key]
        if e is None:
            return False
        shutil.rmtree(e["run_dir"], ignore_errors=True)
        if e["results"]:
            shutil.rmtree(e["results"], ignore_errors=True)
        return True

    # -- stopping

    def stop(self, key, grace=5.0):
        """Stop every process of a task (its session, and those that left it carrying its
        marker): SIGTERM now, SIGKILL after ``grace`` seconds."""
        with self.cond:
            e = self.tasks.get(key)
        if e is None or e["code"] is not None:
            return False
        self.stops.stop(key, e["tree"], grace)
        return True

    # -- figures

    def figures(self, name, declared_gpus):
        """Return this node's devices as dicts: NVML GPUs, else the declared ones simulated."""
        if self.inventory is None or self.inventory_gpus != declared_gpus:
            inv = nvml_inventory(devices)
            if inv is None:
                inv = devices.SimulatedInventory(declared_gpus) if declared_gpus > 0 \
                    else devices.Inventory()
            self.inventory, self.inventory_gpus = inv, declared_gpus
        out = []
        for d in self.inventory.gpus() + [self.inventory.cpu()]:
            d.id = f"{name}/{d.id}"
            d.node = name
            out.append(asdict(d))
        return out


def nvml_inventory(devices):
    """Return an NVML inventory of this node's GPUs (pynvml, else Ray's copy), or None."""
    try:
        import pynvml  # optional dependency: NVIDIA nodes only
    except ImportError:
        try:
            from ray._private.thirdparty import pynvml
        except ImportError:
            return None
    try:
        pynvml.nvmlInit()
        inv = devices.NvmlInventory(pynvml)
    except Exception:  # noqa: BLE001 - any NVML failure means "no NVIDIA GPU here"
        return None
    if inv.count > 0:
        return inv
    inv.close()
    return None


